"""ROAD: RemOve And Debias (Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449).

Deletion-style metrics replace pixels by a constant, and the network reacts to the *shape* of
the hole as much as to the missing evidence. ROAD fills the removed pixels by **noisy linear
imputation** instead, so most-relevant-first (MoRF) and least-relevant-first (LeRF) removal rank
methods consistently. Per (image, method) and removal fraction ``f`` (default 10/30/50/70/90 %):

* MoRF removes the ``floor(f·n)`` pixels of highest map value (the map bilinearly upsampled to
  the input, ties by row-major index: the order of :mod:`xaidash.compute.methods.ranks`), LeRF
  the ``floor(f·n)`` of lowest; the score is the class-``c`` softmax probability of the imputed
  image (``c`` = the predicted class). MoRF: lower is better; LeRF: higher is better.

The imputation (the system of pytorch-grad-cam's / the ROAD authors' ``NoisyLinearImputer``):
every removed pixel ``p`` is the weighted mean of its in-image 8-neighbours, weights 1/6 for the
four direct and 1/12 for the four diagonal ones. With ``U`` the removed pixels and ``v`` the
image (normalised, per channel)::

    D_p x_p - Σ_{n ∈ N(p) ∩ U} w_n x_n = Σ_{n ∈ N(p) \\ U} w_n v_n      for p ∈ U,
    D_p = Σ_{n ∈ N(p)} w_n  (in-image neighbours only)

then Gaussian noise of standard deviation ``noise`` (0.01) is added to the imputed values; the
noise is drawn from a generator seeded with the image id, so every worker gives the same image.
The matrix is symmetric and diagonally dominant, strictly on every row next to a kept pixel, so
it is positive definite whenever each connected hole touches a kept pixel (always, below 100 %).
pytorch-grad-cam builds it with scipy and solves it with ``spsolve``, once per channel. Here, on
the CPU, each (image, method, fraction, order) matrix is factorised once by scipy's sparse LU and
solved for all channels; on a GPU every system of a batch is solved at once on the device by
Jacobi-preconditioned conjugate gradients whose matrix-vector product is a 3×3 convolution
(hand-written: torch has no batched sparse solver). ``tests/compute/test_trust.py`` checks both
against a literal ``scipy.sparse.linalg.spsolve`` of the same system.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.methods.ranks import map_ranks
from xaidash.constants import ROAD_ORDERS

ROAD_NOISE = 0.01
ROAD_SEED = 2022
#: on the CPU, images of at least this many pixels are imputed by sparse LU rather than CG
CG_MAX_PIXELS = 40 * 40
#: (dy, dx) -> weight of the neighbour, as in the ROAD reference implementation
NEIGHBOUR_WEIGHTS: dict[tuple[int, int], float] = {
    (dy, dx): (1 / 12 if dy and dx else 1 / 6) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx
}


def _kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    k = torch.zeros(1, 1, 3, 3, dtype=dtype, device=device)
    for (dy, dx), w in NEIGHBOUR_WEIGHTS.items():
        k[0, 0, 1 + dy, 1 + dx] = w
    return k


def impute(img: Tensor, removed: Tensor, noise: Tensor | None = None, tol: float = 1e-6,
           max_iter: int | None = None, solver: str = "auto") -> Tensor:
    """Linear imputation of the ``removed`` pixels of ``img``, batched.

    ``img`` ``[N, C, H, W]``; ``removed`` ``[N, 1, H, W]`` bool (True = impute); ``noise``
    (optional) ``[N, C, H, W]`` added where removed. Every (image, channel) is one system.

    ``solver``: ``"direct"`` factorises each image's matrix once (scipy's sparse LU, shared by
    its C channels); ``"cg"`` solves all systems together on ``img``'s device by
    Jacobi-preconditioned CG until each relative residual is below ``tol`` (or ``max_iter``,
    default ``4·(H + W) + 50``, iterations); ``"auto"`` is direct on the CPU from
    ``CG_MAX_PIXELS`` up and CG otherwise. CG needs about as many iterations as a hole is wide.
    One image's 40 ROAD systems (4 methods × 2 orders × 5 fractions) on the 2-core CPU, CG vs LU:
    32 px 0.06 / 0.16 s, 48 px 0.28 / 0.22 s, 64 px 0.76 / 0.35 s, 96 px 7.8 / 0.68 s, 224 px
    116 / 4.9 s (LU with scipy's defaults; 1.7 s in symmetric mode on 2 threads, quiet machine).
    On a GPU the batched CG keeps the work on the device.
    """
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver must be auto, direct or cg, got {solver!r}")
    n, c, h, w = img.shape
    dtype = torch.float32 if img.dtype in (torch.float16, torch.bfloat16) else img.dtype
    if solver == "direct" or (solver == "auto" and img.device.type == "cpu" and h * w >= CG_MAX_PIXELS):
        filled = _solve_direct(img, removed).to(img.device, dtype)
    else:
        filled = _solve_cg(img, removed, dtype, tol, max_iter)
    if noise is not None:
        filled = filled + noise.to(img.device, dtype)
    um = removed.to(torch.bool).expand(n, c, h, w)
    return torch.where(um, filled, img.to(dtype)).to(img.dtype)


def _solve_cg(img: Tensor, removed: Tensor, dtype: torch.dtype, tol: float, max_iter: int | None) -> Tensor:
    """The solution ``[N, C, H, W]`` of every system by batched Jacobi-PCG on ``img``'s device
    (valid at the removed pixels)."""
    n, c, h, w = img.shape
    v = img.to(dtype).reshape(n * c, 1, h, w)
    u = removed.to(dtype).repeat_interleave(c, dim=0)  # [N*C, 1, H, W]
    k = _kernel(img.device, dtype)

    def conv(z: Tensor) -> Tensor:
        return F.conv2d(z, k, padding=1)

    diag = conv(torch.ones(1, 1, h, w, dtype=dtype, device=img.device))  # D_p (in-image neighbours)

    def op(z: Tensor) -> Tensor:  # A z for z supported on U
        return u * (diag * z - conv(z))

    b = u * conv(v * (1 - u))
    x = torch.zeros_like(b)
    r = b.clone()
    inv_d = u / diag
    zr = inv_d * r
    p = zr.clone()
    rz = (r * zr).sum(dim=(1, 2, 3), keepdim=True)
    bnorm = b.flatten(1).norm(dim=1).clamp_min(1e-30)
    limit = max_iter if max_iter is not None else 4 * (h + w) + 50
    for _ in range(limit):
        # planes that have converged are frozen (their step is 0): iterating on a residual of
        # ~1e-30 would divide denormals and turn the solution into NaN
        active = (r.flatten(1).norm(dim=1) / bnorm > tol).view(-1, 1, 1, 1)
        if not bool(active.any()):
            break
        ap = op(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        ok = active & (pap > 0)
        alpha = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        zr = inv_d * r
        rz_new = (r * zr).sum(dim=(1, 2, 3), keepdim=True)
        ok = active & (rz > 0)
        beta = torch.where(ok, rz_new / torch.where(ok, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = torch.where(active, zr + beta * p, p)
        rz = torch.where(active, rz_new, rz)
    return x.reshape(n, c, h, w)


def _solve_direct(img: Tensor, removed: Tensor) -> Tensor:
    """The solution ``[N, C, H, W]`` (float64, CPU; valid at the removed pixels) by one sparse LU
    factorisation per image.

    The matrix is symmetric positive definite, so SuperLU runs in symmetric mode (minimum degree
    on A + Aᵀ, no pivoting), and the images are factorised on ``torch.get_num_threads()``
    threads. One 224-px image's 40 systems on the 2-core CPU (under load): 4.38 s with scipy's
    defaults one after another, 3.93 s in symmetric mode, 2.89 s in symmetric mode on 2 threads
    (solutions equal to 4e-11)."""
    from concurrent.futures import ThreadPoolExecutor

    n, c, h, w = img.shape
    vals = img.detach().to("cpu", torch.float64).numpy().reshape(n, c, h * w)
    holes = removed.detach().to("cpu").reshape(n, h * w).numpy().astype(bool)
    out = vals.copy()
    jobs = [j for j in range(n) if holes[j].any()]
    if jobs:
        threads = max(1, min(len(jobs), torch.get_num_threads()))
        with ThreadPoolExecutor(threads) as pool:
            for j, u, sol in pool.map(lambda j: (j, *_solve_holes(vals[j], holes[j], h, w)), jobs):
                out[j][:, u] = sol
    return torch.from_numpy(out).reshape(n, c, h, w)


def _solve_holes(vals: np.ndarray, hole: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The removed pixels ``u`` of one image (``vals`` ``[C, H·W]``, ``hole`` ``[H·W]``) and their
    imputed values ``[C, |u|]``: the docstring's system, assembled for all 8 neighbours at once."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    c = vals.shape[0]
    u = np.flatnonzero(hole)
    pos = np.full(h * w, -1, dtype=np.int64)
    pos[u] = np.arange(u.size)
    ys, xs = np.divmod(u, w)
    diag = np.zeros(u.size)
    rhs = np.zeros((u.size, c))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    offs: list[np.ndarray] = []
    for (dy, dx), wt in NEIGHBOUR_WEIGHTS.items():
        yy, xx = ys + dy, xs + dx
        inside = np.flatnonzero((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))
        diag[inside] += wt
        nb = yy[inside] * w + xx[inside]
        other = pos[nb]
        in_hole = other >= 0
        rows.append(inside[in_hole])
        cols.append(other[in_hole])
        offs.append(np.full(int(in_hole.sum()), -wt))
        kept = ~in_hole
        rhs[inside[kept]] += wt * vals[:, nb[kept]].T
    idx = np.arange(u.size)
    entries = (np.concatenate([*offs, diag]), (np.concatenate([*rows, idx]), np.concatenate([*cols, idx])))
    a = csc_matrix(entries, shape=(u.size, u.size))
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    return u, lu.solve(rhs).T


def image_noise(image_id: str, shape: Sequence[int], noise: float = ROAD_NOISE) -> Tensor:
    """The seeded imputation noise of one image ``[C, H, W]`` (CPU; same on every worker)."""
    rng = np.random.default_rng([ROAD_SEED, int(image_id, 16)])
    return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(noise))


def road(model: nn.Module, x: Tensor, maps: Mapping[str, Tensor], targets: Tensor, ids: Sequence[str],
         fractions: Sequence[float], batch_size: int = 64) -> dict[str, dict[str, Tensor]]:
    """``method -> order -> [B, F]`` class-``targets`` probabilities after ROAD removal.

    ``x`` normalised ``[B, C, H, W]`` on the model's device, ``maps`` ``method -> [B, h, w]``.
    Jobs (method, image, order, fraction) are imputed and classified ``batch_size`` at a time.
    """
    b, c, hgt, wid = x.shape
    n = hgt * wid
    names = list(maps)
    if not names or b == 0 or not fractions:
        return {}
    ranks = map_ranks(maps, (hgt, wid), x.device)  # [M, B, n]
    counts = torch.tensor([int(np.floor(f * n)) for f in fractions], device=x.device)
    noise = torch.stack([image_noise(i, (c, hgt, wid)) for i in ids]).to(x.device)
    nf, no = len(fractions), len(ROAD_ORDERS)
    grid = torch.stack(torch.meshgrid(
        torch.arange(len(names), device=x.device), torch.arange(b, device=x.device),
        torch.arange(no, device=x.device), torch.arange(nf, device=x.device), indexing="ij"),
        dim=-1).reshape(-1, 4)
    out: list[Tensor] = []
    targets = targets.to(x.device)
    for start in range(0, grid.shape[0], batch_size):
        mi, bi, oi, fi = grid[start : start + batch_size].unbind(1)
        r = ranks[mi, bi]  # [J, n]
        k = counts[fi].unsqueeze(1)
        removed = torch.where((oi == 0).unsqueeze(1), r < k, r >= n - k).view(-1, 1, hgt, wid)
        # the solve is always fp32: a bf16 autocast (--precision bf16) covers the forward only
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            imputed = impute(x[bi].float(), removed, noise[bi])
        with torch.inference_mode():
            logits = model(imputed.to(x.dtype)).float()
        out.append(logits.softmax(1).gather(1, targets[bi].unsqueeze(1)).squeeze(1))
    probs = torch.cat(out).clone().view(len(names), b, no, nf)
    return {m: {o: probs[j, :, oi] for oi, o in enumerate(ROAD_ORDERS)} for j, m in enumerate(names)}
