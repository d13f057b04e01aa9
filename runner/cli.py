"""`spatialforge run MANIFEST.yaml`: run a DepthBatch or ReconstructionJob on this machine."""

from __future__ import annotations

import logging
import os

import click

from spatialforge.crds.constants import ENV_DEVICE, EXIT_INVALID_INPUT
from spatialforge.runner.app import RunOutcome, run_local


def summary_lines(outcome: RunOutcome) -> list[str]:
    """Human summary printed after a run."""
    lines = []
    for res in outcome.results:
        rate = f", {res.items / res.seconds:.2f}/s" if res.seconds > 0 else ""
        lines.append(f"  {res.items} item(s) in {res.seconds:.1f}s{rate} -> {res.manifest_uri}")
    if outcome.ok:
        lines.insert(0, f"done in {outcome.seconds:.1f}s")
    else:
        kind = "invalid input" if outcome.exit_code == EXIT_INVALID_INPUT else "failed (retryable)"
        lines.insert(0, f"{kind} (exit {outcome.exit_code}): {outcome.reason}")
    return lines


@click.command(name="run")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--shard-index", type=int, default=None, help="Run only this shard (default: every shard in turn).")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def run_command(manifest: str, shard_index: int | None, device: str | None, quiet: bool, verbose: bool) -> None:
    """Run MANIFEST.yaml (a DepthBatch or ReconstructionJob) locally; file:// URIs allowed.

    Exit code 0 when done, 42 for invalid input, 1 for anything retryable.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    if device:
        env[ENV_DEVICE] = device
    outcome = run_local(manifest, shard_index=shard_index, env=env, show_progress=not quiet)
    for line in summary_lines(outcome):
        click.echo(line, err=not outcome.ok)
    raise SystemExit(outcome.exit_code)


if __name__ == "__main__":
    run_command()
