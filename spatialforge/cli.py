"""The `spatialforge` command: one entry point, a subcommand per component.

Subcommands whose dependencies come with an extra (`run`, `runner serve`, `api`) are always
listed and imported only when used; without their extra they fail with the `pip install` that
brings it, so a command never silently goes missing. The client's commands need only the base
install (httpx is a base dependency).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import click


@dataclass(frozen=True)
class _Lazy:
    """A subcommand imported when used; `extra` installs its dependencies (None: the base install),
    `needs` are the modules of that extra it cannot start without."""

    module: str
    attr: str
    extra: str | None
    help: str
    needs: tuple[str, ...] = ()


class _LazyGroup(click.Group):
    """A group whose `lazy` subcommands are listed without importing them."""

    def __init__(self, *args: Any, lazy: dict[str, _Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = self.lazy.get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        absent = [m for m in spec.needs if importlib.util.find_spec(m) is None]
        if absent:
            return _missing(cmd_name, spec, absent)
        try:
            command = getattr(importlib.import_module(spec.module), spec.attr)
        except ImportError as exc:
            if (exc.name or "spatialforge").split(".")[0] == "spatialforge":
                raise  # our own module is broken: a bug, not a missing extra
            return _missing(cmd_name, spec, [exc.name or "?"])
        if not isinstance(command, click.Command):
            raise TypeError(f"{spec.module}.{spec.attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The listing, with the lazy ones' help taken from their spec (nothing imported)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            spec = self.lazy.get(name)
            if spec is not None:
                rows.append((name, spec.help))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _install_hint(spec: _Lazy) -> str:
    return f"pip install 'spatialforge[{spec.extra}]'" if spec.extra else "pip install --force-reinstall spatialforge"


def _missing(name: str, spec: _Lazy, absent: list[str]) -> click.Command:
    """A stand-in for a command whose dependencies are not installed: it names what to install."""
    what = f"the {spec.extra} extra" if spec.extra else "the base install"

    @click.command(name, help=f"{spec.help} [needs: {_install_hint(spec)}]",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.pass_context
    def command(ctx: click.Context) -> None:
        raise click.ClickException(
            f"`{ctx.command_path}` needs {what} ({', '.join(absent)} not installed): {_install_hint(spec)}")

    return command


# Subcommands from optional extras (and the client's, which only need httpx): listed always.
_RUNNER_NEEDS = ("numpy", "torch", "transformers", "cv2", "boto3")
_CLIENT_NEEDS = ("httpx",)
_OPTIONAL = {
    "run": _Lazy("spatialforge.runner.cli", "run_command", "runner",
                 "Run a DepthBatch / ReconstructionJob manifest on this machine.", _RUNNER_NEEDS),
    "api": _Lazy("spatialforge.apiserver.cli", "apiserver_cli", "apiserver",
                 "The REST front end: serve it, manage keys, plans and usage.", ("fastapi", "redis", "stripe", "uvicorn")),
    "client": _Lazy("spatialforge.client.cli", "client_cli", None, "Talk to a SpatialForge API server.", _CLIENT_NEEDS),
    "depth": _Lazy("spatialforge.client.cli", "depth_command", None, "Depth of one image from the API, synchronously.",
                   _CLIENT_NEEDS),
    "measure": _Lazy("spatialforge.client.cli", "measure_command", None,
                     "Measure in one image through the API, synchronously.", _CLIENT_NEEDS),
}
_RUNNER = {"serve": _Lazy("spatialforge.runner.serve.cli", "serve_command", "runner",
                          "Serve depth over HTTP (the warm pool's server).", (*_RUNNER_NEEDS, "starlette", "uvicorn"))}


@click.group(cls=_LazyGroup, lazy=_OPTIONAL, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spatialforge")
def main() -> None:
    """SpatialForge: monocular depth and video-to-3D as Kubernetes custom resources."""


@main.command()
def operator() -> None:
    """Run the operator (Kopf) against the cluster in KUBECONFIG or in-cluster."""
    from spatialforge.operator.__main__ import main as operator_main

    sys.exit(operator_main())


@main.group()
def crds() -> None:
    """The CustomResourceDefinitions, generated from the pydantic models."""


@crds.command("generate")
@click.option("--check", is_flag=True, help="Fail if the committed YAML differs instead of writing it.")
def crds_generate(check: bool) -> None:
    """Write crds/*.yaml from spatialforge.crds."""
    from spatialforge.crds.generate import main as generate_main

    sys.exit(generate_main(["--check"] if check else []))


@crds.command("print")
def crds_print() -> None:
    """Print every CRD as one YAML stream (for kubectl apply -f -)."""
    from spatialforge.crds.generate import render_all

    click.echo("---\n".join(render_all().values()), nl=False)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def devcluster(ctx: click.Context) -> None:
    """Run the development node agent (simulated GPU nodes); see hack/cluster.sh."""
    from spatialforge.devcluster.__main__ import main as agent_main

    agent_main(list(ctx.args))


@main.group(cls=_LazyGroup, lazy=_RUNNER)
def runner() -> None:
    """The runner: `runner serve` is the depth server (a batch run is `spatialforge run`)."""


if __name__ == "__main__":
    main()
