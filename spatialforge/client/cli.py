"""`spatialforge client ...`: upload, submit, follow with a progress bar, download, cancel.

The server and key come from --url / --key or SPATIALFORGE_URL / SPATIALFORGE_API_KEY.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from spatialforge.client._client import TERMINAL, ApiError, Client


def _client(ctx: click.Context) -> Client:
    return ctx.obj["client"]


@click.group("client")
@click.option("--url", envvar="SPATIALFORGE_URL", required=True, help="API base URL.")
@click.option("--key", envvar="SPATIALFORGE_API_KEY", required=True, help="API key (prefer the env variable).")
@click.pass_context
def client_cli(ctx: click.Context, url: str, key: str) -> None:
    """Talk to a SpatialForge API server."""
    ctx.obj = {"client": ctx.with_resource(Client(url, key))}


def _echo(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _guard(fn):  # type: ignore[no-untyped-def]
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@client_cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.pass_context
@_guard
def upload(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Upload FILES; prints the prefix to use as a DepthBatch input."""
    with click.progressbar(length=len(files), label="uploading") as bar:
        prefix = _client(ctx).upload(files, progress=bar.update)
    click.echo(prefix)


@client_cli.command()
@click.argument("kind", type=click.Choice(["depth", "reconstruction"]))
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--idempotency-key", default=None)
@click.option("--webhook-url", default=None)
@click.option("--follow", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.pass_context
@_guard
def submit(ctx: click.Context, kind: str, spec_file: str, idempotency_key: str | None, webhook_url: str | None,
           follow: bool) -> None:
    """Submit a job whose spec is SPEC_FILE (YAML or JSON; a full manifest's spec is used)."""
    doc = yaml.safe_load(Path(spec_file).read_text())
    spec = doc.get("spec", doc) if isinstance(doc, dict) else doc
    client = _client(ctx)
    submit_fn = client.submit_depth if kind == "depth" else client.submit_reconstruction
    job = submit_fn(spec, idempotency_key=idempotency_key, webhook_url=webhook_url)
    if follow:
        job = _follow(client, job["id"])
    _echo(job)
    if job["phase"] in ("Failed", "Cancelled"):
        ctx.exit(1)


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    with click.progressbar(length=1, label=job_id, show_percent=True) as bar:
        state = {"done": 0}

        def on_progress(job: dict[str, Any]) -> None:
            total = max(1, job["progress"]["total"])
            bar.length = total
            step = job["progress"]["done"] - state["done"]
            if step > 0:
                bar.update(step)
                state["done"] = job["progress"]["done"]
            bar.label = f"{job_id} {job['phase']}"

        job = client.wait(job_id, on_progress=on_progress)
        if job["phase"] == "Succeeded":
            bar.update(max(0, bar.length - state["done"]))
    return job


@client_cli.command()
@click.argument("job_id")
@click.pass_context
@_guard
def status(ctx: click.Context, job_id: str) -> None:
    """Show a job."""
    _echo(_client(ctx).job(job_id))


@client_cli.command()
@click.argument("job_id")
@click.pass_context
@_guard
def follow(ctx: click.Context, job_id: str) -> None:
    """Follow a job with a progress bar until it ends."""
    job = _follow(_client(ctx), job_id)
    _echo(job)
    if job["phase"] != "Succeeded":
        ctx.exit(1)


@client_cli.command("list")
@click.option("--kind", type=click.Choice(["DepthBatch", "ReconstructionJob"]), default=None)
@click.option("--phase", type=click.Choice(sorted(TERMINAL | {"Pending", "Queued", "Running"})), default=None)
@click.pass_context
@_guard
def list_jobs(ctx: click.Context, kind: str | None, phase: str | None) -> None:
    """List your jobs."""
    _echo(_client(ctx).jobs(kind=kind, phase=phase))


@client_cli.command()
@click.argument("job_id")
@click.argument("dest", type=click.Path(file_okay=False))
@click.pass_context
@_guard
def download(ctx: click.Context, job_id: str, dest: str) -> None:
    """Download a finished job's results into DEST."""
    for path in _client(ctx).download(job_id, dest):
        click.echo(str(path))


@client_cli.command()
@click.argument("job_id")
@click.pass_context
@_guard
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job."""
    _echo(_client(ctx).cancel(job_id))


@client_cli.command()
@click.pass_context
@_guard
def usage(ctx: click.Context) -> None:
    """Your usage this month."""
    _echo(_client(ctx).usage())


@client_cli.command("uploads")
@click.pass_context
@_guard
def list_uploads(ctx: click.Context) -> None:
    """List your uploads (size, expiry)."""
    _echo(_client(ctx).uploads())


@client_cli.command("delete-results")
@click.argument("job_id")
@click.pass_context
@_guard
def delete_results(ctx: click.Context, job_id: str) -> None:
    """Delete a finished job's results now."""
    _echo(_client(ctx).delete_results(job_id))
