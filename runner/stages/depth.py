"""DepthBatch: decode -> preprocess (threads) -> batched forward -> encode + upload (threads).

Outputs per image under the shard prefix: `<stem>.depth.png` (uint16; depth = value x
png16Scale), `<stem>.depth.npy` (float32), then `manifest.json` once every file is stored.
Metric models give metres: png16Scale is fixed per variant (registry.PNG16_METRIC_SCALE:
indoor 0.001 = 1 mm up to 65.5 m, outdoor 0.002 = 2 mm up to 131 m). Relative models give
disparity in the model's own units, scaled per image so its maximum is 65535.

Depth maps are written at the input's size up to `spec.output.maxPixels`, downscaled (aspect
kept) above it; `width`/`height` and the intrinsics in the manifest are the depth map's.
Outputs are staged and published at the end (storage/staging.py). With `onInvalidImage: Skip`
an invalid image is listed under `skipped` with its reason instead of failing the shard.
Sizes and headers are checked before the model loads (a wrong format or too many pixels is
refused at once); each image's record lists what decoding had to guess or leave out under
`warnings` and the ICC profile its colours were converted from under `colorProfile`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialforge.crds.layout import shard_of
from spatialforge.crds.v1alpha1.depthbatch import DepthBatchSpec, DepthFormat, OnInvalidImage, is_image_name
from spatialforge.runner.errors import InvalidImageError
from spatialforge.runner.images import (
    HEADER_BYTES,
    LONG_HEADER_BYTES,
    DecodedImage,
    check_size,
    decode_image,
    fit_pixels,
    heuristic_focal_px,
    probe_image,
)
from spatialforge.runner.inputs import expand
from spatialforge.runner.preview import encode_preview
from spatialforge.runner.stages.base import RunContext, StageResult, manifest_header
from spatialforge.runner.storage import ObjectInfo
from spatialforge.runner.storage.staging import PublishFenced, StagedOutput

PNG16_MAX = 65535
# Images are decoded at least this large (when they are) whatever output.maxPixels says, so
# that the model's input (518 px on the short side) is never upsampled from a tiny decode.
MIN_DECODE_PIXELS = 1024 * 1024


@dataclass(kw_only=True)
class _Item:
    info: ObjectInfo
    stem: str
    image: DecodedImage | None = None
    pixels: np.ndarray | None = None
    out_size: tuple[int, int] = (0, 0)  # (height, width) of the depth map
    error: InvalidImageError | None = None


def quantize_png16(depth: np.ndarray, *, scale: float | None) -> tuple[np.ndarray, float]:
    """The uint16 values of the depth PNG and the scale that maps a value back to depth units.

    `scale`: metres per step (metric); None scales per image so the maximum is 65535 (relative).
    """
    if scale is None:
        peak = float(depth.max()) if depth.size else 0.0
        scale = peak / PNG16_MAX if peak > 0 else 1.0
    work = np.divide(depth, scale, dtype=np.float32)  # one temporary, rounded and clipped in place
    np.rint(work, out=work)
    np.clip(work, 0, PNG16_MAX, out=work)
    return work.astype(np.uint16), scale


def encode_png16(depth: np.ndarray, *, scale: float | None) -> tuple[bytes, float]:
    """uint16 PNG bytes and the scale that maps a stored value back to depth units (see quantize_png16)."""
    import cv2

    values, scale = quantize_png16(depth, scale=scale)
    # RLE strategy: same size as the default filter on depth maps, half the encode time
    ok, buf = cv2.imencode(".png", values, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes(), scale


def encode_npy(depth: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, depth.astype(np.float32, copy=False), allow_pickle=False)
    return buf.getvalue()


def focal_for(spec: DepthBatchSpec, image: DecodedImage, out_w: int, out_h: int) -> dict[str, Any]:
    """Intrinsics of the depth map (out_w x out_h): spec, else EXIF, else 0.9 x max(w, h).

    Spec and EXIF values are in the input's pixels and scale with the depth map.
    """
    sx, sy = out_w / image.width, out_h / image.height
    if spec.intrinsics is not None:
        k = spec.intrinsics
        cx = k.cx if k.cx is not None else image.width / 2
        cy = k.cy if k.cy is not None else image.height / 2
        return {"fx": k.fx * sx, "fy": k.fy * sy, "cx": cx * sx, "cy": cy * sy, "source": "spec"}
    if image.exif_focal_px:
        f = image.exif_focal_px
        return {"fx": f * sx, "fy": f * sy, "cx": out_w / 2, "cy": out_h / 2, "source": "exif"}
    f = heuristic_focal_px(out_w, out_h)
    return {"fx": f, "fy": f, "cx": out_w / 2, "cy": out_h / 2, "source": "heuristic"}


def _skip_record(item: _Item, exc: InvalidImageError) -> dict[str, str]:
    return {"input": item.info.uri, "reason": exc.reason}


class DepthStage:
    """Runs one shard of a DepthBatch."""

    kind = "DepthBatch"

    def __init__(self, *, io_workers: int | None = None) -> None:
        self.io_workers = io_workers or min(8, max(2, (os.cpu_count() or 2)))

    def run(self, spec: DepthBatchSpec, ctx: RunContext) -> StageResult:
        started = time.monotonic()
        progress = ctx.progress
        skip = spec.on_invalid_image == OnInvalidImage.skip
        progress.update(stage="listing")
        everything = expand(spec.inputs, ctx.store, accept=is_image_name)
        by_uri = {info.uri: (info, stem) for info, stem in everything}
        mine = shard_of(list(by_uri), ctx.shard_index, ctx.shard_count)
        items: list[_Item] = []
        skipped: list[dict[str, str]] = []
        candidates = [_Item(info=by_uri[uri][0], stem=by_uri[uri][1]) for uri in mine]
        with cf.ThreadPoolExecutor(self.io_workers, thread_name_prefix="sf-probe") as pool:
            refusals = list(pool.map(lambda item: self._precheck(spec, ctx, item), candidates))
        for item, refusal in zip(candidates, refusals, strict=True):  # fail fast, before loading a model
            if refusal is None:
                items.append(item)
            elif not skip:
                raise refusal
            else:
                skipped.append(_skip_record(item, refusal))
        out = StagedOutput(
            ctx.store(spec.output.uri),
            final_prefix=ctx.shard_prefix(spec.output.uri),
            staging_prefix=ctx.staging_prefix(spec.output.uri),
            attempt=ctx.attempt,
            claim_uri=ctx.claim_uri(spec.output.uri),
            publisher=ctx.publisher,
        )
        progress.update(stage="output")
        out.check()  # an unusable output location is invalid input, found before the model loads
        progress.update(done=len(skipped), total=len(mine), skipped=len(skipped), stage="loading")
        estimator = ctx.estimator(spec.model)
        out.clear_leftovers()
        progress.update(stage="depth")
        try:
            records, skipped_late, t_forward = self._depth(spec, ctx, estimator, items, out)
            skipped += skipped_late
            if not records and skipped:
                raise InvalidImageError(
                    f"no valid image in this shard: {len(skipped)} skipped, first {skipped[0]['reason']}"
                )
            seconds = time.monotonic() - started
            manifest = self._manifest(spec, ctx, estimator, records, skipped, seconds, t_forward)
            progress.update(stage="manifest")
            manifest_uri = out.publish(json.dumps(manifest, indent=2).encode())
        except PublishFenced as fenced:  # another publisher's result stands (storage/staging.py)
            out.discard()
            uri, theirs = out.published_by_holder(fenced)
            progress.update(done=len(mine), total=len(mine), skipped=len(skipped), stage="done")
            summary = theirs.get("summary") or {}
            return StageResult(manifest_uri=uri, items=len(theirs.get("images") or []),
                               seconds=float(summary.get("seconds") or 0), summary=summary)
        except BaseException:
            out.discard()
            raise
        progress.update(done=len(mine), total=len(mine), skipped=len(skipped), stage="done")
        return StageResult(manifest_uri=manifest_uri, items=len(records), seconds=seconds, summary=manifest["summary"])

    @staticmethod
    def _precheck(spec: DepthBatchSpec, ctx: RunContext, item: _Item) -> InvalidImageError | None:
        """Why an image is refused by its size or header alone, or None.

        Milliseconds per image (a ranged read of the first bytes, no pixels), done for the whole
        shard before the model loads: found after it, the same refusal cost seconds and a GB.
        """
        uri, size = item.info.uri, item.info.size
        try:
            check_size(uri, size, max_bytes=spec.max_image_bytes)
            store = ctx.store(uri)
            head = store.read_head(uri, HEADER_BYTES)
            if not probe_image(uri, head, max_pixels=spec.max_image_pixels, complete=len(head) >= size):
                head = store.read_head(uri, LONG_HEADER_BYTES)  # a JPEG with large APP segments
                probe_image(uri, head, max_pixels=spec.max_image_pixels, complete=len(head) >= size)
        except InvalidImageError as exc:
            return exc
        return None

    def _depth(
        self, spec: DepthBatchSpec, ctx: RunContext, estimator: Any, items: list[_Item], out: StagedOutput
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]], float]:
        """Decode, infer and write every item; returns (records, skipped, forward seconds)."""
        progress = ctx.progress
        skip = spec.on_invalid_image == OnInvalidImage.skip
        scale = estimator.checkpoint.png16_scale
        decode_pixels = max(spec.output.max_pixels, MIN_DECODE_PIXELS)
        slots = threading.BoundedSemaphore(ctx.settings.decode_slots)

        def load(item: _Item) -> _Item:
            try:
                with slots:  # bounds the full-size buffers alive at once (runner/README.md)
                    data = ctx.store(item.info.uri).get(item.info.uri)
                    item.image = decode_image(
                        item.info.uri,
                        data,
                        max_pixels=spec.max_image_pixels,
                        max_bytes=spec.max_image_bytes,
                        target_pixels=decode_pixels,
                    )
                    del data
                item.pixels = estimator.preprocess(item.image.rgb)
            except InvalidImageError as exc:
                if not skip:
                    raise
                item.error = exc
                return item
            w, h = fit_pixels(item.image.width, item.image.height, spec.output.max_pixels)
            item.out_size = (h, w)
            item.image.rgb = np.empty((0, 0, 3), np.uint8)  # the pixels are in `item.pixels` now
            return item

        def write(item: _Item, depth: np.ndarray) -> dict[str, Any]:
            assert item.image is not None
            outputs: dict[str, Any] = {}
            png_scale = None
            if DepthFormat.png16 in spec.output.formats:
                png, png_scale = encode_png16(depth, scale=scale)
                uri, digest = out.put(f"{item.stem}.depth.png", png, content_type="image/png")
                outputs["png16"] = {"uri": uri, "sha256": digest, "bytes": len(png)}
            if DepthFormat.npy in spec.output.formats:
                npy = encode_npy(depth)
                uri, digest = out.put(f"{item.stem}.depth.npy", npy, content_type="application/x-npy")
                outputs["npy"] = {"uri": uri, "sha256": digest, "bytes": len(npy)}
            if DepthFormat.preview in spec.output.formats:
                jpg = encode_preview(depth, metric=estimator.checkpoint.metric)
                uri, digest = out.put(f"{item.stem}.preview.jpg", jpg, content_type="image/jpeg")
                outputs["preview"] = {"uri": uri, "sha256": digest, "bytes": len(jpg)}
            progress.advance()
            h, w = depth.shape
            return {
                "input": item.info.uri,
                "stem": item.stem,
                "width": w,
                "height": h,
                "inputWidth": item.image.width,
                "inputHeight": item.image.height,
                "inputMode": item.image.source_mode,
                "exifOrientation": item.image.orientation,
                "colorProfile": item.image.color_profile,
                "warnings": item.image.warnings,
                "outputs": outputs,
                "png16Scale": png_scale,
                "stats": {"min": float(depth.min()), "max": float(depth.max()), "mean": float(depth.mean())},
                "intrinsics": focal_for(spec, item.image, w, h),
            }

        records: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        t_forward = 0.0
        batch_size = estimator.batch_size(spec.batch_size)  # batchSize, capped when batching measured no faster here
        window = max(2 * batch_size, 2 * self.io_workers)
        with cf.ThreadPoolExecutor(self.io_workers, thread_name_prefix="sf-load") as loaders, cf.ThreadPoolExecutor(
            self.io_workers, thread_name_prefix="sf-write"
        ) as writers:
            pending: collections.deque[cf.Future[_Item]] = collections.deque()
            writes: list[cf.Future[dict[str, Any]]] = []
            queue = iter(items)
            for item in queue:  # prefetch a bounded window of preprocessed images
                pending.append(loaders.submit(load, item))
                if len(pending) >= window:
                    break
            while pending:
                batch: list[_Item] = []
                while pending and len(batch) < batch_size:
                    got = pending.popleft().result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.append(loaders.submit(load, nxt))
                    if got.error is not None:
                        skipped.append(_skip_record(got, got.error))
                        progress.advance(skipped=1)
                        continue
                    batch.append(got)
                if not batch:
                    continue
                t0 = time.monotonic()
                depths = estimator.predict([b.pixels for b in batch], [b.out_size for b in batch])
                t_forward += time.monotonic() - t0
                for b, depth in zip(batch, depths, strict=True):
                    b.pixels = None
                    writes.append(writers.submit(write, b, depth))
                writes = _drain_done(writes, records)
                while len(writes) > self.io_workers:  # back-pressure: depth maps in flight stay bounded
                    records.append(writes.pop(0).result())
            for fut in writes:
                records.append(fut.result())
        records.sort(key=lambda r: r["input"])
        return records, skipped, t_forward

    def _manifest(
        self,
        spec: DepthBatchSpec,
        ctx: RunContext,
        estimator: Any,
        records: list[dict[str, Any]],
        skipped: list[dict[str, str]],
        seconds: float,
        t_forward: float,
    ) -> dict[str, Any]:
        ckpt = estimator.checkpoint
        skipped = sorted(skipped, key=lambda r: r["input"])
        return {
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
            "png16": (
                {"scale": ckpt.png16_scale, "maxDepth": round(ckpt.png16_scale * PNG16_MAX, 3), "perImage": False}
                if ckpt.png16_scale
                else {"scale": None, "perImage": True}
            ),
            "maxPixels": spec.output.max_pixels,
            "images": records,
            "skipped": skipped,
            "summary": {
                "images": len(records),
                "skipped": len(skipped),
                "seconds": round(seconds, 3),
                "forwardSeconds": round(t_forward, 3),
                "imagesPerSecond": round(len(records) / seconds, 3) if seconds > 0 else None,
            },
        }


def _drain_done(writes: list[cf.Future[dict[str, Any]]], records: list[dict[str, Any]]) -> list[cf.Future[dict[str, Any]]]:
    """Collect finished writes (raising their errors early) and keep the rest."""
    keep = []
    for fut in writes:
        if fut.done():
            records.append(fut.result())
        else:
            keep.append(fut)
    return keep
