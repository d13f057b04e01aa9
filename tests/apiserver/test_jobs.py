"""Jobs end to end: POST -> custom resource in the tenant namespace -> operator + node agent
-> Succeeded; reads, results, cancel, idempotency, tenant isolation, uploads, the client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx

from spatialforge.crds.constants import ANNOTATION_GPU_LIMIT, LABEL_TENANT
from spatialforge.crds.layout import shard_prefix
from tests.apiserver.conftest import BUCKET, wait_until
from tests.timeouts import MEDIUM


def _s3(minio):
    return boto3.client("s3", endpoint_url=minio.env["SPATIALFORGE_S3_ENDPOINT"],
                        aws_access_key_id=minio.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=minio.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def _wait_phase(c: httpx.Client, job_id: str, phase: str, timeout: float = MEDIUM) -> dict:
    def probe():
        job = c.get(f"/v1/jobs/{job_id}").json()
        return job if job.get("phase") == phase else None
    return wait_until(f"job {job_id} {phase}", probe, timeout)


def test_job_runs_to_succeeded_with_status_and_results(make_tenant, cluster, minio):
    t = make_tenant("pro", seconds=1)
    with t.client() as c:
        r = c.post("/v1/depth-batches", json=t.depth_spec(2))
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["id"].startswith("db-") and job["status_url"] == f"/v1/jobs/{job['id']}"
        assert r.headers["Location"] == job["status_url"]

        # The resource is in the tenant's namespace, labelled, and the namespace carries the plan's GPU limit.
        cr = cluster.get("depthbatch", job["id"], t.namespace)
        assert cr is not None and cr["metadata"]["labels"][LABEL_TENANT] == t.id
        assert cr["spec"]["inputs"] == t.depth_spec(2)["inputs"]
        ns = cluster.get("namespace", t.namespace, "")
        assert ns["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "16"

        done = _wait_phase(c, job["id"], "Succeeded")
        assert done["started_at"] and done["completed_at"] and done["duration_seconds"] >= 0
        assert any(cond["type"] == "Succeeded" and cond["status"] == "True" for cond in done["conditions"])
        assert done["attempts"] >= 1 and done["gpu_seconds"] is not None

        listed = c.get("/v1/jobs", params={"phase": "Succeeded", "kind": "DepthBatch"}).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
        assert c.get("/v1/jobs", params={"kind": "ReconstructionJob"}).json()["count"] == 0

        # Act as the runner: write the outputs where the shared layout puts them.
        s3 = _s3(minio)
        base = shard_prefix(f"{t.prefix}results", t.namespace, job["id"], 0).removeprefix(f"s3://{BUCKET}/")
        s3.put_object(Bucket=BUCKET, Key=f"{base}/img-0.png", Body=b"png-bytes")
        s3.put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=b'{"ok": true}')
        res = c.get(f"/v1/jobs/{job['id']}/results")
        assert res.status_code == 200, res.text
        files = {f["key"]: f for f in res.json()["files"]}
        assert set(files) == {"shard-00000/img-0.png", "shard-00000/manifest.json"}
        assert res.json()["expires_in"] == 24 * 3600
        assert res.json()["expires_at"] == done["expires_at"] and done["expires_at"] > done["completed_at"]
        assert httpx.get(files["shard-00000/manifest.json"]["url"]).content == b'{"ok": true}'

        # A URL signed for 1 s stops working.
        short = c.get(f"/v1/jobs/{job['id']}/results", params={"expires_in": 1}).json()["files"][0]["url"]
        time.sleep(2.1)
        assert httpx.get(short).status_code == 403


def test_cancel_deletes_the_resource_and_reports_cancelled(make_tenant, cluster):
    t = make_tenant("pro", seconds=600)
    with t.client() as c:
        job = c.post("/v1/reconstructions", json=t.recon_spec()).json()
        assert job["id"].startswith("rj-")
        _wait_phase(c, job["id"], "Running")
        early = c.get(f"/v1/jobs/{job['id']}/results")  # a running job has no results yet
        assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready", early.text
        assert "Running" in early.json()["error"]["message"]
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 202 and r.json()["phase"] == "Cancelled"
        wait_until("resource deleted", lambda: cluster.get("reconstructionjob", job["id"], t.namespace) is None, MEDIUM)
        wait_until("runner Job deleted", lambda: not cluster.list("jobs", t.namespace), MEDIUM)
        assert c.get(f"/v1/jobs/{job['id']}").json()["phase"] == "Cancelled"
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 202  # idempotent
        gone = c.get(f"/v1/jobs/{job['id']}/results")
        assert gone.status_code == 409 and gone.json()["error"]["code"] == "no_results"


def test_idempotency_key_returns_the_first_job(make_tenant, cluster):
    t = make_tenant("pro", seconds=60)
    with t.client() as c:
        headers = {"Idempotency-Key": "order-42"}
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: c.post("/v1/depth-batches", json=t.depth_spec(), headers=headers),
                                      range(8)))
        assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert len(cluster.list("depthbatches", t.namespace)) == 1
        assert c.get("/v1/usage").json()["units_used"] == 1  # charged once
        other = c.post("/v1/depth-batches", json=t.depth_spec(3), headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        assert "already used" in other.json()["error"]["message"]
        # After a cancel, the retry still answers with the first (now cancelled) job.
        job_id = responses[0].json()["id"]
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 202
        # The cancel refunds the unit if no runner had started yet (a race with the operator
        # and the node): whatever it left, the retry charges nothing more.
        after_cancel = c.get("/v1/usage").json()["units_used"]
        assert after_cancel in (0, 1)
        again = c.post("/v1/depth-batches", json=t.depth_spec(), headers=headers)
        assert again.status_code == 202 and again.json()["id"] == job_id and again.json()["phase"] == "Cancelled"
        assert c.get("/v1/usage").json()["units_used"] == after_cancel


def test_another_tenants_job_is_404_for_every_verb(make_tenant):
    a, b = make_tenant("pro", seconds=600), make_tenant("pro")
    with a.client() as ca, b.client() as cb:
        job = ca.post("/v1/depth-batches", json=a.depth_spec()).json()
        for method, path in (("GET", f"/v1/jobs/{job['id']}"), ("DELETE", f"/v1/jobs/{job['id']}"),
                             ("GET", f"/v1/jobs/{job['id']}/results")):
            r = cb.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["code"] == "not_found"
        assert job["id"] not in [j["id"] for j in cb.get("/v1/jobs").json()["data"]]
        assert ca.get(f"/v1/jobs/{job['id']}").status_code == 200  # still there for its owner
        # b cannot point a job at a's prefix either.
        r = cb.post("/v1/depth-batches", json=b.depth_spec(inputs=[f"{a.prefix}inputs/x.jpg"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "outside_tenant_prefix"


def test_uploads_sign_forms_into_the_tenant_prefix(make_tenant, minio):
    t = make_tenant("builder")
    with t.client() as c:
        r = c.post("/v1/uploads", json={"files": [{"name": "a.jpg", "content_type": "image/jpeg"}, {"name": "b.jpg"}]})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["prefix"].startswith(f"{t.prefix}inputs/") and body["max_bytes"] == 50 * 1024 * 1024
        for f in body["files"]:
            assert f["method"] == "POST"
            sent = httpx.post(f["url"], data=f["fields"], files={"file": (f["name"], f"data-{f['name']}".encode())})
            assert sent.status_code in (200, 204), sent.text
        key = body["files"][0]["uri"].removeprefix(f"s3://{BUCKET}/")
        got = _s3(minio).get_object(Bucket=BUCKET, Key=key)
        assert got["Body"].read() == b"data-a.jpg" and got["ContentType"] == "image/jpeg"
        assert c.post("/v1/uploads", json={"files": [{"name": "../escape"}]}).status_code == 422


def test_python_client_and_cli_upload_submit_follow_download(make_tenant, minio, tmp_path):
    from click.testing import CliRunner

    from spatialforge.client import Client
    from spatialforge.client.cli import client_cli

    t = make_tenant("pro", seconds=1)
    img = tmp_path / "one.jpg"
    img.write_bytes(b"jpeg")
    with Client(t.api.url, t.key) as sf:
        prefix = sf.upload([img])
        job = sf.submit_depth({"inputs": [prefix], "output": {"uri": f"{t.prefix}results"}, "placement": {"gpus": 0}})
        seen = []
        done = sf.wait(job["id"], interval=0.3, timeout=MEDIUM, on_progress=lambda j: seen.append(j["phase"]))
        assert done["phase"] == "Succeeded" and seen[-1] == "Succeeded"
        base = shard_prefix(f"{t.prefix}results", t.namespace, job["id"], 0).removeprefix(f"s3://{BUCKET}/")
        _s3(minio).put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=b"{}")
        paths = sf.download(job["id"], tmp_path / "out")
        assert [p.read_bytes() for p in paths] == [b"{}"]

    spec = tmp_path / "job.yaml"
    spec.write_text(f"spec:\n  input: {t.prefix}inputs/walk.mp4\n  output: {{uri: {t.prefix}results}}\n"
                    "  quality: draft\n  placement: {gpus: 0}\n")
    runner = CliRunner()
    env = {"SPATIALFORGE_URL": t.api.url, "SPATIALFORGE_API_KEY": t.key}
    result = runner.invoke(client_cli, ["submit", "reconstruction", str(spec), "--follow"], env=env)
    assert result.exit_code == 0, result.output
    assert '"phase": "Succeeded"' in result.output
    result = runner.invoke(client_cli, ["list", "--kind", "ReconstructionJob"], env=env)
    assert result.exit_code == 0 and '"count": 1' in result.output
    result = runner.invoke(client_cli, ["uploads"], env=env)  # the upload made by sf.upload above
    assert result.exit_code == 0 and '"count": 1' in result.output and '"bytes": 4' in result.output
    result = runner.invoke(client_cli, ["delete-results", job["id"]], env=env)
    assert result.exit_code == 0 and '"deleted_files": 1' in result.output
    result = runner.invoke(client_cli, ["download", job["id"], str(tmp_path / "again")], env=env)
    assert result.exit_code != 0 and "410 results_deleted" in result.output


def test_plan_gpu_limit_reaches_the_operator_queue_position_shown(make_tenant, cluster):
    t = make_tenant("pro", seconds=600, gpu_limit=1)
    assert cluster.get("namespace", t.namespace, "")["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "1"
    with t.client() as c:
        first = c.post("/v1/depth-batches", json=t.depth_spec(placement={"gpus": 1})).json()
        _wait_phase(c, first["id"], "Running")
        second = c.post("/v1/depth-batches", json=t.depth_spec(placement={"gpus": 1})).json()
        queued = _wait_phase(c, second["id"], "Queued")
        assert queued["queue_position"] == 1 and queued["estimated_start_time"]
        assert queued["reason"]
        for job in (first, second):
            assert c.delete(f"/v1/jobs/{job['id']}").status_code == 202


def test_reconstruction_outputs_choose_what_is_produced(make_tenant, cluster):
    """`outputs` names what to produce; it lands in the resource's output.formats."""
    t = make_tenant("pro")
    with t.client() as c:
        r = c.post("/v1/reconstructions", json=t.recon_spec(outputs=["trajectory", "floorplan"]))
        assert r.status_code == 202, r.text
        cr = cluster.get("reconstructionjob", r.json()["id"], t.namespace)
        assert cr["spec"]["output"]["formats"] == ["trajectory", "floorplan"]
        # Without it, the default outputs.
        r = c.post("/v1/reconstructions", json=t.recon_spec())
        assert cluster.get("reconstructionjob", r.json()["id"], t.namespace)["spec"]["output"]["formats"] == \
            ["pointcloud", "mesh", "trajectory"]
        # Contradicting output.formats, or naming an unknown output: 422 with the reason, nothing created.
        before = len(cluster.list("reconstructionjobs", t.namespace))
        spec = t.recon_spec(outputs=["mesh"])
        spec["output"]["formats"] = ["trajectory"]
        bad = c.post("/v1/reconstructions", json=spec)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_outputs", bad.text
        unknown = c.post("/v1/reconstructions", json=t.recon_spec(outputs=["hologram"]))
        assert unknown.status_code == 422 and "outputs" in unknown.text, unknown.text
        assert len(cluster.list("reconstructionjobs", t.namespace)) == before


def test_a_prefix_input_costs_one_unit_per_image_under_it(make_tenant, minio):
    """Naming a folder never costs less than naming its files: each image under a prefix is a
    unit (the names the runner reads), an image named twice is one, and other files are free."""
    t = make_tenant("pro")
    s3 = _s3(minio)
    folder = f"{t.prefix}inputs/set/".removeprefix(f"s3://{BUCKET}/")
    for name in ("a.jpg", "b.PNG", "deeper/c.webp", "notes.txt"):
        s3.put_object(Bucket=BUCKET, Key=folder + name, Body=b"x")
    with t.client() as c:
        spec = t.depth_spec(inputs=[f"{t.prefix}inputs/set/", f"{t.prefix}inputs/set/a.jpg",
                                    f"{t.prefix}inputs/single.jpg"])
        r = c.post("/v1/depth-batches", json=spec)
        assert r.status_code == 202, r.text
        assert r.json()["units"] == 4  # a, b, deeper/c, and the single object; notes.txt is no image
        assert c.get("/v1/usage").json()["units_used"] == 4

        empty = c.post("/v1/depth-batches", json=t.depth_spec(inputs=[f"{t.prefix}inputs/nothing-here/"]))
        assert empty.status_code == 422, empty.text
        assert empty.json()["error"]["code"] == "input_prefix_empty"
        assert "nothing-here/" in empty.json()["error"]["message"]
        assert c.get("/v1/usage").json()["units_used"] == 4  # the refusal charged nothing
