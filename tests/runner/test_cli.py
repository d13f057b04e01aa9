"""`spatialforge run MANIFEST.yaml` (the click command object) and its terminal progress bar."""

from __future__ import annotations

import io

from click.testing import CliRunner
from PIL import Image

from spatialforge.runner.cli import run_command
from spatialforge.runner.progress import Progress, TerminalBar


def test_run_command_success_and_summary(tmp_path, model_dir, make_manifest, rgb_image):
    Image.fromarray(rgb_image()).save(tmp_path / "a.png")
    manifest = make_manifest("DepthBatch", {"inputs": ["file://a.png"], "output": {"uri": "file://out"}})
    result = CliRunner().invoke(run_command, [str(manifest), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "done in" in result.output and "1 item(s)" in result.output and "manifest.json" in result.output
    assert "[" in result.output and "1/1" in result.output  # the progress bar's last line


def test_run_command_invalid_input_exit_code(tmp_path, model_dir, make_manifest):
    (tmp_path / "bad.png").write_bytes(b"nope")
    manifest = make_manifest("DepthBatch", {"inputs": ["file://bad.png"], "output": {"uri": "file://out"}})
    result = CliRunner().invoke(run_command, [str(manifest), "--quiet"])
    assert result.exit_code == 42
    assert "invalid input (exit 42)" in result.output and "bad.png" in result.output


def test_terminal_bar_draws_the_final_state():
    stream = io.StringIO()
    progress = Progress()
    bar = TerminalBar(stream=stream, width=10)
    progress.subscribe(bar)
    progress.update(done=0, total=4, stage="depth")
    for _ in range(4):
        progress.advance()
    bar.close()
    last = stream.getvalue().strip().splitlines()[-1]
    assert "[##########]" in last and "4/4" in last and "depth" in last
