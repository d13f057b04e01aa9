"""Point-to-point measurement on rendered scenes with known distances.

Scenes: a box room with furniture boxes, ray-cast in numpy with a pinhole camera; the depth map is
the exact z-depth, fed as the reconstruction bench feeds ground truth (bench/reconstruct.py uses
runner.synthetic.render, which one test uses directly). Noisy depth follows issue 12's model of a
monocular network: a per-image scale error uniform in +-5 %, smooth noise of 1 % of depth with a
20 px correlation length, and 0.5 % white noise. Figures print with `pytest -s`.
"""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest

from spatialforge.runner.errors import MeasurementError
from spatialforge.runner.measure import (
    EXACT_DEPTH,
    DepthErrorModel,
    FocalEstimate,
    ReferenceObject,
    depth_at,
    focal_from_exif,
    measure,
    to_depth_pixels,
)

W, H = 320, 240


def _boxes_hit(o: np.ndarray, d: np.ndarray, boxes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Ray parameter of the first hit on the outside of any box (inf if none)."""
    best = np.full(d.shape[0], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi in boxes:
            t1, t2 = (lo - o) / d, (hi - o) / d
            tn = np.nanmax(np.minimum(t1, t2), axis=1)
            tf = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (tn <= tf) & (tn > 1e-6)
            best = np.where(hit & (tn < best), tn, best)
    return best


def cast(scene: dict, cam_to_world: np.ndarray, f: float, c: tuple[float, float], us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """World points hit by the rays through pixels (us, vs); z-depth is the ray parameter."""
    dirs_cam = np.column_stack([(us - c[0]) / f, (vs - c[1]) / f, np.ones_like(us)])
    R, o = cam_to_world[:3, :3], cam_to_world[:3, 3]
    d = dirs_cam @ R.T
    lo, hi = scene["room"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_room = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf)).min(axis=1)
    t = np.minimum(t_room, _boxes_hit(o, d, scene["boxes"]))
    return o + d * t[:, None], t


def render_depth(scene: dict, cam_to_world: np.ndarray, f: float, c: tuple[float, float], size: tuple[int, int] = (W, H)) -> np.ndarray:
    w, h = size
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    _, t = cast(scene, cam_to_world, f, c, us.ravel(), vs.ravel())
    return t.reshape(h, w).astype(np.float32)


def random_scene(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """A room 3-6 m wide with 1-3 furniture boxes, and a camera inside looking at it (OpenCV axes, y down)."""
    size = rng.uniform([3, 2.4, 3], [6, 3.0, 6])
    room = (np.zeros(3), size)
    boxes = []
    for _ in range(rng.integers(1, 4)):
        dims = rng.uniform([0.4, 0.4, 0.4], [1.5, 1.6, 1.2])
        lo = np.array([rng.uniform(0, size[0] - dims[0]), size[1] - dims[1], rng.uniform(size[2] * 0.4, size[2] - dims[2])])
        boxes.append((lo, lo + dims))  # y down: boxes stand on the floor at y = size[1]
    pos = np.array([rng.uniform(0.3, size[0] - 0.3), rng.uniform(0.8, 1.4), rng.uniform(0.2, size[2] * 0.3)])
    yaw, pitch = np.radians(rng.uniform(-30, 30)), np.radians(rng.uniform(-25, 10))
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = ry @ rx, pos
    return {"room": room, "boxes": boxes}, T


def depth_edges(depth: np.ndarray, margin: int) -> np.ndarray:
    """Pixels within `margin` of a depth discontinuity (a jump of more than 3 %)."""
    gx = np.abs(np.diff(depth, axis=1, prepend=depth[:, :1])) / depth
    gy = np.abs(np.diff(depth, axis=0, prepend=depth[:1])) / depth
    edge = ((gx > 0.03) | (gy > 0.03)).astype(np.uint8)
    return cv2.dilate(edge, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)


def pick_pair(rng: np.random.Generator, depth: np.ndarray, scene: dict, T: np.ndarray, f: float, c: tuple[float, float], margin: int):
    """Two sub-pixel points off depth edges, at least 0.3 m apart; their true distance."""
    bad = depth_edges(depth, margin)
    h, w = depth.shape
    while True:
        uv = rng.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], size=(2, 2))
        if bad[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)].any():
            continue
        P, _ = cast(scene, T, f, c, uv[:, 0], uv[:, 1])
        dist = float(np.linalg.norm(P[0] - P[1]))
        if dist >= 0.3:
            return (float(uv[0, 0]), float(uv[0, 1])), (float(uv[1, 0]), float(uv[1, 1])), dist


def monocular_noise(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Issue 12's model: per-image scale in U(+-5 %), smooth 1 % noise (20 px), plus 0.5 % white noise."""
    smooth = cv2.GaussianBlur(rng.standard_normal(depth.shape).astype(np.float32), (0, 0), 20)
    smooth /= smooth.std()
    white = rng.standard_normal(depth.shape).astype(np.float32)
    scale = rng.uniform(0.95, 1.05)
    return (depth * scale * (1 + 0.01 * smooth + 0.005 * white)).astype(np.float32)


def test_exact_depth_known_focal_within_one_percent() -> None:
    rng = np.random.default_rng(1)
    errors = []
    for i in range(60):
        if i % 4 == 0:
            scene, T = random_scene(rng)
            f = rng.uniform(0.6, 1.2) * W
            c = ((W - 1) / 2 + rng.uniform(-3, 3), (H - 1) / 2 + rng.uniform(-3, 3))
            depth = render_depth(scene, T, f, c)
        p1, p2, truth = pick_pair(rng, depth, scene, T, f, c, margin=2)
        m = measure(depth, p1, p2, FocalEstimate.from_source(f, "spec"), principal_point=c, depth_error=EXACT_DEPTH)
        errors.append(abs(m.distance_m - truth) / truth)
        assert m.interval_m[0] <= m.distance_m <= m.interval_m[1]
    assert json.loads(json.dumps(m.as_dict()))["focal"]["source"] == "spec"
    print(json.dumps({"case": "exact depth, known focal", "n": len(errors),
                      "max_rel_err_pct": round(100 * max(errors), 4), "median_rel_err_pct": round(100 * float(np.median(errors)), 5)}))
    assert max(errors) <= 0.01


def test_bench_renderer_depth() -> None:
    """Depth exactly as bench/reconstruct.py feeds it: runner.synthetic.render of its Room."""
    from spatialforge.runner.synthetic import PinholeCamera, Room, look_pose, render

    room = Room()
    cam = PinholeCamera(width=W, height=H, fx=0.8 * W, fy=0.8 * W)
    pose = look_pose((0.1, 0.05, -0.2), yaw_deg=12, pitch_deg=-4)
    _, depth = render(room, cam, pose, supersample=1)
    K = cam.K
    scene = {"room": (np.asarray(room.lo), np.asarray(room.hi)), "boxes": []}
    rng = np.random.default_rng(3)
    for _ in range(10):
        p1, p2, truth = pick_pair(rng, depth, scene, pose, K[0, 0], (K[0, 2], K[1, 2]), margin=2)
        m = measure(depth, p1, p2, FocalEstimate.from_source(K[0, 0], "spec"), principal_point=(K[0, 2], K[1, 2]),
                    depth_error=EXACT_DEPTH)
        assert abs(m.distance_m - truth) / truth <= 0.01


def focal_as_reported(f_true: float, source: str, width: int, rng: np.random.Generator) -> FocalEstimate:
    """The focal length a photo would come with, with that source's real kind of error.

    spec: a calibration, 0.5 % (1 sigma). exif-35mm: the true 35 mm equivalent rounded to a
    whole mm, off by up to 2.5 % more for the crop and the width/diagonal convention.
    fallback: the phone prior, whatever lens the phone really has (22-31 mm equivalent).
    """
    if source == "spec":
        return FocalEstimate.from_source(f_true * (1 + rng.normal(0, 0.005)), "spec")
    if source == "exif-35mm":
        f35 = f_true / width * 36.0
        return FocalEstimate.from_source(np.round(f35) / 36.0 * width * (1 + rng.uniform(-0.025, 0.025)), "exif-35mm")
    prior = FocalEstimate.fallback(width, 1)
    return FocalEstimate(focal_px=prior.focal_px, rel_sigma=prior.rel_sigma, source="fallback")


def _coverage(label: str, focal_source: str, n: int, seed: int, *, size: tuple[int, int] = (W, H), per_scene: int = 8,
              reference: bool = False) -> dict[str, dict]:
    """n cases (a new scene every `per_scene`; new points, depth noise and focal error in each):
    coverage of the 95 % interval, its median width and the median error, without and (when
    `reference`) with an A4 sheet face-on in the middle of the picture."""
    rng = np.random.default_rng(seed)
    w, h = size
    stats: dict[str, list] = {"plain": [], "a4": []}
    for i in range(n):
        if i % per_scene == 0:
            scene, T = random_scene(rng)
            c = ((w - 1) / 2, (h - 1) / 2)
            if focal_source == "fallback":  # a phone's lens: 22-31 mm equivalent
                f = rng.uniform(22, 31) / 36.0 * w
            else:
                f = rng.uniform(0.6, 1.2) * w
            clean = render_depth(scene, T, f, c, size)
        p1, p2, truth = pick_pair(rng, clean, scene, T, f, c, margin=2)
        depth = monocular_noise(clean, rng)
        f_est = focal_as_reported(f, focal_source, w, rng)
        refs = {"plain": None}
        if reference:
            zc = float(np.median(clean[h // 2 - 10:h // 2 + 10, w // 2 - 10:w // 2 + 10]))
            half = 0.5 * np.array([0.297, 0.210]) * f / zc
            box = (w / 2 - half[0], h / 2 - half[1], w / 2 + half[0], h / 2 + half[1])
            refs["a4"] = ReferenceObject.named("a4", tuple(b + rng.normal(0, 0.5) for b in box))
        for key, ref in refs.items():
            m = measure(depth, p1, p2, f_est, principal_point=c, reference=ref)
            stats[key].append((m.interval_m[0] <= truth <= m.interval_m[1], (m.interval_m[1] - m.interval_m[0]) / truth,
                               abs(m.distance_m - truth) / truth))
    out = {}
    for key, rows in stats.items():
        if not rows:
            continue
        cov, width, err = (np.array(v, dtype=float) for v in zip(*rows))
        out[key] = {"case": f"{label}{' + A4 reference' if key == 'a4' else ''}", "n": len(rows),
                    "coverage_pct": round(100 * cov.mean(), 1), "median_width_pct_of_distance": round(100 * float(np.median(width)), 2),
                    "median_abs_err_pct": round(100 * float(np.median(err)), 2)}
        print(json.dumps(out[key]))
    return out


@pytest.mark.parametrize(("focal_source", "seed"), [("spec", 10), ("exif-35mm", 11)])
def test_noisy_depth_interval_covers_the_truth(focal_source: str, seed: int) -> None:
    fig = _coverage(f"monocular noise, {focal_source} focal", focal_source, 200, seed)["plain"]
    assert fig["coverage_pct"] >= 95.0
    assert fig["median_width_pct_of_distance"] < 25.0  # informative, not a blanket


def test_reference_object_rescues_a_fallback_focal() -> None:
    figs = _coverage("monocular noise, fallback focal", "fallback", 120, 20, size=(640, 480), reference=True)
    assert figs["plain"]["coverage_pct"] >= 95.0 and figs["a4"]["coverage_pct"] >= 95.0
    assert figs["a4"]["median_width_pct_of_distance"] < 0.7 * figs["plain"]["median_width_pct_of_distance"]
    assert figs["a4"]["median_abs_err_pct"] < figs["plain"]["median_abs_err_pct"]


def test_uncertainty_comes_from_the_data() -> None:
    rng = np.random.default_rng(5)
    scene, T = random_scene(rng)
    f = 0.9 * W
    clean = render_depth(scene, T, f, ((W - 1) / 2, (H - 1) / 2))
    p1, p2, _ = pick_pair(rng, clean, scene, T, f, ((W - 1) / 2, (H - 1) / 2), margin=6)
    noisy = monocular_noise(clean, rng)
    widths = {}
    for label, depth, focal in [
        ("exact-spec", clean, FocalEstimate.from_source(f, "spec")),
        ("noisy-spec", noisy, FocalEstimate.from_source(f, "spec")),
        ("noisy-exif", noisy, FocalEstimate.from_source(f, "exif-35mm")),
        ("noisy-fallback", noisy, FocalEstimate.from_source(f, "fallback")),
    ]:
        m = measure(depth, p1, p2, focal, depth_error=EXACT_DEPTH if label.startswith("exact") else DepthErrorModel())
        widths[label] = m.interval_m[1] - m.interval_m[0]
        assert abs(sum(m.contributions.values()) - 1) < 1e-3
    assert widths["exact-spec"] < widths["noisy-spec"] < widths["noisy-exif"] < widths["noisy-fallback"]
    # the window's spread: more pixel noise, a wider local sigma
    quiet = depth_at(clean, *p1)
    loud = depth_at(clean * (1 + 0.03 * rng.standard_normal(clean.shape)).astype(np.float32), *p1)
    assert quiet.window_sigma_m < 1e-3 * quiet.depth_m < loud.window_sigma_m


def test_a_point_on_a_depth_edge_is_less_certain() -> None:
    depth = np.full((100, 100), 2.0, np.float32)
    depth[:, 50:] = 4.0
    on_edge = depth_at(depth, 50.0, 50.0)
    inside = depth_at(depth, 20.0, 50.0)
    assert on_edge.edge and not inside.edge
    assert on_edge.sigma_m > 0.3 and inside.sigma_m < 1e-3


def test_exif_focal_length(tmp_path) -> None:
    from PIL import Image

    img = Image.new("RGB", (400, 300))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    est = focal_from_exif(buf.getvalue())
    assert est is not None and est.source == "exif-35mm"
    assert est.focal_px == pytest.approx(26 / 36 * 400)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A], ifd[0xA20E], ifd[0xA210] = 4.2, 1000.0, 3  # 4.2 mm lens, 1000 px per cm on the sensor
    path = tmp_path / "plane.jpg"
    img.save(path, "JPEG", exif=exif)
    est = focal_from_exif(path)
    assert est is not None and est.source == "exif-focal-plane" and est.focal_px == pytest.approx(420.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    assert focal_from_exif(buf.getvalue()) is None
    assert est.scaled(0.5).focal_px == pytest.approx(210.0)
    # the photo's pixel centres map onto the depth map's: corners to corners, centre to centre
    assert to_depth_pixels((-0.5, -0.5), (400, 300), (200, 150)) == pytest.approx((-0.5, -0.5))
    assert to_depth_pixels((199.5, 149.5), (400, 300), (200, 150)) == pytest.approx((99.5, 74.5))


def test_bad_input_is_a_clear_error() -> None:
    depth = np.full((50, 60), 2.0, np.float32)
    f = FocalEstimate.from_source(50.0, "spec")
    with pytest.raises(MeasurementError, match="outside"):
        measure(depth, (10, 10), (70, 10), f)
    with pytest.raises(MeasurementError, match="H x W"):
        measure(np.zeros((3, 50, 60)), (10, 10), (20, 10), f)
    nan = depth.copy()
    nan[:20, :20] = np.nan
    with pytest.raises(MeasurementError, match="no valid depth"):
        measure(nan, (10, 10), (40, 30), f)
    with pytest.raises(MeasurementError, match="reference box"):
        measure(depth, (10, 10), (40, 30), f, reference=ReferenceObject.named("a4", (40, 10, 80, 30)))
    with pytest.raises(MeasurementError, match="unknown reference"):
        ReferenceObject.named("banana", (0, 0, 10, 10))
    with pytest.raises(MeasurementError, match="focal"):
        FocalEstimate(focal_px=-1.0, rel_sigma=0.1, source="spec")
