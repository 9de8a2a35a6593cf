"""The order in which the pixel-removal metrics take pixels: each map bilinearly upsampled to the
input (``align_corners=False``), its pixels ranked by decreasing value, ties by row-major index.

Deletion / insertion (:mod:`~xaidash.compute.methods.faithfulness`), ROAD
(:mod:`~xaidash.compute.methods.road`) and the localisation scores
(:mod:`~xaidash.compute.methods.localisation`) all use it, so "the k most relevant pixels" of a
map are the same pixels in every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["map_ranks", "pixel_ranks", "upsample_maps"]


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` maps -> ``[B, 1, H, W]`` by bilinear interpolation (``align_corners=False``).

    Bilinear weights are convex, so maps in ``[0, 1]`` stay in ``[0, 1]``; an identity resize
    (``h, w == H, W``) returns the map unchanged.
    """
    m = maps.unsqueeze(1).float()
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def pixel_ranks(saliency: Tensor) -> Tensor:
    """Position of every pixel in the order of decreasing saliency ``[B, n]``: ``[B, n]`` long.

    ``torch.sort(stable=True, descending=True)`` keeps equal values in index order, so ties are
    broken by row-major pixel index - deterministic on every device.
    """
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def map_ranks(maps: Mapping[str, Tensor], size: Sequence[int], device: torch.device) -> Tensor:
    """The pixel ranks of every method's maps at the input ``size`` ``(H, W)``: ``[M, B, H·W]``
    long, methods in the order of ``maps``."""
    hw = (int(size[0]), int(size[1]))
    return torch.stack([pixel_ranks(upsample_maps(m.to(device), hw).flatten(1)) for m in maps.values()])
