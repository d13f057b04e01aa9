"""The SpatialForge runner: executes a DepthBatch or ReconstructionJob in a pod or locally.

Public surface:
- `python -m spatialforge.runner`: the pod entry point (see `app.run_in_pod`).
- `run_local(manifest_path, ...)`: run a manifest on this machine, returns a RunOutcome.
- `spatialforge.runner.cli.run_command`: the click command behind `spatialforge run`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunOutcome", "run_in_pod", "run_local"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not pull torch or kube
    if name in __all__:
        from spatialforge.runner import app

        return getattr(app, name)
    raise AttributeError(name)
