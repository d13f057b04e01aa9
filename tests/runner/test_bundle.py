"""The photometric bundle adjustment (geometry/bundle.py): its spline, its derivatives, and what
it recovers from depth warped the way a monocular network warps it."""

from __future__ import annotations

import numpy as np
import pytest

from spatialforge.runner.geometry import bundle
from spatialforge.runner.geometry.tracking import estimate_poses
from spatialforge.runner.synthetic import MonoErrors, PinholeCamera, furnished_room, monocular_like, render_path, walk

ROOM = furnished_room()
CAM = PinholeCamera(width=640, height=480, fx=500, fy=500).scaled(512, 384)


@pytest.fixture(scope="module")
def quarter_walk() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """25 keyframes over the first quarter of the bench's walk."""
    truth = walk(25, fraction=0.25)
    return truth, *render_path(ROOM, CAM, truth)


def test_spline_is_a_partition_of_unity_and_the_image_matches_the_samples():
    rng = np.random.default_rng(0)
    us, vs = rng.uniform(0, 511, 200), rng.uniform(0, 383, 200)
    B = bundle.basis(us, vs, 512, 384, bundle.GRID)
    assert np.allclose(B.sum(1), 1.0) and (B >= 0).all()
    coeffs = rng.normal(0, 0.02, (bundle.GRID, bundle.GRID))
    img = bundle.field_image(coeffs, 512, 384)
    ui, vi = us.round().astype(int), vs.round().astype(int)
    at = np.exp(bundle.basis(ui.astype(float), vi.astype(float), 512, 384, bundle.GRID) @ coeffs.reshape(-1))
    assert np.allclose(img[vi, ui], at, rtol=1e-5)


def test_split_scale_takes_out_exactly_the_mean():
    coeffs = np.random.default_rng(1).normal(0.05, 0.02, (bundle.GRID, bundle.GRID))
    scale, warp = bundle.split_scale(coeffs)
    full = np.log(bundle.field_image(coeffs, 256, 192).astype(np.float64))
    rest = np.log(bundle.field_image(warp, 256, 192).astype(np.float64))
    assert abs(np.log(scale) - full.mean()) < 2e-4
    assert abs(rest.mean()) < 2e-4
    assert np.allclose(full - np.log(scale), rest, atol=1e-5)


def test_edge_jacobians_match_finite_differences(quarter_walk):
    """Gauss-Newton's gradient (J^T r) against the cost's numerical derivative, every block."""
    truth, rgbs, depths = quarter_walk
    opt = bundle.BundleOptions(depth_max=8.0, huber=10.0)  # all residuals quadratic: cost = r.r / 2
    keep = [0, 1]
    lv = bundle._level(rgbs, depths, CAM.K, keep, 1, opt)
    rng = np.random.default_rng(2)
    jitter = bundle._exp_se3(np.r_[rng.normal(0, 0.003, 3), rng.normal(0, 0.002, 3)])
    P = {0: np.linalg.inv(truth[0]) @ truth[0], 1: np.linalg.inv(truth[0]) @ truth[1] @ jitter}
    C = {0: rng.normal(0, 0.01, (bundle.GRID, bundle.GRID)), 1: np.zeros((bundle.GRID, bundle.GRID))}
    e = bundle._edge(lv, 0, 1, P, C, opt.huber, True)
    assert e.count > 500 and e.b is not None

    def cost(k: int, h: float) -> float:
        dx = np.zeros(12 + bundle.GRID**2)
        dx[k] = h
        P2 = {0: P[0] @ bundle._exp_se3(dx[:6]), 1: P[1] @ bundle._exp_se3(dx[6:12])}
        C2 = {0: C[0] + dx[12:].reshape(bundle.GRID, bundle.GRID), 1: C[1]}
        return bundle._edge(lv, 0, 1, P2, C2, opt.huber, False).cost

    # The image gradient is a central difference over ±1 px of the blurred image, the cost's
    # derivative that of bilinear interpolation: they agree to about 10 %. A wrong sign, axis
    # or factor is far outside that.
    for k in (0, 3, 4, 6, 9, 10, 18, 24, 30):
        h = 1e-3
        numeric = (cost(k, h) - cost(k, -h)) / (2 * h)
        assert numeric == pytest.approx(e.b[k], rel=0.15, abs=0.01 * np.abs(e.b).max()), k


def _warp_left(depths: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Median over keyframes of the p90 deviation of depth/true depth from its own median: the
    warp (and noise) a map still carries beyond its scale."""
    out = []
    for d, t in zip(depths, truth, strict=True):
        ok = (t > 0) & (d > 0)
        ratio = d[ok] / t[ok]
        out.append(float(np.percentile(np.abs(ratio / np.median(ratio) - 1.0), 90)))
    return float(np.median(out))


def test_bundle_adjustment_removes_the_warp_and_the_pose_error_it_caused(quarter_walk):
    truth, rgbs, depths = quarter_walk
    errors = MonoErrors().only("scale", "warp")
    warped = [monocular_like(d, np.random.default_rng(100 + i), errors) for i, d in enumerate(depths)]
    runs = {b: estimate_poses(rgbs, warped, CAM.K, depth_max=8.0, bundle=b) for b in (False, True)}
    first = np.linalg.inv(truth[0])

    def rot_max(poses: list) -> float:
        return max(float(np.degrees(np.arccos(np.clip((np.trace((first @ g)[:3, :3].T @ p[:3, :3]) - 1) / 2, -1, 1))))
                   for p, g in zip(poses, truth, strict=True))

    plain, adjusted = runs[False], runs[True]
    assert adjusted[0].bundle_iterations > 0 and len(adjusted[0].posed) == len(truth)
    assert all(f is not None and f.shape == (bundle.GRID, bundle.GRID) for f in adjusted[0].fields)
    before, after = _warp_left(list(plain[1]), depths), _warp_left(list(adjusted[1]), depths)
    rb, ra = rot_max(plain[0].poses), rot_max(adjusted[0].poses)
    # Measured: warp left 2.25 % -> 0.25 %, worst rotation 0.25 -> 0.023 degrees.
    assert after < 0.25 * before and after < 0.006, (before, after)
    assert ra < 0.25 * rb and ra < 0.08, (rb, ra)
    assert plain[0].fields == [None] * len(truth) and plain[0].bundle_iterations == 0
