"""The client: httpx underneath, one method per endpoint, plus upload / wait / download."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from spatialforge import depth_formats

TERMINAL = {"Succeeded", "Failed", "Cancelled"}


class ApiError(RuntimeError):
    """An error response: status, code and message from the server's error body."""

    def __init__(self, status: int, code: str, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.response = status, code, message, response


def verify_webhook(payload: bytes, header: str, secret: str, tolerance: float = 300) -> dict[str, Any]:
    """Check a completion webhook's `SpatialForge-Signature` header; return the event."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    ts, sig = parts.get("t", ""), parts.get("v1", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
        raise ValueError("webhook timestamp missing or outside the tolerance")
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        raise ValueError("webhook signature does not match")
    return json.loads(payload)


class Client:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                 headers={"X-API-Key": api_key, "User-Agent": "spatialforge-client/0.1"})
        self.storage = httpx.Client(timeout=timeout * 4)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()
        self.storage.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            self._raise(response)
        return response.json() if response.content else None

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            err = response.json()["error"]
            code, message = err.get("code", "error"), err.get("message", response.text)
        except (ValueError, KeyError, TypeError):
            code, message = "error", response.text[:500]
        raise ApiError(response.status_code, code, message, response)

    # --- endpoints ------------------------------------------------------------------------
    def submit_depth(self, spec: dict[str, Any], *, idempotency_key: str | None = None,
                     webhook_url: str | None = None) -> dict[str, Any]:
        return self._submit("/v1/depth-batches", spec, idempotency_key, webhook_url)

    def submit_reconstruction(self, spec: dict[str, Any], *, idempotency_key: str | None = None,
                              webhook_url: str | None = None) -> dict[str, Any]:
        return self._submit("/v1/reconstructions", spec, idempotency_key, webhook_url)

    def _submit(self, path: str, spec: dict[str, Any], key: str | None, webhook_url: str | None) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        params = {"webhook_url": webhook_url} if webhook_url else {}
        return self._call("POST", path, json=spec, headers=headers, params=params)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, *, kind: str | None = None, phase: str | None = None, limit: int = 50,
             offset: int = 0) -> dict[str, Any]:
        params = {k: v for k, v in {"kind": kind, "phase": phase, "limit": limit, "offset": offset}.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def results(self, job_id: str, *, expires_in: int | None = None) -> dict[str, Any]:
        params = {"expires_in": expires_in} if expires_in else {}
        return self._call("GET", f"/v1/jobs/{job_id}/results", params=params)

    def usage(self) -> dict[str, Any]:
        return self._call("GET", "/v1/usage")

    def plan(self) -> dict[str, Any]:
        return self._call("GET", "/v1/plan")

    def webhook_secret(self) -> str:
        return self._call("GET", "/v1/webhooks/secret")["secret"]

    def results_prefix(self) -> str:
        """The tenant's result prefix, derived from an upload prefix's layout."""
        prefix = self._call("POST", "/v1/uploads", json={"files": [{"name": "probe"}]})["prefix"]
        return prefix.split("/inputs/")[0] + "/results"

    # --- synchronous depth and measurement (a warm DepthPool; one unit per image) -----------
    @staticmethod
    def _image_form(image: str | Path | bytes, fields: dict[str, Any]) -> dict[str, Any]:
        """httpx arguments for an image given as bytes, a local path, or an s3:// URI of your prefix."""
        data = {k: str(v) for k, v in fields.items() if v is not None}
        if isinstance(image, (bytes, bytearray)):
            return {"data": data, "files": {"image": ("image", bytes(image))}}
        if isinstance(image, str) and image.startswith("s3://"):
            return {"data": {**data, "uri": image}}
        path = Path(image)
        return {"data": data, "files": {"image": (path.name, path.read_bytes())}}

    def depth(self, image: str | Path | bytes, *, model: str | None = None, preview: bool = True,
              **intrinsics: float) -> dict[str, Any]:
        """Depth now: metadata and signed URLs of the 16-bit PNG (`depth_url`) and preview (`preview_url`)."""
        return self._call("POST", "/v1/depth", **self._image_form(
            image, {"model": model, "preview": str(preview).lower(), **intrinsics}))

    def depth_png(self, image: str | Path | bytes, *, model: str | None = None,
                  **intrinsics: float) -> tuple[bytes, dict[str, Any]]:
        """Depth now, inline: the 16-bit PNG and its metadata (from the X-Depth-Metadata header)."""
        response = self._raw("POST", "/v1/depth", headers={"Accept": "image/png"},
                             **self._image_form(image, {"model": model, **intrinsics}))
        return response.content, json.loads(response.headers.get("X-Depth-Metadata") or "{}")

    def depth_map(self, image: str | Path | bytes, *, dtype: str = "float32", model: str | None = None,
                  **intrinsics: float) -> tuple[Any, dict[str, Any]]:
        """Depth now, as a numpy array (needs numpy) in the metadata's `units`, and the metadata.

        dtype "float32": the model's values (an NPY answer); "float16": half the bytes (raw float16).
        """
        import io

        import numpy as np

        formats = {"float32": "npy", "float16": "float16"}
        if dtype not in formats:
            raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(formats)}")
        fmt = depth_formats.BY_NAME[formats[dtype]]
        response = self._raw("POST", "/v1/depth", headers={"Accept": fmt.media_type},
                             **self._image_form(image, {"model": model, **intrinsics}))
        meta = json.loads(response.headers.get("X-Depth-Metadata") or "{}")
        if fmt.name == "npy":
            return np.load(io.BytesIO(response.content), allow_pickle=False), meta
        shape = tuple(int(n) for n in response.headers[depth_formats.SHAPE_HEADER].split(","))
        return np.frombuffer(response.content, dtype=response.headers[depth_formats.DTYPE_HEADER]).reshape(shape), meta

    def measure(self, image: str | Path | bytes, start: tuple[float, float], end: tuple[float, float], *,
                reference: str | None = None, box: tuple[float, float, float, float] | None = None,
                model: str | None = None, **intrinsics: float) -> dict[str, Any]:
        """Distance in metres between two pixels, its 95 % interval (`interval_m`) and focal source."""
        fields = {"from": f"{start[0]},{start[1]}", "to": f"{end[0]},{end[1]}", "reference": reference,
                  "box": ",".join(str(v) for v in box) if box else None, "model": model, **intrinsics}
        return self._call("POST", "/v1/measure", **self._image_form(image, fields))

    def fetch(self, url: str) -> bytes:
        """One signed URL's object."""
        r = self.storage.get(url)
        if r.status_code >= 300:
            raise ApiError(r.status_code, "download_failed", r.text[:300], r)
        return r.content

    def _raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            self._raise(response)
        return response

    # --- files ----------------------------------------------------------------------------
    def upload(self, paths: Iterable[str | Path], *, progress: Callable[[int], None] | None = None) -> str:
        """Send each file through its signed upload form; returns the upload prefix (a
        DepthBatch input). Files over the server's `max_bytes` are refused before sending."""
        files = [Path(p) for p in paths]
        names = [{"name": f.name} for f in files]
        plan = self._call("POST", "/v1/uploads", json={"files": names})
        limit = plan.get("max_bytes")
        for f in files:
            if limit is not None and f.stat().st_size > limit:
                raise ApiError(413, "upload_too_large", f"{f} is {f.stat().st_size} bytes; uploads take at most {limit}")
        for f, target in zip(files, plan["files"], strict=True):
            with f.open("rb") as fh:
                if target.get("method", "PUT") == "POST":  # a presigned POST form: fields, then the file
                    r = self.storage.post(target["url"], data=target.get("fields") or {},
                                          files={"file": (f.name, fh)}, headers=target.get("headers") or {})
                else:  # servers before the upload forms signed PUT URLs
                    r = self.storage.put(target["url"], content=fh.read(), headers=target.get("headers") or {})
            if r.status_code >= 300:
                raise ApiError(r.status_code, "upload_failed", r.text[:300], r)
            if progress:
                progress(1)
        return plan["prefix"]

    def uploads(self) -> dict[str, Any]:
        """The tenant's uploads with size and `expires_at`."""
        return self._call("GET", "/v1/uploads")

    def delete_results(self, job_id: str) -> dict[str, Any]:
        """Delete a finished job's outputs now; its results then answer 410."""
        return self._call("DELETE", f"/v1/jobs/{job_id}/results")

    def wait(self, job_id: str, *, interval: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job reaches a terminal phase; returns its last state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["phase"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['phase']} after {timeout}s")
            time.sleep(interval)

    def download(self, job_id: str, dest: str | Path) -> list[Path]:
        """Fetch every result file through its signed URL into `dest`."""
        out = []
        root = Path(dest)
        for f in self.results(job_id)["files"]:
            target = (root / f["key"]).resolve()
            if root.resolve() not in target.parents:
                raise ApiError(0, "unsafe_key", f"result key {f['key']!r} escapes {root}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.storage.stream("GET", f["url"]) as r:
                if r.status_code >= 300:
                    raise ApiError(r.status_code, "download_failed", r.read()[:300].decode(errors="replace"), r)
                with target.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
            out.append(target)
        return out
