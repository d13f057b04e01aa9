"""In-pod entry point: `python -m spatialforge.runner` (env: SPATIALFORGE_KIND, _NAME, _NAMESPACE,
JOB_COMPLETION_INDEX, optional KUBECONFIG). Exits 0, EXIT_INVALID_INPUT (42) or 1.

`python -m spatialforge.runner serve [OPTIONS]` runs the depth server instead (runner/serve/)."""

from __future__ import annotations

import asyncio
import logging
import sys

from spatialforge.runner.app import run_in_pod


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        from spatialforge.runner.serve.cli import serve_command

        serve_command.main(sys.argv[2:], prog_name="python -m spatialforge.runner serve")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_in_pod()).exit_code


if __name__ == "__main__":
    sys.exit(main())
