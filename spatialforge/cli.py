"""The `spatialforge` command: one entry point, a subcommand per component."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _register_optional() -> None:
    """Commands whose dependencies live in optional extras register only when installed."""
    try:
        from spatialforge.runner.cli import run_command

        main.add_command(run_command, name="run")
    except ImportError:
        pass
    try:
        from spatialforge.runner.serve.cli import serve_command

        @main.group(name="runner")
        def runner_group() -> None:
            """The runner: `runner serve` is the depth server (a batch run is `spatialforge run`)."""

        runner_group.add_command(serve_command)
    except ImportError:
        pass
    try:
        from spatialforge.apiserver.cli import apiserver_cli

        main.add_command(apiserver_cli, name="api")
    except ImportError:
        pass
    try:
        from spatialforge.client.cli import client_cli, depth_command, measure_command

        main.add_command(client_cli, name="client")
        main.add_command(depth_command, name="depth")  # synchronous: `spatialforge depth IMAGE -o depth.png`
        main.add_command(measure_command, name="measure")
    except ImportError:
        pass


_register_optional()

if __name__ == "__main__":
    main()
