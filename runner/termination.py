"""The one-line reason a failed pod leaves for the operator (terminationMessagePath)."""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_TERMINATION_LOG = "SPATIALFORGE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(reason: str, env: Mapping[str, str] | None = None) -> bool:
    """Write one line (Kubernetes keeps at most 4 KiB); an unwritable path is ignored."""
    env = os.environ if env is None else env
    path = env.get(ENV_TERMINATION_LOG) or DEFAULT_TERMINATION_LOG
    line = " ".join(reason.split())[:4000]
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        return False
    return True
