"""Depth filters before fusion (runner/geometry/depth_filters.py: the median, flying pixels) and
the monocular error model the bench uses (runner/synthetic.py: MonoErrors), on frames of the
furnished synthetic room."""

from __future__ import annotations

import numpy as np
import pytest
from spatialforge.runner.geometry.depth_filters import (
    denoise,
    drop_flying_pixels,
    flying_pixels,
    prepare_for_fusion,
)
from spatialforge.runner.synthetic import (
    MonoErrors,
    PinholeCamera,
    furnished_room,
    monocular_like,
    render,
    walk,
)

CAM = PinholeCamera(width=640, height=480, fx=500, fy=500).scaled(512, 384)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """True depth at three places on the walk: furniture edges in view in each."""
    room = furnished_room()
    return [render(room, CAM, T, supersample=1)[1] for T in walk(100)[0:90:30]]


def test_every_smeared_pixel_is_flagged_and_little_else(frames):
    for i, truth in enumerate(frames):
        smeared = monocular_like(truth, np.random.default_rng(i), MonoErrors().only("edge_px"))
        flying = np.abs(smeared - truth) > 0.02 * truth  # points 2 % or more off their surface
        assert flying.mean() > 0.005  # the frame has edges to smear
        mask = flying_pixels(monocular_like(truth, np.random.default_rng(i)))  # with all four errors
        assert mask[flying].mean() >= 0.99
        assert mask.mean() < 0.10, mask.mean()


def test_a_plane_seen_at_a_slant_is_not_an_edge():
    """A floor seen from 1.5 m, out to 19 m (5 degrees from grazing), with 1 % noise: inverse
    depth is affine in the pixel coordinates, so no second difference flags it."""
    h, w, f = 384, 512, 400.0
    v = np.arange(h, dtype=np.float64)[:, None] - h / 2 + 0.5
    tilt = np.radians(25.0)
    depth = (1.5 / (np.sin(tilt) + np.cos(tilt) * v / f) * np.ones((1, w)))[40:].astype(np.float32)
    noisy = depth * (1 + np.random.default_rng(3).normal(0, 0.01, depth.shape)).astype(np.float32)
    assert flying_pixels(noisy)[8:-8, 8:-8].mean() < 0.01


def test_pixels_without_depth_border_a_hole_and_dropping_is_in_place(frames):
    depth = frames[0].copy()
    depth[100:120, 200:220] = 0.0
    mask = flying_pixels(depth)
    assert mask[100:120, 200:220].all() and mask[97, 210] and not mask[60, 60]
    maps = [depth, frames[2].copy()]
    expected = [flying_pixels(m) & (m > 0) for m in maps]
    had = sum(int((m > 0).sum()) for m in maps)
    share = drop_flying_pixels(maps)
    assert maps[0] is depth and 0 < share < 0.1
    assert share == pytest.approx(sum(int(e.sum()) for e in expected) / had)
    for m, e in zip(maps, expected, strict=True):
        assert np.all(m[e] == 0) and np.all(m[~e & (m > 0)] > 0)


def test_each_monocular_error_does_what_it_says(frames):
    truth = frames[1]

    def rng() -> np.random.Generator:  # the same draws for each error alone
        return np.random.default_rng(11)

    assert np.array_equal(monocular_like(truth, rng(), MonoErrors().only()), truth)
    ratio = monocular_like(truth, rng(), MonoErrors().only("scale")) / truth
    assert np.ptp(ratio) < 1e-5 and abs(float(ratio.mean()) - 1) < 0.2
    warp = monocular_like(truth, rng(), MonoErrors().only("warp")) / truth - 1
    assert 0.029 < float(np.abs(warp).max()) <= 0.0301
    assert float(np.abs(np.diff(warp, axis=1)).max()) < 0.03 * 2 * np.pi * 6 / truth.shape[1]  # smooth: <= 1 cycle
    noise = monocular_like(truth, rng(), MonoErrors().only("noise")) / truth - 1
    assert 0.009 < float(noise.std()) < 0.011
    smear = monocular_like(truth, rng(), MonoErrors().only("edge_px"))
    assert np.median(np.abs(smear / truth - 1)) < 1e-4  # planes stay where they were


def test_scale_errors_are_gaussian_with_the_stated_sigma():
    truth = np.full((8, 8), 2.0, np.float32)
    scales = [float(monocular_like(truth, np.random.default_rng(i), MonoErrors().only("scale"))[0, 0] / 2) for i in range(400)]
    assert 0.034 < float(np.std(scales)) < 0.046


def test_the_median_keeps_true_depth_and_takes_out_noise(frames):
    truth = frames[0]
    kept = denoise(truth)
    inner = ~flying_pixels(truth)  # away from edges, the room is planes: the median is their centre value
    change = np.abs(kept[inner] / truth[inner] - 1)
    # ... but in the creases where two planes meet, the window spans both: at most 1 % there
    assert float(np.mean(change < 1e-4)) > 0.97 and float(change.max()) < 0.011
    noisy = monocular_like(truth, np.random.default_rng(2), MonoErrors().only("noise"))
    before = float(np.std(noisy[inner] / truth[inner]))
    after = float(np.std(denoise(noisy)[inner] / truth[inner]))
    assert before > 0.009 and after < before / 2.5, (before, after)


def test_prepare_for_fusion_filters_then_drops(frames):
    maps = [monocular_like(f, np.random.default_rng(i)) for i, f in enumerate(frames)]
    originals = [m.copy() for m in maps]
    share = prepare_for_fusion(maps)
    assert 0 < share < 0.1
    for m, o in zip(maps, originals, strict=True):
        assert np.array_equal(m > 0, (denoise(o) > 0) & ~flying_pixels(denoise(o)))
