"""Where exported graphs live, and the key that says when one is still valid.

The key is made of the checkpoint's content hash, the versions of torch and transformers, the
opset, the shape policy and the export revision (export.py); an export is written to a temporary
folder and renamed into place, so concurrent pods share one cache safely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from spatialforge.runner.errors import ModelLoadError
from spatialforge.runner.models.backends import BackendError
from spatialforge.runner.models.export import EXPORT_REVISION, OPSET, SHAPE_POLICY, cpu_fp32, export_onnx
from spatialforge.runner.settings import RunnerSettings

log = logging.getLogger(__name__)


def backend_cache(settings: RunnerSettings) -> Path:
    """SPATIALFORGE_BACKEND_CACHE; else `_backends/` beside the weights when the model dir is a
    local folder that has one or can take one (shared by every pod and run that mounts it, so
    a Job pod does not export again); else `_backends/` in the (per-pod) model cache."""
    from spatialforge.runner.models.registry import model_cache

    if settings.backend_cache:
        return Path(settings.backend_cache)
    model_dir = (settings.model_dir or "").strip()
    if model_dir and "://" not in model_dir:
        beside = Path(model_dir) / "_backends"
        if beside.is_dir() or os.access(model_dir, os.W_OK):
            return beside
    return model_cache(settings) / "_backends"


def checkpoint_digest(location: str, cache: Path) -> str:
    """sha256 over the checkpoint's config and weight files (memoised by path, size and mtime)."""
    folder = Path(location)
    if not folder.is_dir():  # a hub repo id: its snapshot folder in the Hugging Face cache
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(location, local_files_only=True))
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    stamp = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo = cache / "digests" / (hashlib.sha256(stamp.encode()).hexdigest()[:32] + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    atomic_write(memo, digest)
    return digest


def export_key(digest: str, *, dtype: str) -> str:
    """What a cached export depends on: checkpoint content, exporter versions, opset, shapes, dtype."""
    import torch
    import transformers

    parts = [digest, f"torch={torch.__version__}", f"transformers={transformers.__version__}",
             f"opset={OPSET}", SHAPE_POLICY, f"dtype={dtype}", f"revision={EXPORT_REVISION}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def cached_onnx(model: Any, location: str, name: str, settings: RunnerSettings) -> Path:
    """The checkpoint's ONNX file, exported once per cache key (atomically: a folder renamed into place)."""
    cache = backend_cache(settings)
    key = export_key(checkpoint_digest(location, cache), dtype="float32")
    folder = cache / f"{name}-{key}"
    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        return onnx_path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    except OSError as exc:
        raise BackendError(f"no export of {name} in {cache} and cannot write one there ({exc}); "
                           f"set SPATIALFORGE_BACKEND_CACHE to a writable folder") from exc
    try:
        log.info("exporting %s to ONNX (once per checkpoint and toolchain) into %s", name, folder)
        export_onnx(cpu_fp32(model), tmp / "model.onnx")
        (tmp / "key.json").write_text(json.dumps({"checkpoint": name, "key": key, "opset": OPSET, "shapes": SHAPE_POLICY}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race: use its export
            if not onnx_path.is_file():
                raise
    except Exception as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise BackendError(f"ONNX export of {name} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return onnx_path


def cached_int8(onnx_path: Path) -> Path:
    """The int8 graph beside its fp32 export, quantized once per export and ONNX Runtime version."""
    import onnxruntime

    from spatialforge.runner.models.export import quantize_int8

    dest = onnx_path.with_name(f"model-int8-ort{onnxruntime.__version__}.onnx")
    if dest.is_file():
        return dest
    try:
        fd, tmp = tempfile.mkstemp(dir=onnx_path.parent, prefix=".int8-", suffix=".onnx")
        os.close(fd)
    except OSError as exc:
        raise BackendError(f"no int8 graph in {onnx_path.parent} and cannot write one there ({exc})") from exc
    try:
        log.info("quantizing %s to int8 (once per export) into %s", onnx_path, dest)
        quantize_int8(onnx_path, Path(tmp))
        Path(tmp).chmod(0o644)
        os.replace(tmp, dest)
    except Exception as exc:
        raise BackendError(f"int8 quantization of {onnx_path} failed: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def atomic_write(path: Path, text: str) -> None:
    """Write a small memo atomically; a read-only cache (pre-exported, mounted) just is not written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot write %s (%s); it is recomputed next time", path, exc)
