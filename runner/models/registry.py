"""Which checkpoint a DepthModel means, whether it may run here, and where its weights are.

Weights come from (RunnerSettings), first match wins:
- `SPATIALFORGE_MODEL_DIR=/path`: one subfolder per checkpoint (`depth-anything-v2-small-relative/`);
- `SPATIALFORGE_MODEL_DIR=s3://bucket/prefix/`: the same layout in the object store, downloaded
  once to `SPATIALFORGE_MODEL_CACHE` (default ~/.cache/spatialforge/models);
- otherwise the Hugging Face cache (repo ids below). Offline by default: only what the cache
  already holds is used, and a missing checkpoint fails at once with the fix in the message;
  `SPATIALFORGE_HUB_DOWNLOAD=1` lets the hub download it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spatialforge.crds.constants import ENV_HUB_DOWNLOAD, ENV_MODEL_CACHE, ENV_MODEL_DIR, ENV_RESEARCH_MODE
from spatialforge.crds.v1alpha1.common import DepthModel, ModelSize, ModelVariant
from spatialforge.runner.errors import ModelLoadError, ModelNotAllowedError
from spatialforge.runner.settings import RunnerSettings

# Apache-2.0; every other size is CC-BY-NC-4.0 (non-commercial).
OPEN_SIZES = frozenset({ModelSize.small})
METRIC_MAX_DEPTH = {ModelVariant.metric_indoor: 20, ModelVariant.metric_outdoor: 80}  # metres (ints: transformers types it so)
# Metres per step of the 16-bit PNG, per metric variant: its max depth fits in 65535 steps
# (indoor 1 mm up to 65.5 m, outdoor 2 mm up to 131 m). Relative depth is scaled per image.
PNG16_METRIC_SCALE = {ModelVariant.metric_indoor: 0.001, ModelVariant.metric_outdoor: 0.002}
_DONE_MARKER = ".spatialforge-complete"


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One Depth Anything V2 checkpoint."""

    size: ModelSize
    variant: ModelVariant

    @property
    def name(self) -> str:
        """Folder name under SPATIALFORGE_MODEL_DIR."""
        return f"depth-anything-v2-{self.size.value}-{self.variant.value}"

    @property
    def metric(self) -> bool:
        return self.variant != ModelVariant.relative

    @property
    def hub_repo(self) -> str:
        size = self.size.value.capitalize()
        if self.variant == ModelVariant.relative:
            return f"depth-anything/Depth-Anything-V2-{size}-hf"
        scene = "Indoor" if self.variant == ModelVariant.metric_indoor else "Outdoor"
        return f"depth-anything/Depth-Anything-V2-Metric-{scene}-{size}-hf"

    @property
    def png16_scale(self) -> float | None:
        """Metres per PNG step for a metric checkpoint; None for relative (scaled per image)."""
        return PNG16_METRIC_SCALE.get(self.variant)

    @property
    def licence(self) -> str:
        return "Apache-2.0" if self.size in OPEN_SIZES else "CC-BY-NC-4.0"

    @classmethod
    def of(cls, model: DepthModel) -> Checkpoint:
        return cls(size=ModelSize(model.size), variant=ModelVariant(model.variant))


def check_allowed(ckpt: Checkpoint, settings: RunnerSettings) -> None:
    """Refuse non-commercial weights unless the deployment runs in research mode."""
    if ckpt.size in OPEN_SIZES or settings.research_mode:
        return
    raise ModelNotAllowedError(
        f"model size {ckpt.size.value!r} ({ckpt.name}) is licensed {ckpt.licence} (non-commercial); "
        f"only 'small' (Apache-2.0) runs unless the deployment sets {ENV_RESEARCH_MODE}=1"
    )


def resolve_weights(ckpt: Checkpoint, settings: RunnerSettings) -> str:
    """A local folder (or, with hub downloads allowed, a hub repo id) for `from_pretrained`."""
    model_dir = (settings.model_dir or "").strip()
    if not model_dir:
        return _hub_weights(ckpt, settings)
    if model_dir.startswith("s3://"):
        return str(_download_s3(f"{model_dir.rstrip('/')}/{ckpt.name}/", model_cache(settings) / ckpt.name, settings))
    path = Path(model_dir) / ckpt.name
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no checkpoint {ckpt.name} under {ENV_MODEL_DIR}={model_dir} (expected {path}/config.json)")
    return str(path)


def _hub_weights(ckpt: Checkpoint, settings: RunnerSettings) -> str:
    """The hub repo id when downloads are allowed, else its folder in the local hub cache."""
    if settings.hub_download:
        return ckpt.hub_repo
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(ckpt.hub_repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"checkpoint {ckpt.name} ({ckpt.hub_repo}) is not in the local Hugging Face cache and hub downloads "
            f"are off; set {ENV_MODEL_DIR} to a folder (or s3:// prefix) holding {ckpt.name}/, or {ENV_HUB_DOWNLOAD}=1 "
            f"to download it (a test model: python -m spatialforge.runner.models.tiny DIR)"
        ) from exc


def model_cache(settings: RunnerSettings) -> Path:
    """SPATIALFORGE_MODEL_CACHE, else ~/.cache/spatialforge/models, else (read-only home, as in
    a hardened pod) a folder under the temp dir."""
    import tempfile

    if settings.model_cache:
        return Path(settings.model_cache)
    for candidate in (Path.home() / ".cache" / "spatialforge" / "models", Path(tempfile.gettempdir()) / "spatialforge-models"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise ModelLoadError(f"no writable model cache; set {ENV_MODEL_CACHE}")


def forget_download(location: str) -> None:
    """Drop the completion marker of a mirrored checkpoint (its files failed to load), so the
    next attempt downloads it again."""
    try:
        (Path(location) / _DONE_MARKER).unlink(missing_ok=True)
    except OSError:  # a read-only model dir has no marker to drop
        pass


def _download_s3(prefix: str, dest: Path, settings: RunnerSettings) -> Path:
    """Mirror an s3:// checkpoint folder into the local cache once (a marker records completion)."""
    from spatialforge.runner.storage.s3 import S3Settings, S3Store

    if (dest / _DONE_MARKER).is_file():
        return dest
    store = S3Store(S3Settings.from_runner(settings))
    try:
        objects = store.list(prefix)
        if not any(o.uri.endswith("/config.json") for o in objects):
            raise ModelLoadError(f"no checkpoint at {prefix} (config.json missing)")
        for obj in objects:
            store.download(obj.uri, dest / obj.uri[len(prefix):])
    finally:
        store.close()
    (dest / _DONE_MARKER).write_text(prefix)
    return dest
