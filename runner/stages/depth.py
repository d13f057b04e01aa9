"""DepthBatch: decode -> preprocess (threads) -> batched forward -> encode + upload (threads).

Outputs per image under the shard prefix: `<stem>.depth.png` (uint16; depth = value x
png16Scale), `<stem>.depth.npy` (float32), then `manifest.json` once every file is stored.
Metric models give metres (png16Scale 0.001, i.e. millimetres); relative models give
disparity in the model's own units, scaled to fill 16 bits per image.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialforge.crds.layout import shard_of
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec, DepthFormat
from spatialforge.runner.images import DecodedImage, check_size, decode_image, heuristic_focal_px, is_image_name
from spatialforge.runner.inputs import expand
from spatialforge.runner.stages.base import RunContext, StageResult, manifest_header
from spatialforge.runner.storage import ObjectInfo, join_uri


@dataclass(kw_only=True)
class _Item:
    info: ObjectInfo
    stem: str
    image: DecodedImage | None = None
    pixels: np.ndarray | None = None


def encode_png16(depth: np.ndarray, *, metric: bool) -> tuple[bytes, float]:
    """uint16 PNG bytes and the scale that maps a stored value back to depth units."""
    import cv2

    if metric:
        scale = 0.001  # millimetres
    else:
        peak = float(depth.max()) if depth.size else 0.0
        scale = peak / 65535.0 if peak > 0 else 1.0
    values = np.clip(np.rint(depth / scale), 0, 65535).astype(np.uint16)
    ok, buf = cv2.imencode(".png", values, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes(), scale


def encode_npy(depth: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, depth.astype(np.float32, copy=False), allow_pickle=False)
    return buf.getvalue()


def focal_for(spec: DepthBatchSpec, image: DecodedImage) -> dict[str, Any]:
    """Intrinsics for the manifest: spec, else EXIF, else 0.9 x max(w, h)."""
    w, h = image.width, image.height
    if spec.intrinsics is not None:
        k = spec.intrinsics
        return {
            "fx": k.fx,
            "fy": k.fy,
            "cx": k.cx if k.cx is not None else w / 2,
            "cy": k.cy if k.cy is not None else h / 2,
            "source": "spec",
        }
    if image.exif_focal_px:
        return {"fx": image.exif_focal_px, "fy": image.exif_focal_px, "cx": w / 2, "cy": h / 2, "source": "exif"}
    f = heuristic_focal_px(w, h)
    return {"fx": f, "fy": f, "cx": w / 2, "cy": h / 2, "source": "heuristic"}


class DepthStage:
    """Runs one shard of a DepthBatch."""

    kind = "DepthBatch"

    def __init__(self, *, io_workers: int | None = None) -> None:
        self.io_workers = io_workers or min(8, max(2, (os.cpu_count() or 2)))

    def run(self, spec: DepthBatchSpec, ctx: RunContext) -> StageResult:
        started = time.monotonic()
        progress = ctx.progress
        progress.update(stage="listing")
        everything = expand(spec.inputs, ctx.store, accept=is_image_name)
        by_uri = {info.uri: (info, stem) for info, stem in everything}
        mine = shard_of(list(by_uri), ctx.shard_index, ctx.shard_count)
        items = [_Item(info=by_uri[u][0], stem=by_uri[u][1]) for u in mine]
        for item in items:  # fail fast, before loading a model
            check_size(item.info.uri, item.info.size, max_bytes=spec.max_image_bytes)
        progress.update(done=0, total=len(items), stage="loading")
        estimator = ctx.estimator(spec.model)
        prefix = ctx.shard_prefix(spec.output.uri)
        out_store = ctx.store(spec.output.uri)
        progress.update(stage="depth")

        def load(item: _Item) -> _Item:
            data = ctx.store(item.info.uri).get(item.info.uri)
            item.image = decode_image(
                item.info.uri, data, max_pixels=spec.max_image_pixels, max_bytes=spec.max_image_bytes
            )
            item.pixels = estimator.preprocess(item.image.rgb)
            return item

        def write(item: _Item, depth: np.ndarray) -> dict[str, Any]:
            assert item.image is not None
            outputs: dict[str, Any] = {}
            scale = None
            if DepthFormat.png16 in spec.output.formats:
                png, scale = encode_png16(depth, metric=estimator.metric)
                uri = join_uri(prefix, f"{item.stem}.depth.png")
                outputs["png16"] = {"uri": uri, "sha256": out_store.put(uri, png, content_type="image/png"), "bytes": len(png)}
            if DepthFormat.npy in spec.output.formats:
                npy = encode_npy(depth)
                uri = join_uri(prefix, f"{item.stem}.depth.npy")
                outputs["npy"] = {
                    "uri": uri,
                    "sha256": out_store.put(uri, npy, content_type="application/x-npy"),
                    "bytes": len(npy),
                }
            progress.advance()
            return {
                "input": item.info.uri,
                "stem": item.stem,
                "width": item.image.width,
                "height": item.image.height,
                "exifOrientation": item.image.orientation,
                "outputs": outputs,
                "png16Scale": scale,
                "stats": {"min": float(depth.min()), "max": float(depth.max()), "mean": float(depth.mean())},
                "intrinsics": focal_for(spec, item.image),
            }

        records: list[dict[str, Any]] = []
        t_forward = 0.0
        window = max(2 * spec.batch_size, 2 * self.io_workers)
        with cf.ThreadPoolExecutor(self.io_workers, thread_name_prefix="sf-load") as loaders, cf.ThreadPoolExecutor(
            self.io_workers, thread_name_prefix="sf-write"
        ) as writers:
            pending: collections.deque[cf.Future[_Item]] = collections.deque()
            writes: list[cf.Future[dict[str, Any]]] = []
            queue = iter(items)
            for item in queue:  # prefetch a bounded window of decoded images
                pending.append(loaders.submit(load, item))
                if len(pending) >= window:
                    break
            while pending:
                batch: list[_Item] = []
                while pending and len(batch) < spec.batch_size:
                    batch.append(pending.popleft().result())
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.append(loaders.submit(load, nxt))
                t0 = time.monotonic()
                depths = estimator.predict(
                    [b.pixels for b in batch], [(b.image.height, b.image.width) for b in batch]  # type: ignore[union-attr]
                )
                t_forward += time.monotonic() - t0
                for b, depth in zip(batch, depths, strict=True):
                    b.pixels = None
                    writes.append(writers.submit(write, b, depth))
                writes = _drain_done(writes, records)
                while len(writes) > window:  # back-pressure: a slow store must not pile up depth maps
                    records.append(writes.pop(0).result())
            for fut in writes:
                records.append(fut.result())
        records.sort(key=lambda r: r["input"])
        seconds = time.monotonic() - started
        ckpt = estimator.checkpoint
        manifest = {
            **manifest_header(self.kind, ctx),
            "model": {
                "checkpoint": ckpt.name,
                "licence": ckpt.licence,
                "metric": ckpt.metric,
                "device": estimator.device.torch_device,
                "fp16": estimator.device.half,
            },
            "units": "metres" if ckpt.metric else "relative-disparity",
            "formats": [f.value for f in spec.output.formats],
            "images": records,
            "summary": {
                "images": len(records),
                "seconds": round(seconds, 3),
                "forwardSeconds": round(t_forward, 3),
                "imagesPerSecond": round(len(records) / seconds, 3) if seconds > 0 else None,
            },
        }
        manifest_uri = ctx.manifest_uri(spec.output.uri)
        progress.update(stage="manifest")
        out_store.put(manifest_uri, json.dumps(manifest, indent=2).encode(), content_type="application/json")
        progress.update(done=len(records), total=len(items), stage="done")
        return StageResult(manifest_uri=manifest_uri, items=len(records), seconds=seconds, summary=manifest["summary"])


def _drain_done(writes: list[cf.Future[dict[str, Any]]], records: list[dict[str, Any]]) -> list[cf.Future[dict[str, Any]]]:
    """Collect finished writes (raising their errors early) and keep the rest."""
    keep = []
    for fut in writes:
        if fut.done():
            records.append(fut.result())
        else:
            keep.append(fut)
    return keep
