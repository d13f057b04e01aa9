"""Point-to-point distance on one photo from its metric depth map, with a 95 % interval.

The two pixels are lifted to 3D with the pinhole model, X = (u - cx) Z / f, Y = (v - cy) Z / f,
and the distance is |P1 - P2|. Every input that is uncertain is sampled (Monte Carlo, 8 000
draws, fixed seed so one request always gives one answer) and the interval is the 2.5-97.5 %
range of the sampled distances:

- **depth at each point**: a robust local plane (inverse depth is affine in the pixel coordinates
  on any plane) fitted in a window around the point with Tukey weights; its spread is the
  residual MAD, plus the gap to the other surface when the window straddles an edge, plus the
  depth model's per-pixel error (`DepthErrorModel.pixel_rel_sigma`, not visible in one window
  because it is smooth);
- **depth scale**: the depth model's per-image scale error (`DepthErrorModel.scale_rel_sigma`);
- **focal length**: its source's relative uncertainty (`FOCAL_REL_SIGMA`: spec, EXIF 35 mm
  equivalent, EXIF focal length x focal-plane resolution, the fallback);
- **principal point**: 1 % of the image size when it is not given;
- **reference object** (A4 sheet, credit card, or any known size, with its box): it measures
  Z/f at its own depth, which updates depth scale and focal length together (a Gaussian update
  in log space), so a poor focal length or a scaled depth map is corrected by whichever of the
  two was less certain.

Pixels: (x, y) in the depth map's pixels, pixel centres at integer coordinates; the focal
length must be in the same pixels (`FocalEstimate.scaled`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from spatialforge.runner.errors import MeasurementError

#: Relative 1-sigma uncertainty of a focal length by where it came from.
FOCAL_REL_SIGMA: dict[str, float] = {
    "spec": 0.005,  # calibrated intrinsics given by the caller
    "exif-35mm": 0.03,  # FocalLengthIn35mmFilm is rounded to 1 mm (about 2 % at 26 mm) and crops vary
    "exif-focal-plane": 0.02,  # FocalLength x FocalPlaneXResolution: exact lens, sensor crop unknown
    "fallback": 0.12,  # no metadata: a phone's main camera (26 mm equivalent; 22-31 mm at 95 %)
}
FALLBACK_FOCAL_35MM = 26.0  # mm, 35 mm-equivalent focal length of most phones' main camera (2019-)

#: Known sizes (metres, either orientation) of common reference objects.
REFERENCE_SIZES: dict[str, tuple[float, float]] = {
    "a4": (0.210, 0.297),
    "letter": (0.2159, 0.2794),
    "credit_card": (0.08560, 0.05398),  # ISO/IEC 7810 ID-1
}

_SAMPLES = 8000  # the 2.5 % quantile to about +-0.2 % in probability
_SAMPLES_PER_SOURCE = 2000  # for the variance shares


@dataclass(frozen=True, kw_only=True)
class FocalEstimate:
    """A focal length in pixels, its relative 1-sigma uncertainty, and where it came from."""

    focal_px: float
    rel_sigma: float
    source: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.focal_px) and self.focal_px > 0):
            raise MeasurementError(f"focal length must be a positive number of pixels, got {self.focal_px}")
        if not (math.isfinite(self.rel_sigma) and 0 <= self.rel_sigma < 1):
            raise MeasurementError(f"focal rel_sigma must be in [0, 1), got {self.rel_sigma}")

    @classmethod
    def from_source(cls, focal_px: float, source: str) -> FocalEstimate:
        if source not in FOCAL_REL_SIGMA:
            raise MeasurementError(f"unknown focal source {source!r}; one of {sorted(FOCAL_REL_SIGMA)}")
        return cls(focal_px=float(focal_px), rel_sigma=FOCAL_REL_SIGMA[source], source=source)

    @classmethod
    def fallback(cls, width: int, height: int) -> FocalEstimate:
        """No metadata: a 26 mm-equivalent lens (35 mm convention as EXIF: 36 mm across the long side)."""
        return cls.from_source(FALLBACK_FOCAL_35MM / 36.0 * max(width, height), "fallback")

    def scaled(self, factor: float) -> FocalEstimate:
        """The same lens for an image resized by `factor` (depth map width / photo width)."""
        return replace(self, focal_px=self.focal_px * factor)


@dataclass(frozen=True, kw_only=True)
class ReferenceObject:
    """An object of known size in the photo, and its box (x0, y0, x1, y1) in depth-map pixels.

    The box should hug the object, seen roughly face-on: a tilted object looks shorter along
    the tilt, so the less foreshortened side is trusted and the disagreement widens the interval.
    """

    size_m: tuple[float, float]
    box: tuple[float, float, float, float]
    name: str = "custom"
    box_sigma_px: float = 1.0  # 1-sigma error of each box edge

    @classmethod
    def named(cls, name: str, box: tuple[float, float, float, float], **kw: float) -> ReferenceObject:
        key = name.lower().replace("-", "_").replace(" ", "_")
        if key not in REFERENCE_SIZES:
            raise MeasurementError(f"unknown reference object {name!r}; one of {sorted(REFERENCE_SIZES)} or give size_m")
        return cls(size_m=REFERENCE_SIZES[key], box=tuple(float(v) for v in box), name=key, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class DepthErrorModel:
    """How wrong the depth map may be beyond what a window shows (relative 1-sigma).

    The default is a metric monocular model as issue 12 characterises it: a per-image scale
    error within +-5 % (uniform: sigma 2.9 %) and smooth noise of 1 % of depth.
    """

    scale_rel_sigma: float = 0.03
    pixel_rel_sigma: float = 0.01


EXACT_DEPTH = DepthErrorModel(scale_rel_sigma=0.0, pixel_rel_sigma=0.0)


@dataclass(frozen=True, kw_only=True)
class PointDepth:
    """The depth at a pixel: the local plane's value and its 1-sigma uncertainty."""

    depth_m: float
    sigma_m: float
    window_sigma_m: float
    edge: bool  # the window straddles a depth edge


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """A distance with its 95 % interval and where the uncertainty comes from."""

    distance_m: float
    interval_m: tuple[float, float]
    sigma_m: float
    points_m: tuple[tuple[float, float, float], tuple[float, float, float]]
    depths: tuple[PointDepth, PointDepth]
    focal: FocalEstimate  # as used (after a reference object, if any)
    depth_scale: float  # applied to the depth map (1 unless a reference object corrected it)
    depth_scale_rel_sigma: float
    reference: str | None = None
    contributions: dict[str, float] = field(default_factory=dict)  # share of the variance per source

    def as_dict(self) -> dict:
        out = asdict(self)
        out["interval_m"] = list(self.interval_m)
        out["points_m"] = [list(p) for p in self.points_m]
        out["depths"] = [asdict(d) for d in self.depths]
        return out


def to_depth_pixels(point: tuple[float, float], image_size: tuple[int, int], depth_size: tuple[int, int]) -> tuple[float, float]:
    """A pixel (x, y) of a width x height photo -> the same spot in a depth map of another size
    (pixel centres at integer coordinates in both)."""
    (iw, ih), (dw, dh) = image_size, depth_size
    return ((point[0] + 0.5) * dw / iw - 0.5, (point[1] + 0.5) * dh / ih - 0.5)


def focal_from_exif(image: object, width: int | None = None, height: int | None = None) -> FocalEstimate | None:
    """The focal length (pixels of a width x height image) from a photo's EXIF, or None.

    `image`: a path, bytes, or an open PIL image. FocalLengthIn35mmFilm is preferred, else
    FocalLength x FocalPlaneXResolution; the value comes from `images.exif_focal_px`, the rule
    the batch runner uses. Size defaults to the image's upright size.
    """
    from PIL import Image

    from spatialforge.runner.images import _EXIF_IFD, _FOCAL_35MM, exif_focal_px

    if isinstance(image, (bytes, bytearray)):
        img = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, Path)):
        img = Image.open(image)
    else:
        img = image  # type: ignore[assignment]
    exif = img.getexif()
    if width is None or height is None:
        w, h = img.size
        if int(exif.get(0x0112, 1) or 1) in (5, 6, 7, 8):  # rotated by 90 degrees when shown upright
            w, h = h, w
        width, height = width or w, height or h
    focal = exif_focal_px(exif, width, height)
    if not focal:
        return None
    try:
        has_35 = float(exif.get_ifd(_EXIF_IFD).get(_FOCAL_35MM) or 0) > 0
    except Exception:  # noqa: BLE001 - exif_focal_px already read it; treat as the plane rule
        has_35 = False
    return FocalEstimate.from_source(focal, "exif-35mm" if has_35 else "exif-focal-plane")


def depth_at(depth: np.ndarray, x: float, y: float, *, radius: int | None = None) -> PointDepth:
    """Robust depth at sub-pixel (x, y): Tukey-weighted affine fit of inverse depth in a window."""
    h, w = depth.shape
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise MeasurementError(f"point ({x:.1f}, {y:.1f}) is outside the {w}x{h} depth map")
    r = radius if radius is not None else max(3, round(0.006 * max(h, w)))
    xi, yi = int(round(x)), int(round(y))
    x0, x1, y0, y1 = max(0, xi - r), min(w, xi + r + 1), max(0, yi - r), min(h, yi + r + 1)
    win = depth[y0:y1, x0:x1].astype(np.float64)
    vv, uu = np.mgrid[y0:y1, x0:x1]
    ok = np.isfinite(win) & (win > 0)
    if ok.sum() < 6:
        raise MeasurementError(f"no valid depth around ({x:.1f}, {y:.1f})")
    z = win[ok]
    du, dv = uu[ok] - x, vv[ok] - y
    centre = ok & (np.abs(vv - yi) <= 1) & (np.abs(uu - xi) <= 1)
    z_c = float(np.median(win[centre])) if centre.any() else float(np.median(z))
    spatial = np.exp(-(du**2 + dv**2) / (2 * (0.6 * r) ** 2))
    A = np.column_stack([np.ones_like(du), du, dv])
    q = 1.0 / z
    res = z - z_c
    scale = max(1.4826 * float(np.median(np.abs(res))), 1e-4 * z_c)
    coef = np.array([1.0 / z_c, 0.0, 0.0])
    for _ in range(6):  # IRLS with Tukey's biweight, started on the centre pixels' surface
        wt = spatial * np.clip(1 - (res / (4.685 * scale)) ** 2, 0, None) ** 2
        if (wt > 0).sum() < 3:
            break
        sw = np.sqrt(wt)
        coef, *_ = np.linalg.lstsq(A * sw[:, None], q * sw, rcond=None)
        res = z - 1.0 / np.clip(A @ coef, 1e-9, None)
        inl = wt > 0
        scale = max(1.4826 * float(np.median(np.abs(res[inl]))), 1e-6 * z_c)
    z_hat = 1.0 / max(float(coef[0]), 1e-9)
    inliers = np.abs(res) <= 3 * scale
    window_sigma = 1.4826 * float(np.median(np.abs(res[inliers]))) if inliers.any() else float(np.std(z))
    frac_out = 1.0 - float(inliers.mean())
    edge = frac_out > 0.1
    sigma2 = window_sigma**2
    if edge:  # the point may belong to the other surface: widen by the gap, weighted by its share
        sigma2 += frac_out * float(np.median(np.abs(res[~inliers]))) ** 2
    if not math.isfinite(z_hat) or z_hat <= 0:
        raise MeasurementError(f"no valid depth around ({x:.1f}, {y:.1f})")
    return PointDepth(depth_m=z_hat, sigma_m=math.sqrt(sigma2), window_sigma_m=window_sigma, edge=edge)


def _reference_observation(depth: np.ndarray, ref: ReferenceObject, pixel_rel_sigma: float) -> tuple[float, float]:
    """log(Z/f) the reference implies at its own depth reading, and its 1-sigma (log units),
    as an observation of log(depth scale) - log(focal) minus log(depth read at the object)."""
    h, w = depth.shape
    x0, y0, x1, y1 = ref.box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise MeasurementError(f"reference box {ref.box} is not inside the {w}x{h} depth map")
    bw, bh = x1 - x0, y1 - y0
    if min(bw, bh) < 8:
        raise MeasurementError(f"reference box {ref.box} is too small (under 8 pixels a side)")
    long_m, short_m = max(ref.size_m), min(ref.size_m)
    if min(ref.size_m) <= 0:
        raise MeasurementError(f"reference size must be positive, got {ref.size_m}")
    (along_x, along_y) = (long_m, short_m) if bw >= bh else (short_m, long_m)
    log_rx, log_ry = math.log(along_x / bw), math.log(along_y / bh)
    log_r = min(log_rx, log_ry)  # a tilt shortens one side in the image: trust the other
    mx, my = 0.15 * bw, 0.15 * bh
    inner = depth[int(y0 + my):int(math.ceil(y1 - my)), int(x0 + mx):int(math.ceil(x1 - mx))].astype(np.float64)
    vals = inner[np.isfinite(inner) & (inner > 0)]
    if len(vals) < 6:
        raise MeasurementError("no valid depth inside the reference box")
    z_ref = float(np.median(vals))
    spread = 1.4826 * float(np.median(np.abs(vals - z_ref))) / z_ref
    box_rel = math.sqrt(2) * ref.box_sigma_px / min(bw, bh)
    disagreement = abs(log_rx - log_ry) / 2
    sigma = math.sqrt(box_rel**2 + disagreement**2 + spread**2 / max(1.0, len(vals) / 100) + pixel_rel_sigma**2)
    return log_r - math.log(z_ref), sigma


def measure(
    depth: np.ndarray,
    p1: tuple[float, float],
    p2: tuple[float, float],
    focal: FocalEstimate,
    *,
    principal_point: tuple[float, float] | None = None,
    reference: ReferenceObject | None = None,
    depth_error: DepthErrorModel = DepthErrorModel(),
    seed: int = 0,
) -> Measurement:
    """Distance in metres between pixels p1 and p2 of a metric depth map, with its 95 % interval."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or min(depth.shape) < 8:
        raise MeasurementError(f"depth must be an H x W map of at least 8x8, got shape {depth.shape}")
    h, w = depth.shape
    pts = []
    for name, p in (("from", p1), ("to", p2)):
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise MeasurementError(f"point {name!r} must be (x, y), got {p!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise MeasurementError(f"point {name!r} must be finite, got {p!r}")
        pts.append((x, y))
    d1, d2 = depth_at(depth, *pts[0]), depth_at(depth, *pts[1])

    if principal_point is None:
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        c_sigma = 0.01 * np.array([w, h], dtype=np.float64)
    else:
        c = np.asarray(principal_point, dtype=np.float64)
        c_sigma = np.zeros(2)

    # log depth scale a and log focal b: prior, then the reference object's observation of a - b
    mean = np.array([0.0, math.log(focal.focal_px)])
    cov = np.diag([depth_error.scale_rel_sigma**2, focal.rel_sigma**2])
    if reference is not None:
        y_obs, s_obs = _reference_observation(depth, reference, depth_error.pixel_rel_sigma)
        H = np.array([1.0, -1.0])
        S = float(H @ cov @ H) + s_obs**2
        K = cov @ H / S
        mean = mean + K * (y_obs - float(H @ mean))
        cov = cov - np.outer(K, H @ cov)

    rng = np.random.default_rng(seed)
    z_sig = [math.hypot(d.sigma_m, depth_error.pixel_rel_sigma * d.depth_m) for d in (d1, d2)]

    def draw(active: set[str], n: int = _SAMPLES) -> np.ndarray:
        std = rng.standard_normal((n, 6))
        ab = np.tile(mean, (n, 1))
        if "scale+focal" in active:
            ab = ab + std[:, :2] @ np.linalg.cholesky(cov + 1e-18 * np.eye(2)).T
        k, f = np.exp(ab[:, 0]), np.exp(ab[:, 1])
        cc = c + (std[:, 2:4] * c_sigma if "principal point" in active else 0.0)
        out = []
        for i, (d, s) in enumerate(zip((d1, d2), z_sig)):
            z = d.depth_m + (std[:, 4 + i] * s if f"depth {i + 1}" in active else 0.0)
            Z = k * z
            out.append(np.column_stack([(pts[i][0] - cc[..., 0]) * Z / f, (pts[i][1] - cc[..., 1]) * Z / f, Z]))
        return np.linalg.norm(out[0] - out[1], axis=1)

    sources = {"depth 1", "depth 2", "scale+focal", "principal point"}
    samples = draw(sources)
    k_hat, f_hat = math.exp(mean[0]), math.exp(mean[1])
    P = [
        ((x - c[0]) * k_hat * d.depth_m / f_hat, (y - c[1]) * k_hat * d.depth_m / f_hat, k_hat * d.depth_m)
        for (x, y), d in zip(pts, (d1, d2))
    ]
    dist = float(np.linalg.norm(np.subtract(P[0], P[1])))
    lo, hi = (float(v) for v in np.percentile(samples, [2.5, 97.5]))
    variances = {s: float(np.var(draw({s}, _SAMPLES_PER_SOURCE))) for s in sorted(sources)}
    total = sum(variances.values()) or 1.0

    if reference is not None and focal.rel_sigma > math.sqrt(cov[1, 1]) * 1.05:
        used = FocalEstimate(focal_px=f_hat, rel_sigma=float(math.sqrt(cov[1, 1])), source="reference")
    else:
        used = replace(focal, focal_px=f_hat, rel_sigma=float(math.sqrt(cov[1, 1])))
    return Measurement(
        distance_m=dist,
        interval_m=(min(lo, dist), max(hi, dist)),
        sigma_m=float(np.std(samples)),
        points_m=tuple(tuple(float(v) for v in p) for p in P),  # type: ignore[arg-type]
        depths=(d1, d2),
        focal=used,
        depth_scale=k_hat,
        depth_scale_rel_sigma=float(math.sqrt(cov[0, 0])),
        reference=None if reference is None else reference.name,
        contributions={s: round(v / total, 4) for s, v in variances.items()},
    )
