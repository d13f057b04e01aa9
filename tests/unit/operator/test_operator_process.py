"""The tests' operator helper never starts a second operator beside a live one."""

import subprocess
import sys
from pathlib import Path

import pytest

from spatialforge.devcluster.operator_process import OperatorProcess


def test_start_refuses_while_the_process_lives(tmp_path: Path) -> None:
    op = OperatorProcess(tmp_path / "kubeconfig", tmp_path)
    op.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            op.start()
    finally:
        op.kill()
    assert not op.alive()
