"""Photometric bundle adjustment of keyframe poses and a smooth depth correction per keyframe.

A monocular network's depth is wrong in two ways no per-pixel filter can see: a per-frame
scale, and a smooth warp of a few percent across the image. Odometry between two keyframes
takes the reference's depth as given, so the warp becomes pose error (tenths of a degree
over a walk), and fusion stacks surfaces that disagree by centimetres.

Here every keyframe's depth is multiplied by exp(s_i(u)), where s_i is a cubic B-spline
surface over the image on a coarse grid (GRID x GRID control values): it holds a per-frame
scale (the spline is a partition of unity) and any warp of at most about one cycle across
the image. Poses and these fields are refined together so that each keyframe's sampled
pixels, lifted with its corrected depth, land on the same intensity in its neighbouring
keyframes (and in those the pose graph closed loops with). Many views constrain each
surface, so the warps, independent from frame to frame, are told apart from motion.

Gauge: the first keyframe's pose is held; every control value has a Gaussian prior at 0
(the network's own scale, on average right). The tracker then sets the global scale by its
consensus (the mean of the keyframes' scales), as before.

Gauss-Newton with Huber weights, coarse to fine (half then full resolution). The fields are
eliminated first (Schur complement: each touches only its own keyframe's edges), leaving a
dense 6N x 6N pose system; a step that does not lower the cost is damped (Levenberg-Marquardt).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spatialforge.runner.geometry.depth_filters import flying_pixels

log = logging.getLogger(__name__)

GRID = 5  # control values per image axis of the depth correction
PRIOR_SIGMA = 0.05  # log-depth prior per control value (5 %)


@dataclass(frozen=True, kw_only=True)
class BundleOptions:
    """Knobs of the adjustment (defaults measured on the bench's walk, bench/reconstruct.py)."""

    window: int = 3  # each keyframe is compared with this many neighbours on each side
    samples: int = 1500  # pixels per keyframe (the strongest gradient in each cell of a grid)
    iterations: tuple[int, ...] = (6, 4)  # per pyramid level, coarse first
    huber: float = 0.04  # intensity (0..1) beyond which a residual is down-weighted
    depth_max: float = 10.0
    grid: int = GRID
    drop_edges: bool = True  # leave flying pixels (depth_filters.py) out of the samples


@dataclass(kw_only=True)
class BundleResult:
    """Poses (camera-to-world) and fields; unposed keyframes stay None in both."""

    poses: list[np.ndarray | None]
    fields: list[np.ndarray | None]  # GRID x GRID log-depth control values per keyframe
    costs: list[tuple[float, float]]  # per pyramid level, coarse first: cost before and after
    iterations: int  # accepted steps


def _bspline_1d(t: np.ndarray, m: int) -> np.ndarray:
    """Uniform cubic B-spline weights (n x m) at t in [0, 1] over m control values."""
    x = np.clip(t, 0.0, 1.0) * (m - 3)
    seg = np.minimum(np.floor(x).astype(np.int64), m - 4)
    f = x - seg
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1) / 6.0
    out = np.zeros((len(t), m))
    rows = np.arange(len(t))
    for k in range(4):
        out[rows, seg + k] = w[:, k]
    return out


def basis(us: np.ndarray, vs: np.ndarray, width: int, height: int, m: int) -> np.ndarray:
    """(n x m*m) spline weights at pixel positions (u, v) of a width x height image."""
    bx = _bspline_1d(us / max(width - 1, 1), m)
    by = _bspline_1d(vs / max(height - 1, 1), m)
    return (by[:, :, None] * bx[:, None, :]).reshape(len(us), m * m)


def field_image(coeffs: np.ndarray, width: int, height: int) -> np.ndarray:
    """The correction factor exp(s(u, v)) over a whole image, float32 (separable evaluation)."""
    m = coeffs.shape[0]
    bx = _bspline_1d(np.arange(width) / max(width - 1, 1), m)
    by = _bspline_1d(np.arange(height) / max(height - 1, 1), m)
    return np.exp(by @ coeffs @ bx.T).astype(np.float32)


def split_scale(coeffs: np.ndarray) -> tuple[float, np.ndarray]:
    """(exp of the field's mean over the image, the field less that mean): a scale and a warp.

    The spline is a partition of unity, so lowering every control value by c lowers the
    field by c everywhere.
    """
    m = coeffs.shape[0]
    t = np.linspace(0.0, 1.0, 65)
    mean = float(np.mean(_bspline_1d(t, m), axis=0) @ coeffs @ np.mean(_bspline_1d(t, m), axis=0))
    return float(np.exp(mean)), coeffs - mean


def _skew(v: np.ndarray) -> np.ndarray:
    """Batched cross-product matrices: (n, 3) -> (n, 3, 3)."""
    z = np.zeros(len(v))
    return np.stack([np.stack([z, -v[:, 2], v[:, 1]], 1), np.stack([v[:, 2], z, -v[:, 0]], 1),
                     np.stack([-v[:, 1], v[:, 0], z], 1)], 1)


def _exp_se3(xi: np.ndarray) -> np.ndarray:
    """4x4 transform of a twist (v, w)."""
    import cv2

    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(xi[3:].reshape(3, 1))[0]
    T[:3, 3] = xi[:3]
    return T


@dataclass
class _Samples:
    """One keyframe's sampled pixels: rays (n, 3), network depth (n,), intensity (n,), spline
    weights (n, GRID**2, float32: the largest part of the bundle's memory)."""

    rays: np.ndarray
    z: np.ndarray
    ref: np.ndarray
    B: np.ndarray


@dataclass
class _Level:
    """The keyframes at one pyramid level: blurred gray (float16 to halve its memory), depth, samples."""

    K: np.ndarray
    size: tuple[int, int]
    grays: dict[int, np.ndarray]
    depths: dict[int, np.ndarray]
    samples: dict[int, _Samples]


def _scaled_K(K: np.ndarray, w0: int, h0: int, w: int, h: int) -> np.ndarray:
    Kl = K.astype(np.float64).copy()
    Kl[0, 0] *= w / w0
    Kl[1, 1] *= h / h0
    Kl[0, 2] = (K[0, 2] + 0.5) * w / w0 - 0.5
    Kl[1, 2] = (K[1, 2] + 0.5) * h / h0 - 0.5
    return Kl


def _level(images: Sequence[np.ndarray], depths: Sequence[np.ndarray], K: np.ndarray, keep: Sequence[int],
           factor: int, opt: BundleOptions) -> _Level:
    """Blurred gray images and the strongest-gradient pixel of each cell of a grid, per keyframe."""
    import cv2

    h0, w0 = depths[keep[0]].shape
    w, h = w0 // factor, h0 // factor
    Kl = _scaled_K(K, w0, h0, w, h) if factor > 1 else K.astype(np.float64)
    lv = _Level(K=Kl, size=(w, h), grays={}, depths={}, samples={})
    Kinv = np.linalg.inv(Kl)
    cell = max(2, int(np.sqrt(w * h / opt.samples)))
    for i in keep:
        img = images[i]
        g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if g.shape != (h, w):
            g = cv2.resize(g, (w, h), interpolation=cv2.INTER_AREA)
        g = cv2.GaussianBlur(g.astype(np.float32) / np.float32(255.0), (0, 0), 1.0)
        d = depths[i]
        mask = flying_pixels(d) if opt.drop_edges else None
        if d.shape != (h, w):
            d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        lv.grays[i], lv.depths[i] = g.astype(np.float16), d
        mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
        ok = (d > 1e-3) & (d < opt.depth_max) & np.isfinite(d)
        if mask is not None:
            if mask.shape != (h, w):
                mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            ok &= ~mask
        ok[:3, :] = ok[-3:, :] = False
        ok[:, :3] = ok[:, -3:] = False
        score = np.where(ok, mag, 0.0)
        hc, wc = h // cell, w // cell
        blocks = score[: hc * cell, : wc * cell].reshape(hc, cell, wc, cell).transpose(0, 2, 1, 3).reshape(hc, wc, -1)
        arg = blocks.argmax(axis=2)
        best = np.take_along_axis(blocks, arg[..., None], axis=2)[..., 0]
        thresh = max(float(np.median(best[best > 0])) * 0.3, 1e-3) if (best > 0).any() else np.inf
        cy, cx = np.nonzero(best > thresh)
        vs = cy * cell + arg[cy, cx] // cell
        us = cx * cell + arg[cy, cx] % cell
        lv.samples[i] = _Samples(
            rays=(Kinv @ np.stack([us, vs, np.ones_like(us)]).astype(np.float64)).T,
            z=d[vs, us].astype(np.float64), ref=g[vs, us].astype(np.float64),
            B=basis(us.astype(np.float64), vs.astype(np.float64), w, h, opt.grid).astype(np.float32),
        )
    return lv


def _sample(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.remap(img.astype(np.float32, copy=False), u.astype(np.float32).reshape(1, -1),
                     v.astype(np.float32).reshape(1, -1), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(-1).astype(np.float64)


@dataclass
class _Edge:
    cost: float
    count: int
    H: np.ndarray | None = None  # normal matrix over (pose i, pose j, field i)
    b: np.ndarray | None = None


def _edge(lv: _Level, i: int, j: int, P: dict[int, np.ndarray], C: dict[int, np.ndarray], huber: float,
          jacobians: bool) -> _Edge:
    """Keyframe i's samples, lifted with its corrected depth and seen from j: Huber cost (and
    the Gauss-Newton normal equations over pose i, pose j and field i)."""
    K, (w, h), smp = lv.K, lv.size, lv.samples[i]
    if len(smp.z) == 0:
        return _Edge(0.0, 0)
    Xi = smp.rays * (smp.z * np.exp(smp.B @ C[i].reshape(-1)))[:, None]
    T_ji = np.linalg.inv(P[j]) @ P[i]
    R, t = T_ji[:3, :3], T_ji[:3, 3]
    Xj = Xi @ R.T + t
    zj = Xj[:, 2]
    front = zj > 0.05
    zs = np.where(front, zj, 1.0)
    u = K[0, 0] * Xj[:, 0] / zs + K[0, 2]
    v = K[1, 1] * Xj[:, 1] / zs + K[1, 2]
    inside = front & (u > 2) & (u < w - 3) & (v > 2) & (v < h - 3)
    # Occluded in j: j's own corrected depth has something clearly in front.
    uc, vc = np.clip(u, 0, w - 1), np.clip(v, 0, h - 1)
    dj = _sample(lv.depths[j], uc, vc) * np.exp(basis(uc, vc, w, h, C[j].shape[0]) @ C[j].reshape(-1))
    inside &= ~((dj > 1e-3) & (zj > dj * 1.15))
    gray = lv.grays[j]
    r = np.where(inside, _sample(gray, u, v) - smp.ref, 0.0)
    a = np.abs(r)
    cost = float(np.sum(np.where(a <= huber, 0.5 * r * r, huber * (a - 0.5 * huber))))
    count = int(inside.sum())
    if not jacobians:
        return _Edge(cost, count)
    wgt = np.where(inside, np.minimum(1.0, huber / np.maximum(a, 1e-12)), 0.0)
    gx = 0.5 * (_sample(gray, u + 1, v) - _sample(gray, u - 1, v))
    gy = 0.5 * (_sample(gray, u, v + 1) - _sample(gray, u, v - 1))
    x, y = Xj[:, 0], Xj[:, 1]
    # d(intensity)/d(Xj)
    dI = np.stack([gx * K[0, 0] / zs, gy * K[1, 1] / zs, -(gx * K[0, 0] * x + gy * K[1, 1] * y) / (zs * zs)], 1)
    # pose j, right perturbation: dXj = -dv + [Xj]x dw
    Jj = np.concatenate([-dI, np.einsum("nk,nkl->nl", dI, _skew(Xj))], 1)
    # pose i, right perturbation: dXj = R dv - R [Xi]x dw
    dIR = dI @ R
    Ji = np.concatenate([dIR, -np.einsum("nk,nkl->nl", dIR, _skew(Xi))], 1)
    # field i: dXj/dc_k = R Xi B_k
    Jc = (dIR * Xi).sum(1)[:, None] * smp.B
    J = np.concatenate([Ji, Jj, Jc], 1)
    Jw = J * wgt[:, None]
    return _Edge(cost, count, Jw.T @ J, Jw.T @ r)


def _pairs(keep: Sequence[int], window: int, extra: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    kept = set(keep)
    for a, i in enumerate(keep):
        for j in keep[a + 1: a + 1 + window]:
            out |= {(i, j), (j, i)}
    for i, j in extra:
        if i in kept and j in kept and i != j:
            out |= {(i, j), (j, i)}
    return sorted(out)


def _solve(keep: list[int], edges: list[tuple[int, int]], terms: dict[tuple[int, int], _Edge], C: dict[int, np.ndarray],
           prior: float, lam: float) -> tuple[np.ndarray, dict[int, np.ndarray]] | None:
    """One damped Gauss-Newton step. The fields are eliminated first (Schur complement: each
    field touches only its own keyframe's edges), leaving a dense 6N x 6N pose system."""
    idx = {k: a for a, k in enumerate(keep)}
    m2 = C[keep[0]].size
    npose = 6 * len(keep)
    Hpp = np.zeros((npose, npose))
    bp = np.zeros(npose)
    Hcc = {i: np.eye(m2) * prior for i in keep}
    bc = {i: prior * C[i].reshape(-1) for i in keep}
    Hpc: dict[int, dict[int, np.ndarray]] = {i: {} for i in keep}  # field i -> pose a -> 6 x m2
    for i, j in edges:
        e = terms[(i, j)]
        if e.H is None or e.b is None:
            continue
        H, b = e.H, e.b
        si, sj = slice(6 * idx[i], 6 * idx[i] + 6), slice(6 * idx[j], 6 * idx[j] + 6)
        Hpp[si, si] += H[:6, :6]
        Hpp[si, sj] += H[:6, 6:12]
        Hpp[sj, si] += H[6:12, :6]
        Hpp[sj, sj] += H[6:12, 6:12]
        bp[si] += b[:6]
        bp[sj] += b[6:12]
        Hcc[i] += H[12:, 12:]
        bc[i] += b[12:]
        for a, rows in ((i, H[:6, 12:]), (j, H[6:12, 12:])):
            Hpc[i][a] = Hpc[i].get(a, 0.0) + rows
    Hpp[:6, :6] += np.eye(6) * 1e12  # the first keyframe holds the gauge
    for i in keep:  # damping
        Hcc[i] += lam * np.diag(np.diag(Hcc[i]))
    Hpp += lam * np.diag(np.diag(Hpp))
    inv = {}
    for i in keep:
        try:
            inv[i] = np.linalg.inv(Hcc[i])
        except np.linalg.LinAlgError:
            return None
        links = list(Hpc[i].items())
        for a, Ha in links:
            sa = slice(6 * idx[a], 6 * idx[a] + 6)
            HaI = Ha @ inv[i]
            bp[sa] -= HaI @ bc[i]
            for c, Hc in links:
                sc = slice(6 * idx[c], 6 * idx[c] + 6)
                Hpp[sa, sc] -= HaI @ Hc.T
    try:
        dp = -np.linalg.solve(Hpp, bp)
    except np.linalg.LinAlgError:
        return None
    dc = {}
    for i in keep:
        rhs = bc[i].copy()
        for a, Ha in Hpc[i].items():
            rhs += Ha.T @ dp[6 * idx[a]: 6 * idx[a] + 6]
        dc[i] = -inv[i] @ rhs
    return dp, dc


def adjust(images: Sequence[np.ndarray], depths: Sequence[np.ndarray], K: np.ndarray,
           poses: Sequence[np.ndarray | None], extra_edges: Sequence[tuple[int, int]] = (),
           options: BundleOptions | None = None) -> BundleResult:
    """Refined poses (camera-to-world, the first posed keyframe unchanged) and a field per keyframe.

    A level whose cost a step would raise keeps its previous estimate (more damping, then stop).
    """
    opt = options or BundleOptions()
    n = len(poses)
    keep = [i for i, p in enumerate(poses) if p is not None]
    m = opt.grid
    P = {i: np.asarray(poses[i], dtype=np.float64).copy() for i in keep}
    C = {i: np.zeros((m, m)) for i in keep}
    result = BundleResult(poses=list(poses), fields=[C.get(i) for i in range(n)], costs=[], iterations=0)
    if len(keep) < 2:
        return result
    edges = _pairs(keep, opt.window, extra_edges)
    factors = [2 ** k for k in range(len(opt.iterations) - 1, -1, -1)]
    lv: _Level | None = None
    for factor, iters in zip(factors, opt.iterations):
        lv = None  # the coarser level's images and samples go before the next level's are made
        lv = _level(images, depths, K, keep, factor, opt)
        count = max(sum(len(lv.samples[i].z) for i in keep), 1)
        lam = 1e-4

        def total(terms: dict[tuple[int, int], _Edge], fields: dict[int, np.ndarray], prior: float) -> float:
            return sum(t.cost for t in terms.values()) + 0.5 * prior * sum(float(np.sum(c * c)) for c in fields.values())

        terms = {e: _edge(lv, *e, P, C, opt.huber, True) for e in edges}
        # Prior in the photometric terms' units: residual variance / sigma^2.
        sigma_r2 = max(2.0 * sum(t.cost for t in terms.values()) / count, 1e-8)
        prior = sigma_r2 / PRIOR_SIGMA**2
        cost = start = total(terms, C, prior)
        done = 0
        while done < iters:
            step = _solve(keep, edges, terms, C, prior, lam)
            if step is None:
                break
            dp, dc = step
            P_new = {i: P[i] @ _exp_se3(dp[6 * a: 6 * a + 6]) for a, i in enumerate(keep)}
            C_new = {i: C[i] + dc[i].reshape(m, m) for i in keep}
            if not all(np.all(np.isfinite(P_new[i])) and np.all(np.isfinite(C_new[i])) for i in keep):
                break
            new_terms = {e: _edge(lv, *e, P_new, C_new, opt.huber, True) for e in edges}
            new_cost = total(new_terms, C_new, prior)
            done += 1
            if new_cost < cost:
                P, C, terms, cost = P_new, C_new, new_terms, new_cost
                lam = max(lam / 4, 1e-6)
                result.iterations += 1
                log.debug("bundle level %d: cost %.5f", factor, cost)
            else:
                lam *= 8
                if lam > 1.0:
                    break
        result.costs.append((start, cost))
    result.poses = [P.get(i) for i in range(n)]
    result.fields = [C.get(i) for i in range(n)]
    return result
