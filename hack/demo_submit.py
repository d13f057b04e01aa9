"""Run both samples as the demo tenant, through the public REST API only (what the console sees).

Renders the demo inputs (hack/demo_inputs.py), uploads them through signed upload forms,
submits crds/samples/{depthbatch,reconstructionjob}.yaml with their object URIs moved into
the tenant's prefix, waits for both, and lists each job's result files as the console does.
Prints one JSON line last: the job ids and phases.

    python hack/demo_submit.py --api http://127.0.0.1:8000 --key sf_test_... [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from demo_inputs import render_inputs  # a sibling script: run as `python hack/demo_submit.py`
from spatialforge.client import Client

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "crds" / "samples"


def sample_spec(name: str, *, inputs: str, video: str, results: str) -> dict[str, Any]:
    """A sample's spec with its demo-bucket URIs replaced by the tenant's uploads and results."""
    spec = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())["spec"]
    if "inputs" in spec:
        spec["inputs"] = [inputs]
    if "input" in spec:
        spec["input"] = video
    spec["output"]["uri"] = results
    return spec


def main(api: str, key: str, timeout: float) -> int:
    with Client(api, key, timeout=60) as client, tempfile.TemporaryDirectory(prefix="sf-demo-") as tmp:
        images, video = render_inputs(Path(tmp), images=8, frames=40)
        image_prefix = client.upload(images)
        video_uri = client.upload([video]) + video.name
        results = client.results_prefix()
        print(f"uploaded {len(images)} images to {image_prefix} and the video to {video_uri}", flush=True)
        jobs = {
            "sample-depth": client.submit_depth(
                sample_spec("depthbatch", inputs=image_prefix, video=video_uri, results=results),
                idempotency_key=f"demo-depth-{image_prefix}"),
            "sample-reconstruction": client.submit_reconstruction(
                sample_spec("reconstructionjob", inputs=image_prefix, video=video_uri, results=results),
                idempotency_key=f"demo-recon-{video_uri}"),
        }
        summary: dict[str, Any] = {}
        for sample, job in jobs.items():
            print(f"{sample}: job {job['id']} submitted, waiting", flush=True)
            done = client.wait(job["id"], interval=2, timeout=timeout)
            summary[sample] = {"id": job["id"], "kind": done.get("kind"), "phase": done["phase"]}
            print(f"{sample}: {done['phase']}" + (f" ({done.get('message')})" if done.get("message") else ""), flush=True)
            if done["phase"] == "Succeeded":
                files = client.results(job["id"])["files"]
                for f in files:
                    print(f"  {f['size']:>10}  {f['key']}")
                summary[sample]["files"] = len(files)
        print(json.dumps(summary))
        return 0 if all(s["phase"] == "Succeeded" for s in summary.values()) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--timeout", type=float, default=900.0)
    a = p.parse_args()
    sys.exit(main(a.api, a.key, a.timeout))
