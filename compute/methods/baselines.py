"""Trivial baseline maps, scored by the same faithfulness code as the methods.

A method is only worth its cost if it beats maps that know nothing about the model (the check
pytorch-grad-cam's metrics tutorial makes against a random map):

* ``random``: i.i.d. uniform values in ``[0, 1)`` at the target layer's resolution, from a
  generator seeded with ``(BASELINE_SEED, image_id)`` - the same map for an image in every run,
  shard and worker.
* ``centre``: a centred isotropic Gaussian at the layer's resolution,
  ``G(i, j) = exp(-((i - (h-1)/2)² + (j - (w-1)/2)²) / (2σ²))`` with ``σ = max(h, w) / 4``
  cells, min-max normalised to ``[0, 1]`` (like every method's map). Datasets whose object sits
  in the middle make this a strong opponent: a method that cannot beat it is flagged.

They go through :func:`xaidash.compute.methods.faithfulness.faithfulness` with the methods' maps (same
batches, same targets: the predicted class) and are stored in the ``baseline_faithfulness``
table, apart from the methods' ``faithfulness`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xaidash.constants import BASELINES

BASELINE_SEED = 7


def random_map(image_id: str, h: int, w: int) -> np.ndarray:
    """The seeded random baseline of one image ``[h, w]`` float32."""
    rng = np.random.default_rng([BASELINE_SEED, int(image_id, 16)])
    return rng.random((h, w), dtype=np.float32)


def centre_map(h: int, w: int) -> np.ndarray:
    """The centred Gaussian baseline ``[h, w]`` float32 in ``[0, 1]`` (all zeros for 1x1)."""
    sigma = max(h, w) / 4.0
    i = np.arange(h, dtype=np.float64)[:, None] - (h - 1) / 2.0
    j = np.arange(w, dtype=np.float64)[None, :] - (w - 1) / 2.0
    g = np.exp(-(i * i + j * j) / (2.0 * sigma * sigma))
    span = g.max() - g.min()
    return ((g - g.min()) / span if span > 0 else np.zeros_like(g)).astype(np.float32)


def baseline_maps(ids: Sequence[str], h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``baseline -> [B, h, w]`` for the images ``ids`` (keys as in ``BASELINES``)."""
    maps = {
        "random": np.stack([random_map(i, h, w) for i in ids]) if ids else np.zeros((0, h, w), np.float32),
        "centre": np.broadcast_to(centre_map(h, w), (len(ids), h, w)).copy(),
    }
    return {b: torch.from_numpy(maps[b]).to(device) for b in BASELINES}
