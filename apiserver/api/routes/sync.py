"""Synchronous depth and measurement on one image, served by a warm DepthPool.

The image is a multipart file part `image`, or `uri`: an object of your own prefix (an upload).
Both cost one unit, under the same plan, licence, quota and rate rules as jobs; a saturated
pool answers 503 with Retry-After and charges nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile

from spatialforge import depth_formats
from spatialforge.apiserver import errors
from spatialforge.apiserver.api.deps import ApiKeyDep, SettingsDep, SyncDep
from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.schemas import ErrorPublic
from spatialforge.apiserver.services.sync import SyncAnswer, SyncService

router = APIRouter(tags=["depth"])
PATHS = ("/v1/depth", "/v1/measure")
POINT = r"^\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*$"
BOX = r"^\s*-?\d+(\.\d+)?(\s*,\s*-?\d+(\.\d+)?){3}\s*$"
ERRORS = {401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}, 404: {"model": ErrorPublic},
          406: {"model": ErrorPublic, "description": "`Accept` allows none of the answers (listed in `supported`)"},
          413: {"model": ErrorPublic}, 422: {"model": ErrorPublic},
          429: {"model": ErrorPublic, "description": "per-minute rate or the month's units"},
          503: {"model": ErrorPublic, "description": "the pool is saturated or has no ready server (Retry-After); "
                                                     "nothing charged"}}

ImagePart = Annotated[UploadFile | None, File(description="The image (JPEG, PNG, WebP, ...)")]
UriField = Annotated[str | None, Form(max_length=2048, description="Instead of `image`: s3://... an object of your prefix")]
ModelField = Annotated[Literal["small", "base", "large"] | None, Form(description="Model size (default: the first pool's)")]
Focal = Annotated[float | None, Form(gt=0, le=1e6, description="Intrinsics in the image's pixels")]
Centre = Annotated[float | None, Form(ge=-1e6, le=1e6)]


def body_limit(settings: Settings) -> int:
    """The request body these routes take: the image cap plus room for the multipart fields."""
    return settings.sync_max_image_bytes + 64 * 1024


async def _image(sync: SyncService, settings: Settings, tenant: str, image: UploadFile | None,
                 uri: str | None) -> tuple[str, bytes]:
    if (image is None) == (uri is None):
        raise errors.InvalidRequest("send exactly one of `image` (a file part) and `uri`", details={"fields": [
            {"field": "image", "message": "exactly one of image and uri"}]})
    if uri is not None:
        return await sync.read_object(tenant, uri)
    assert image is not None
    cap = settings.sync_max_image_bytes
    data = await image.read(cap + 1)
    if len(data) > cap:
        raise errors.PayloadTooLarge(f"images are limited to {cap} bytes here (use a DepthBatch for larger ones)",
                                     details={"limit": cap})
    return (image.filename or "upload").rsplit("/", 1)[-1][:200] or "upload", data


def _send(answer: SyncAnswer, response: Response) -> Response | dict:
    if answer.content is not None:
        return Response(answer.content, media_type=answer.media_type, headers=answer.headers)
    response.headers.update(answer.headers)
    return answer.body or {}


@router.post("/v1/depth", response_model=None, responses={**ERRORS, 200: {
    "content": {f.media_type: {} for f in depth_formats.FORMATS if f.inline},
    "description": "By Accept (or `format`): JSON (metadata and signed URLs); image/png the 16-bit PNG (value x "
                   "X-Depth-Scale = depth); image/jpeg the preview; application/x-npy the float32 map as .npy; "
                   "application/octet-stream the map as raw little-endian float16 (X-Depth-Shape `H,W`, "
                   "X-Depth-Dtype `<f2`). Inline answers carry the metadata in X-Depth-* headers."}})
async def depth(principal: ApiKeyDep, sync: SyncDep, settings: SettingsDep, response: Response,
                image: ImagePart = None, uri: UriField = None, model: ModelField = None,
                preview: Annotated[bool, Form(description="JSON: also write the colour preview")] = True,
                fx: Focal = None, fy: Focal = None, cx: Centre = None, cy: Centre = None,
                format: Annotated[Literal[depth_formats.NAMES] | None, Query(  # type: ignore[valid-type]
                    description="Overrides Accept")] = None,
                accept: Annotated[str, Header()] = "") -> Response | dict:
    """Depth for one image, now: metadata (size, model, units, scale, focal length used), the
    16-bit PNG and a colour preview JPEG, or the map itself (NPY, float16). One unit."""
    try:
        fmt = depth_formats.choose(format, accept)
    except depth_formats.NotAcceptable as exc:  # before the image is read or a unit charged
        raise errors.NotAcceptable(str(exc), details={"supported": exc.supported}) from None
    name, data = await _image(sync, settings, principal.tenant, image, uri)
    intrinsics = {k: v for k, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)) if v is not None}
    if intrinsics and "fx" not in intrinsics:
        raise errors.InvalidRequest("fy, cx and cy need fx", details={"fields": [{"field": "fx", "message": "required"}]})
    answer = await sync.depth(principal.tenant, name, data, model=model, fmt=fmt, preview=preview,
                              intrinsics=intrinsics)
    return _send(answer, response)


@router.post("/v1/measure", response_model=None, responses=ERRORS)
async def measure(principal: ApiKeyDep, sync: SyncDep, settings: SettingsDep, response: Response,
                  from_: Annotated[str, Form(alias="from", pattern=POINT, description="X,Y in the image's pixels")],
                  to: Annotated[str, Form(pattern=POINT, description="X,Y in the image's pixels")],
                  image: ImagePart = None, uri: UriField = None, model: ModelField = None,
                  reference: Annotated[Literal["a4", "letter", "credit_card"] | None, Form(
                      description="An object of known size in the photo")] = None,
                  box: Annotated[str | None, Form(pattern=BOX, description="X0,Y0,X1,Y1: the reference's box")] = None,
                  fx: Focal = None, fy: Focal = None, cx: Centre = None, cy: Centre = None) -> dict:
    """Distance in metres between two pixels of one photo, with its 95 % interval and where
    the focal length came from (request, EXIF, reference object or the fallback). One unit."""
    if (reference is None) != (box is None):
        raise errors.InvalidRequest("reference and box go together", details={"fields": [
            {"field": "box" if box is None else "reference", "message": "reference and box go together"}]})
    name, data = await _image(sync, settings, principal.tenant, image, uri)
    params = {"from": from_.replace(" ", ""), "to": to.replace(" ", "")}
    if reference is not None and box is not None:
        params.update(reference=reference, box=box.replace(" ", ""))
    params.update({k: repr(v) for k, v in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)) if v is not None})
    answer = await sync.measure(principal.tenant, name, data, model=model, params=params)
    response.headers.update(answer.headers)
    return answer.body or {}
