"""Faithfulness of an explanation map: does the network really rely on what the map highlights?

Definitions (``docs/METHODS.md``, "Faithfulness"); ``Y`` is the class-``c`` softmax
probability on the image, ``c`` the map's target class, ``x`` the *normalized* input (so 0 is the
dataset mean) and ``S = U(map)`` the map bilinearly upsampled (``align_corners=False``) to the
input size:

* **Average Drop** (Chattopadhay et al. 2018, Grad-CAM++ §4.1, https://arxiv.org/abs/1710.11063):
  ``max(0, Y - O) / Y`` with ``O`` the class-``c`` probability on ``x ∘ S``. Stored per image as a
  fraction in ``[0, 1]`` (the paper's "%" is its mean × 100; the dashboard shows percent). Lower is
  better. When ``Y == 0`` there is nothing to drop and the value is 0.
* **Increase in Confidence** (same section): ``1[O > Y]`` per image; its mean × 100 is the paper's %.
* **Deletion / Insertion AUC** (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421):
  pixels are ordered by decreasing ``S`` (ties broken by row-major pixel index, which makes the
  curve deterministic; :mod:`~xaidash.compute.methods.ranks`); at step ``i = 0..steps`` the
  first ``k_i = floor(i·n/steps)`` pixels of the order (all channels of a pixel together) are
  removed - set to the dataset mean, 0 in normalized space - for deletion, or restored into a
  blurred copy of the image for insertion. The score is the class-``c`` probability; the AUC is
  the trapezoid rule over the fraction of pixels ``k_i/n`` in ``[0, 1]`` (``steps + 1``
  points). Deletion: lower is better; insertion: higher is better.

The insertion start image follows RISE's reference evaluation: a Gaussian blur with an 11×11
kernel and ``σ = 5`` pixels applied to the normalized tensor with zero padding (so borders blend
towards the dataset mean, as RISE's ``conv2d(..., padding=klen//2)`` does). Both are parameters.

Speed: every perturbed image of every method and several images goes through the network in
large batches under ``torch.inference_mode()``; the curve end points that do not depend on the map
(original, all-mean and blurred images) are evaluated once per image and shared by all methods.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.methods.ranks import map_ranks, upsample_maps

__all__ = [
    "BLUR_KERNEL",
    "BLUR_SIGMA",
    "SCORES",
    "average_drop_increase",
    "class_probabilities",
    "deletion_insertion",
    "faithfulness",
    "gaussian_blur",
]

#: The scores :func:`faithfulness` gives every map (the faithfulness tables' score columns).
SCORES: tuple[str, ...] = ("drop", "increase", "deletion_auc", "insertion_auc")

#: RISE's reference insertion blur (``gkern(klen=11, nsig=5)``).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def gaussian_blur(x: Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with zero padding (0 = dataset mean).

    Kernel ``k(t) ∝ exp(-t² / (2σ²))`` for ``t = -(K//2) .. K//2``, normalized to sum 1; the 2-D
    kernel is its outer product (separable, so two 1-D convolutions). ``kernel_size`` must be odd.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if kernel_size == 1:
        return x.clone()
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    k1 = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    k1 = (k1 / k1.sum()).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    kh = k1.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size)
    kv = k1.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1)
    y = F.conv2d(x, kh, padding=(0, half), groups=c)
    return F.conv2d(y, kv, padding=(half, 0), groups=c)


def class_probabilities(model: nn.Module, x: Tensor, classes: Tensor, batch_size: int = 256) -> Tensor:
    """``softmax(model(x))[i, classes[i]]`` for a big ``x``, in batches, under inference mode."""
    out: list[Tensor] = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size]).float()
            cls = classes[start : start + batch_size].to(logits.device).unsqueeze(1)
            out.append(logits.softmax(dim=1).gather(1, cls).squeeze(1))
    if not out:
        return torch.zeros(0, device=x.device)
    return torch.cat(out).clone()  # a normal (non-inference) tensor


def _base_probs(model: nn.Module, x: Tensor, targets: Tensor, base_probs: Tensor | None,
                batch_size: int) -> Tensor:
    if base_probs is None:
        return class_probabilities(model, x, targets, batch_size)
    base = base_probs.to(x.device).float()
    if base.dim() == 2:  # full probability rows [B, C]
        base = base.gather(1, targets.to(x.device).unsqueeze(1)).squeeze(1)
    return base


def average_drop_increase(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor,
    base_probs: Tensor | None = None,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Average Drop (fraction in ``[0, 1]``) and Increase in Confidence (0/1), each ``[B]``.

    ``x`` normalized ``[B, C, H, W]``; ``maps`` ``[B, h, w]`` in ``[0, 1]``; ``base_probs`` is
    ``Y``, either ``[B]`` (class-``c`` probabilities) or ``[B, C]`` (full softmax rows); computed
    with one forward when ``None``.
    """
    y = _base_probs(model, x, targets, base_probs, batch_size)
    explained = x * upsample_maps(maps.to(x.device), (x.shape[-2], x.shape[-1])).to(x.dtype)
    o = class_probabilities(model, explained, targets, batch_size)
    return _drop_increase(y, o)


def _drop_increase(y: Tensor, o: Tensor) -> tuple[Tensor, Tensor]:
    drop = torch.where(y > 0, (y - o).clamp_min(0) / torch.where(y > 0, y, torch.ones_like(y)),
                       torch.zeros_like(y))
    return drop, (o > y).float()


def _step_counts(n: int, steps: int) -> Tensor:
    """``k_i = floor(i·n/steps)``, ``i = 0..steps``: pixels removed/restored after step ``i``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.div(torch.arange(steps + 1, dtype=torch.long) * n, steps, rounding_mode="floor")


def _curves(
    model: nn.Module,
    x: Tensor,
    maps: Mapping[str, Tensor],
    targets: Tensor,
    steps: int,
    batch_size: int,
    base: Tensor,
    insertion_baseline: Tensor,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Deletion and insertion curves ``[B, steps+1]`` per method, all methods batched together."""
    b, _, hgt, wid = x.shape
    n = hgt * wid
    ks = _step_counts(n, steps).to(x.device)
    names = list(maps)
    m = len(names)
    ranks = map_ranks(maps, (hgt, wid), x.device)  # [M, B, n]

    # End points do not depend on the map: p(x), p(all mean) and p(blur) once per image.
    ends = torch.cat([torch.zeros_like(x), insertion_baseline])
    p_ends = class_probabilities(model, ends, torch.cat([targets, targets]), batch_size)
    p_zero, p_blur = p_ends[:b], p_ends[b:]

    # Interior points: jobs (method, image, step, kind) with step in 1..steps-1.
    inner = steps - 1
    scores = torch.empty(m, b, 2, inner, device=x.device)
    if inner > 0:
        grid = torch.stack(torch.meshgrid(
            torch.arange(m, device=x.device), torch.arange(b, device=x.device),
            torch.arange(2, device=x.device), torch.arange(1, steps, device=x.device), indexing="ij",
        ), dim=-1).reshape(-1, 4)
        xf = x.flatten(2)  # [B, C, n]
        basef = insertion_baseline.flatten(2)
        out: list[Tensor] = []
        with torch.inference_mode():
            for start in range(0, grid.shape[0], batch_size):
                job = grid[start : start + batch_size]
                mi, bi, kind, si = job.unbind(1)
                changed = (ranks[mi, bi] < ks[si].unsqueeze(1)).unsqueeze(1)  # [J, 1, n]
                src = xf[bi]
                insertion = (kind == 1).view(-1, 1, 1)
                # Deletion: changed pixels -> 0 (mean), others x. Insertion: changed -> x,
                # others -> blurred image.
                img = torch.where(changed, torch.where(insertion, src, torch.zeros_like(src)),
                                  torch.where(insertion, basef[bi], src))
                logits = model(img.view(-1, *x.shape[1:])).float()
                out.append(logits.softmax(1).gather(1, targets[bi].unsqueeze(1)).squeeze(1))
        scores = torch.cat(out).clone().view(m, b, 2, inner)

    result: dict[str, tuple[Tensor, Tensor]] = {}
    for j, name in enumerate(names):
        deletion = torch.cat([base.unsqueeze(1), scores[j, :, 0], p_zero.unsqueeze(1)], dim=1)
        insertion = torch.cat([p_blur.unsqueeze(1), scores[j, :, 1], base.unsqueeze(1)], dim=1)
        result[name] = (deletion, insertion)
    return result


def _auc(curve: Tensor, ks: Tensor, n: int) -> Tensor:
    """Trapezoid rule over the fraction of pixels ``k_i / n``."""
    frac = ks.to(device=curve.device, dtype=torch.float64) / n
    return torch.trapezoid(curve.double(), frac, dim=-1).float()


def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Tensor,
    steps: int = 16,
    batch_size: int = 256,
    base_probs: Tensor | None = None,
    insertion_baseline: Tensor | None = None,
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
) -> tuple[Tensor, Tensor]:
    """Deletion AUC and Insertion AUC (RISE), each ``[B]``; see the module docstring.

    ``insertion_baseline`` (default: :func:`gaussian_blur` of ``x`` with ``blur_kernel`` /
    ``blur_sigma``) is the image insertion starts from.
    """
    res = _deletion_insertion_many(model, x, {"m": maps}, targets, steps, batch_size, base_probs,
                                   insertion_baseline, blur_kernel, blur_sigma)
    return res["m"]


def _deletion_insertion_many(
    model: nn.Module,
    x: Tensor,
    maps: Mapping[str, Tensor],
    targets: Tensor,
    steps: int,
    batch_size: int,
    base_probs: Tensor | None,
    insertion_baseline: Tensor | None,
    blur_kernel: int,
    blur_sigma: float,
) -> dict[str, tuple[Tensor, Tensor]]:
    targets = targets.to(x.device)
    base = _base_probs(model, x, targets, base_probs, batch_size)
    if insertion_baseline is None:
        insertion_baseline = gaussian_blur(x, blur_kernel, blur_sigma)
    curves = _curves(model, x, maps, targets, steps, batch_size, base, insertion_baseline.to(x.device))
    n = x.shape[-2] * x.shape[-1]
    ks = _step_counts(n, steps)
    return {k: (_auc(d, ks, n), _auc(i, ks, n)) for k, (d, i) in curves.items()}


def faithfulness(
    model: nn.Module,
    x: Tensor,
    maps: Mapping[str, Tensor],
    targets: Tensor,
    steps: int = 16,
    batch_size: int = 256,
    base_probs: Tensor | None = None,
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
) -> dict[str, dict[str, Tensor]]:
    """All four metrics for every method: ``method -> {"drop", "increase", "deletion_auc",
    "insertion_auc"}``, each ``[B]`` float32.

    ``x`` normalized ``[B, C, H, W]`` on the model's device; ``maps`` ``method -> [B, h, w]`` in
    ``[0, 1]`` at native resolution; ``targets`` ``[B]`` the class each map explains. The model
    must be in eval mode. All methods' perturbed images are batched together.
    """
    if model.training:
        raise RuntimeError("faithfulness needs the model in eval mode (call model.eval())")
    targets = targets.to(x.device)
    names = list(maps)
    if not names:
        return {}
    y = _base_probs(model, x, targets, base_probs, batch_size)
    b = x.shape[0]
    size = (x.shape[-2], x.shape[-1])
    # Average Drop / Increase: one batch with x ∘ U(map) of every method.
    explained = torch.cat([x * upsample_maps(maps[k].to(x.device), size).to(x.dtype) for k in names])
    o = class_probabilities(model, explained, targets.repeat(len(names)), batch_size).view(len(names), b)
    aucs = _deletion_insertion_many(model, x, maps, targets, steps, batch_size, y, None,
                                    blur_kernel, blur_sigma)
    out: dict[str, dict[str, Tensor]] = {}
    for j, name in enumerate(names):
        drop, inc = _drop_increase(y, o[j])
        out[name] = dict(zip(SCORES, (drop, inc, aucs[name][0], aucs[name][1]), strict=True))
    return out
