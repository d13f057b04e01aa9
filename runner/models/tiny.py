"""Build tiny Depth Anything checkpoints that load through the real `from_pretrained` path.

    python -m spatialforge.runner.models.tiny OUTDIR            # a model dir: every size x variant
    python -m spatialforge.runner.models.tiny OUTDIR --single   # one checkpoint folder (relative)

Point SPATIALFORGE_MODEL_DIR at OUTDIR to run the runner on them. Random weights: the output
is not meaningful depth, only the real code path at a tiny size.
"""

from __future__ import annotations

from pathlib import Path

import click

from spatialforge.crds.v1alpha1.common import ModelSize, ModelVariant
from spatialforge.runner.models.configs import save_random, tiny_config
from spatialforge.runner.models.registry import Checkpoint


def build_tiny_model(
    outdir: str | Path, *, variant: ModelVariant = ModelVariant.relative, processor_size: int = 518, seed: int = 0
) -> Path:
    """Save one tiny checkpoint (model + image processor) into `outdir`."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    save_random(tiny_config(variant), str(outdir), processor_size=processor_size, seed=seed)
    # safetensors writes its file owner-only; a model folder is read by runners of another uid
    # (the image's 10001, from a volume an admin filled).
    for path in outdir.iterdir():
        if path.is_file():
            path.chmod(0o644)
    return outdir


def build_tiny_model_dir(
    root: str | Path,
    *,
    sizes: tuple[ModelSize, ...] = tuple(ModelSize),
    variants: tuple[ModelVariant, ...] = tuple(ModelVariant),
    processor_size: int = 518,
) -> Path:
    """A SPATIALFORGE_MODEL_DIR with one tiny checkpoint folder per size x variant."""
    root = Path(root)
    for size in sizes:
        for variant in variants:
            build_tiny_model(root / Checkpoint(size=size, variant=variant).name, variant=variant, processor_size=processor_size)
    return root


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--single", is_flag=True, help="Write one relative checkpoint into OUTDIR itself.")
@click.option("--processor-size", default=518, show_default=True, help="Input size of the image processor.")
def main(outdir: str, single: bool, processor_size: int) -> None:
    """Write tiny Depth Anything checkpoints to OUTDIR."""
    if single:
        build_tiny_model(outdir, processor_size=processor_size)
    else:
        build_tiny_model_dir(outdir, processor_size=processor_size)
    click.echo(f"tiny Depth Anything written to {outdir}")


if __name__ == "__main__":
    main()
