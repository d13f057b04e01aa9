"""The README's "Using it" block, run as written, the way a doctest would.

The block's lines run in order in one bash, on a state directory and ports of their own
(so neither a developer's plane nor the session's is touched); a line ending in `&` starts in
the background as the README starts it, and is stopped at the end with the plane. A failing
line fails the test with the output so far.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from spatialforge.devcluster.ports import free_port
from spatialforge.devcluster.plane import REPO
from tests.timeouts import LONG

pytestmark = pytest.mark.integration


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block under a `## heading` of the README."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under '## {heading}'"
    lines = [line.strip() for line in match.group(1).splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands, f"the bash block under '## {heading}' has no commands"
    return commands


def script_for(commands: list[str], logs: Path) -> str:
    """One bash script: stop at the first failing line and say which; background lines logged
    into `logs` (never the checkout)."""
    out = ["set -euo pipefail", f"cd {REPO}", "trap 'echo \"FAILED: $BASH_COMMAND\" >&2' ERR"]
    for i, line in enumerate(commands):
        out.append(f"echo '+ {line.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}' >&2")
        body = re.sub(r"\s+#.*$", "", line)  # trailing comment (none of the lines quote a #)
        if body.endswith("&"):
            out.append(f"{body[:-1].rstrip()} >>{logs}/background-{i}.log 2>&1 &")
        else:
            out.append(body)
    out.append("kill $(jobs -p) 2>/dev/null || true")
    return "\n".join(out) + "\n"


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    commands = readme_block("Using it")
    assert any(c.endswith("&") or "& " in c for c in commands), "the block starts the operator in the background"
    state = tmp_path / "plane"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env.update({"SPATIALFORGE_STATE": str(state), "SF_PORTS": "free",
                # The README's operator on free ports, so a developer's own never collides with it.
                "SPATIALFORGE_HEALTH_PORT": str(free_port()), "SPATIALFORGE_METRICS_PORT": str(free_port())})
    (tmp_path / "run.sh").write_text(script_for(commands, tmp_path))
    proc = subprocess.Popen(["bash", str(tmp_path / "run.sh")], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=LONG * 4)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the README block did not finish:\n{output[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "down"], env=env, capture_output=True, timeout=120)
    background = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("background-*.log"))
    assert proc.returncode == 0, f"the README block failed:\n{output[-4000:]}\n--- background:\n{background}"
    assert re.search(r"sample-depth\s+Succeeded", output), output[-2000:]
