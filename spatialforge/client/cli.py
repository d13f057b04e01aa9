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


# --- synchronous depth and measurement: `spatialforge depth` and `spatialforge measure` -----------
def _point(value: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected X,Y (pixels)") from None
    return x, y


def _box(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected X0,Y0,X1,Y1 (pixels)") from None
    return x0, y0, x1, y1


def _server_options(fn):  # type: ignore[no-untyped-def]
    fn = click.option("--key", envvar="SPATIALFORGE_API_KEY", required=True,
                      help="API key (prefer the env variable).")(fn)
    return click.option("--url", envvar="SPATIALFORGE_URL", required=True, help="API base URL.")(fn)


def _intrinsics(fx: float | None, fy: float | None, cx: float | None, cy: float | None) -> dict[str, float]:
    return {k: v for k, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)) if v is not None}


_focal_options = [click.option(f"--{k}", type=float, default=None, help=f"Intrinsic {k} in image pixels.")
                  for k in ("fx", "fy", "cx", "cy")]


def _with_focal(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_focal_options):
        fn = option(fn)
    return fn


@click.command("depth")
@click.argument("image")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the 16-bit PNG.")
@click.option("--preview", "preview_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the colour preview JPEG here.")
@click.option("--model", type=click.Choice(["small", "base", "large"]), default=None)
@_with_focal
@_server_options
@_guard
def depth_command(image: str, output: str, preview_path: str | None, model: str | None, fx: float | None,
                  fy: float | None, cx: float | None, cy: float | None, url: str, key: str) -> None:
    """Depth for IMAGE now (a local file or an s3:// URI of your prefix); one unit. Prints its metadata."""
    with Client(url, key) as client:
        if preview_path is None:
            png, meta = client.depth_png(image, model=model, **_intrinsics(fx, fy, cx, cy))
        else:  # one request: the results are written, fetched from their signed URLs
            meta = client.depth(image, model=model, **_intrinsics(fx, fy, cx, cy))
            png = client.fetch(meta["depth_url"])
            Path(preview_path).write_bytes(client.fetch(meta["preview_url"]))
    Path(output).write_bytes(png)
    _echo(meta)


@click.command("measure")
@click.argument("image")
@click.option("--from", "start", required=True, help="X,Y: first point (image pixels).")
@click.option("--to", "end", required=True, help="X,Y: second point (image pixels).")
@click.option("--reference", type=click.Choice(["a4", "letter", "credit_card"]), default=None,
              help="An object of known size in the photo (with --box).")
@click.option("--box", default=None, help="X0,Y0,X1,Y1: the reference object's box (image pixels).")
@click.option("--model", type=click.Choice(["small", "base", "large"]), default=None)
@_with_focal
@_server_options
@_guard
def measure_command(image: str, start: str, end: str, reference: str | None, box: str | None, model: str | None,
                    fx: float | None, fy: float | None, cx: float | None, cy: float | None, url: str, key: str) -> None:
    """Distance in metres between two pixels of IMAGE, with its 95 % interval; one unit."""
    if (reference is None) != (box is None):
        raise click.UsageError("--reference and --box go together")
    with Client(url, key) as client:
        result = client.measure(image, _point(start), _point(end), reference=reference, box=_box(box), model=model,
                                **_intrinsics(fx, fy, cx, cy))
    lo, hi = result["interval_m"]
    click.echo(f"{result['distance_m']:.3f} m (95 %: {lo:.3f}-{hi:.3f} m, focal from {result['focal']['source']})",
               err=True)
    _echo(result)

