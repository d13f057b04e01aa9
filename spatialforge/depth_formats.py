"""The answers of a synchronous depth request (`POST /v1/depth`), in one table for the depth
server (runner/serve/), the front end (apiserver/) and the client, which import none of each
other: format names, media types, the choice by `Accept`, and the headers of a raw map.

- json: metadata; the 16-bit PNG and preview as base64 (server) or signed URLs (front end);
- png: the 16-bit PNG (value x X-Depth-Scale = depth), lossless for that quantisation;
- preview: the colour JPEG;
- npy: the depth map itself, float32 `.npy` (no quantisation);
- float16: the depth map as raw little-endian float16, row-major, X-Depth-Shape `H,W`.

Plain Python (no numpy) so the front end and the client can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthFormat:
    name: str  # the `format` query value
    media_type: str
    inline: bool  # the body is the map (or image) itself, described by X-Depth-* headers


FORMATS: tuple[DepthFormat, ...] = (  # the order breaks ties in `negotiate` (json first: the default)
    DepthFormat("json", "application/json", inline=False),
    DepthFormat("png", "image/png", inline=True),
    DepthFormat("preview", "image/jpeg", inline=True),
    DepthFormat("npy", "application/x-npy", inline=True),
    DepthFormat("float16", "application/octet-stream", inline=True),
)
BY_NAME = {f.name: f for f in FORMATS}
NAMES = tuple(BY_NAME)
DEFAULT = "json"

SHAPE_HEADER = "X-Depth-Shape"  # "H,W" of a raw answer (npy carries its own header too)
DTYPE_HEADER = "X-Depth-Dtype"  # numpy dtype string of a raw answer
DTYPES = {"npy": "<f4", "float16": "<f2"}
# Depth-server response headers the front end passes on with an inline answer.
PASSED_HEADERS = ("x-depth-model", "x-depth-backend", "x-depth-units", "x-depth-scale", "x-depth-width",
                  "x-depth-height", "x-focal-length-px", "x-focal-source", "x-depth-metadata",
                  SHAPE_HEADER.lower(), DTYPE_HEADER.lower())


class NotAcceptable(ValueError):
    """No supported format is acceptable to the client (HTTP 406); the message lists them."""

    def __init__(self, accept: str) -> None:
        self.accept = accept
        self.supported = [f.media_type for f in FORMATS]
        super().__init__(f"Accept: {accept[:200]!r} matches none of the supported answers: "
                         f"{', '.join(self.supported)} (or ?format={'|'.join(NAMES)})")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each media range of an Accept header; malformed ones are skipped."""
    out = []
    for item in accept.split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        main, slash, sub = kind.lower().partition("/")
        if not slash or not main or not sub:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = -1.0
        if q >= 0:
            out.append((main, sub, q))
    return out


def negotiate(accept: str | None) -> str:
    """The format name for an Accept header (RFC 9110 §12.5.1): the most preferred acceptable
    format (q, then the range's specificity, then its place in the header, then FORMATS order).
    No header, or one with no media range in it: the default. Raises NotAcceptable."""
    ranges = _ranges(accept or "")
    if not ranges:
        return DEFAULT
    best: tuple[float, int, int, int] | None = None
    chosen = DEFAULT
    for order, fmt in enumerate(FORMATS):
        main, sub = fmt.media_type.split("/")
        match: tuple[int, int, float] | None = None  # (specificity, -position, q) of the most specific range
        for position, (r_main, r_sub, q) in enumerate(ranges):
            specificity = 2 if (r_main, r_sub) == (main, sub) else 1 if (r_main == main and r_sub == "*") \
                else 0 if (r_main, r_sub) == ("*", "*") else -1
            if specificity >= 0 and (match is None or specificity > match[0]):
                match = (specificity, -position, q)
        if match is None or match[2] <= 0:
            continue
        key = (match[2], match[0], match[1], -order)
        if best is None or key > best:
            best, chosen = key, fmt.name
    if best is None:
        raise NotAcceptable(accept or "")
    return chosen


def choose(format: str | None, accept: str | None) -> str:
    """`format` (a query parameter) when given, else the Accept header's choice.

    Raises ValueError for an unknown `format`, NotAcceptable (a ValueError) when Accept allows
    no supported answer.
    """
    if format:
        name = format.strip().lower()
        if name not in BY_NAME:
            raise ValueError(f"format={format[:50]!r}: expected one of {', '.join(NAMES)}")
        return name
    return negotiate(accept)
