"""The one-line reason a failed pod leaves for the operator (terminationMessagePath)."""

from __future__ import annotations

import os
from pathlib import Path

from spatialforge.runner.settings import DEFAULT_TERMINATION_LOG


def write_termination_message(reason: str, path: str | os.PathLike[str] = DEFAULT_TERMINATION_LOG) -> bool:
    """Write one line (Kubernetes keeps at most 4 KiB); an unwritable path is ignored."""
    line = " ".join(reason.split())[:4000]
    try:
        Path(path).write_text(line + "\n", encoding="utf-8")
    except OSError:
        return False
    return True
