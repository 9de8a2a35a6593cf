"""Pixel-level attributions through Captum, for a sample of validation images.

Three methods, computed with Captum's classes (a well-kept library; its IG and NoiseTunnel are the
reference implementations the papers' authors' code was folded into), for one target class ``c``
per map (the predicted class; also the true class of a wrong prediction with ``--explain pred,true``):

* ``ig_black`` - **Integrated Gradients** (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365),
  ``IG_i(x) = (x_i - x'_i) · ∫_0^1 ∂F_c(x' + α(x - x'))/∂x_i dα`` from the black image ``x'`` (pixel
  value 0 in ``[0, 1]`` RGB, i.e. ``-mean/std`` per channel in the normalised input), the integral by
  Captum's Gauss-Legendre rule with ``ig_steps`` points (recorded in the run). Completeness:
  ``Σ_i IG_i = F_c(x) - F_c(x')`` up to the quadrature error (``tests/compute/methods/test_attributions.py``
  checks 1 %). ``F_c`` is the logit of class ``c``.
* ``ig_blur`` - the same from a **blurred copy of the image** (Sturmfels et al. 2020, "Visualizing the
  Impact of Feature Attribution Baselines", https://distill.pub/2020/attribution-baselines/): the blur
  of the insertion metric, :func:`~xaidash.compute.methods.faithfulness.gaussian_blur` - an 11 × 11
  Gaussian, ``σ = 5`` input pixels, applied to the normalised tensor with zero padding (RISE's
  reference blur) - so "what the blur removed" is what both IG and Insertion AUC measure.
* ``smoothgrad`` - **SmoothGrad** (Smilkov et al. 2017, https://arxiv.org/abs/1706.03825): Captum's
  ``NoiseTunnel`` over ``Saliency`` (``|∂F_c/∂x|``), the mean over ``smoothgrad_samples`` copies of the
  image with Gaussian noise of standard deviation ``σ = noise · (x_max - x_min)``, ``noise = 0.15``
  (the paper finds 10-20 % best); ``x_max - x_min`` is the range of a ``[0, 1]`` pixel after the run's
  normalisation, ``1/std`` averaged over the channels, so σ is the same for every image and batch. The
  noise is drawn from a generator seeded with the image id: every chunk, shard and worker of one device
  type gives the same map.

**Reduction to a stored map** (within 8 KB per image and method; ``docs/METHODS.md``):

1. channels: IG is *summed* over the colour channels with its sign - the sum keeps completeness per
   pixel (a pixel's share of ``F_c(x) - F_c(x')``) and the sign says evidence for (+) or against (-)
   the class; SmoothGrad's values are magnitudes already (``Saliency(abs=True)``), so their sum over
   channels is the L1 norm of the pixel's gradient;
2. space: area (average) pooled to a ``grid × grid`` map (:data:`~xaidash.constants.ATTRIBUTION_GRID`,
   32: 32 × 32 float32 = 4 KB; inputs smaller than the grid keep their own size); averaging keeps the
   additive meaning of (1) within each cell, where taking every k-th pixel would alias;
3. values: min-max normalised to ``[0, 1]`` like the CAMs
   (:func:`~xaidash.compute.methods.cams.minmax_normalize`), without a ReLU, as CAM (Zhou et al.) has
   none: the most positive cell becomes 1 and the most negative 0, so the pixel-removal metrics
   (deletion, ROAD MoRF / LeRF) take the strongest evidence for the class first and the strongest
   evidence against it last. A constant map becomes all zeros.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from torch import Tensor, nn

from xaidash.compute.methods.cams import minmax_normalize
from xaidash.compute.methods.faithfulness import BLUR_KERNEL, BLUR_SIGMA, gaussian_blur
from xaidash.constants import (
    ATTRIBUTION_GRID,
    ATTRIBUTION_IG_STEPS,
    ATTRIBUTION_METHODS,
    ATTRIBUTION_SMOOTHGRAD_SAMPLES,
)
from xaidash.errors import UserError, choices_error

__all__ = [
    "DEFAULT_IG_STEPS",
    "DEFAULT_SMOOTHGRAD_SAMPLES",
    "SMOOTHGRAD_NOISE",
    "AttributionSettings",
    "Attributor",
    "black_baseline",
    "reduce_attribution",
]

DEFAULT_IG_STEPS = ATTRIBUTION_IG_STEPS
DEFAULT_SMOOTHGRAD_SAMPLES = ATTRIBUTION_SMOOTHGRAD_SAMPLES
#: σ of SmoothGrad's noise as a fraction of the input range (Smilkov et al. 2017, §4: 10-20 %)
SMOOTHGRAD_NOISE = 0.15
#: mixed with each image id into the seed of its SmoothGrad noise
ATTRIBUTION_SEED = 20170612
#: rows (images x IG points) per batched forward + backward: 32 at 224 px (one image's 32 points;
#: an activation budget of about 32 224-px images), more at smaller inputs, at most 512. At the demo's
#: 32 px, 8 images in one call took a third of the time of 8 calls (ResNet-18, 16 points, the 2-core
#: CPU, loaded: 4.9 s against 8.0-14.4 s; the same attributions, bit for bit)
IG_ROW_PIXELS = 32 * 224 * 224
IG_MAX_ROWS = 512
#: the maps are signed (IG: evidence for and against) or magnitudes (SmoothGrad)
SIGNED: Mapping[str, bool] = {"ig_black": True, "ig_blur": True, "smoothgrad": False}


@dataclass(frozen=True)
class AttributionSettings:
    """What the attributions of a run are computed with (recorded in its config)."""

    methods: tuple[str, ...] = ATTRIBUTION_METHODS
    ig_steps: int = DEFAULT_IG_STEPS
    smoothgrad_samples: int = DEFAULT_SMOOTHGRAD_SAMPLES
    smoothgrad_noise: float = SMOOTHGRAD_NOISE
    grid: int = ATTRIBUTION_GRID

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in ATTRIBUTION_METHODS:
                raise choices_error("attribution method", m, ATTRIBUTION_METHODS)
        if self.ig_steps < 2:
            raise UserError(f"--ig-steps must be >= 2, got {self.ig_steps}")
        if self.smoothgrad_samples < 1:
            raise UserError(f"--smoothgrad-samples must be >= 1, got {self.smoothgrad_samples}")
        if not 0 < self.smoothgrad_noise < 1:
            raise UserError(f"the SmoothGrad noise level must be in (0, 1), got {self.smoothgrad_noise}")
        if self.grid < 1:
            raise UserError(f"the attribution grid must be >= 1, got {self.grid}")

    def record(self, std: Sequence[float]) -> dict[str, object]:
        """The run's record of how its attributions were made (``std``: the normalisation's)."""
        return {
            "methods": list(self.methods),
            "ig_steps": self.ig_steps,
            "ig_method": "gausslegendre",
            "ig_blur": {"kernel": BLUR_KERNEL, "sigma_px": BLUR_SIGMA},
            "smoothgrad_samples": self.smoothgrad_samples,
            "smoothgrad_noise": self.smoothgrad_noise,
            "smoothgrad_sigma": round(self.smoothgrad_noise * input_range(std), 6),
            "grid": self.grid,
            "reduction": "IG: signed sum over channels; SmoothGrad: sum of |grad| over channels; "
                         "area-pooled to the grid; min-max to [0, 1]",
        }


def input_range(std: Sequence[float]) -> float:
    """``x_max - x_min`` of a normalised input: a ``[0, 1]`` pixel spans ``1/std`` per channel."""
    if not std:
        raise ValueError("std is empty")
    return float(sum(1.0 / s for s in std) / len(std))


def black_baseline(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The black image (RGB 0) in the normalised space of ``x`` ``[B, C, H, W]``: ``-mean/std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (-m / s).expand_as(x).contiguous()


def reduce_attribution(attr: Tensor, signed: bool, grid: int = ATTRIBUTION_GRID) -> Tensor:
    """``[B, C, H, W]`` attributions -> ``[B, g, g]`` maps in ``[0, 1]`` (module docstring, steps 1-3).

    ``g = min(grid, H)`` by ``min(grid, W)``: an input smaller than the grid keeps its size.
    """
    agg = attr.float().sum(1) if signed else attr.float().abs().sum(1)
    size = (min(grid, agg.shape[-2]), min(grid, agg.shape[-1]))
    pooled = F.adaptive_avg_pool2d(agg.unsqueeze(1), size).squeeze(1)
    return minmax_normalize(pooled)


def _image_seed(image_id: str) -> int:
    digest = hashlib.sha256(f"{ATTRIBUTION_SEED}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class Attributor:
    """The attributions of one model: :meth:`raw` for one image and method, :meth:`maps` for a batch.

    ``model`` gives logits and must be in eval mode; only the input is differentiated (the
    parameters may have ``requires_grad=False``, as the run's inference model has). ``mean`` /
    ``std`` are the run's normalisation (they define the black baseline and SmoothGrad's σ).
    """

    def __init__(self, model: nn.Module, settings: AttributionSettings, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if model.training:
            raise RuntimeError("attributions need the model in eval mode (call model.eval())")
        self.model = model
        self.settings = settings
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.sigma = settings.smoothgrad_noise * input_range(std)
        self._ig = IntegratedGradients(model)
        self._smooth = NoiseTunnel(Saliency(model))

    def baseline(self, method: str, x: Tensor) -> Tensor:
        """IG's baseline of ``x`` for ``method`` (black or blurred)."""
        if method == "ig_black":
            return black_baseline(x, self.mean, self.std)
        if method == "ig_blur":
            return gaussian_blur(x)
        raise ValueError(f"{method!r} has no baseline")

    def integrated_gradients(self, method: str, x: Tensor, targets: Tensor) -> Tensor:
        """IG ``[B, C, H, W]`` of images ``x`` for ``targets`` ``[B]``, all in one Captum call (its
        internal batches hold every image at some of the points: the same numbers as one call per image,
        at a fraction of the per-call overhead on small inputs)."""
        x = x.detach().float().contiguous()
        steps = self.settings.ig_steps
        out = self._ig.attribute(x, baselines=self.baseline(method, x), target=targets.to(x.device),
                                 n_steps=steps, method="gausslegendre",
                                 internal_batch_size=max(x.shape[0], x.shape[0] * steps))
        assert isinstance(out, Tensor)
        return out.detach()

    def raw(self, method: str, x: Tensor, target: int, image_id: str) -> Tensor:
        """Attributions ``[1, C, H, W]`` of one image ``x`` ``[1, C, H, W]`` for class ``target``."""
        x = x.detach().float().contiguous()
        s = self.settings
        if method in ("ig_black", "ig_blur"):
            return self.integrated_gradients(method, x, torch.tensor([target], device=x.device))
        if method == "smoothgrad":
            cuda = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(_image_seed(image_id))
                out = self._smooth.attribute(x, nt_type="smoothgrad", nt_samples=s.smoothgrad_samples,
                                             nt_samples_batch_size=s.smoothgrad_samples, stdevs=self.sigma,
                                             target=target, abs=True)
            assert isinstance(out, Tensor)
            return out.detach()
        raise choices_error("attribution method", method, ATTRIBUTION_METHODS)

    def maps(self, x: Tensor, targets: Tensor, ids: Sequence[str]) -> dict[str, Tensor]:
        """``method -> [B, g, g]`` maps of the images ``x`` ``[B, C, H, W]`` for ``targets`` ``[B]``.

        IG takes groups of images whose points fit :data:`IG_ROW_PIXELS` (one image at 224 px);
        SmoothGrad one image at a time, its noise seeded by the image id. The result of an image does
        not depend on which other images share its batch.
        """
        if x.shape[0] != len(ids) or targets.shape[0] != len(ids):
            raise ValueError(f"{x.shape[0]} images, {targets.shape[0]} targets and {len(ids)} ids")
        s = self.settings
        rows_budget = min(IG_MAX_ROWS, max(s.ig_steps, IG_ROW_PIXELS // max(1, x.shape[-2] * x.shape[-1])))
        group = max(1, rows_budget // s.ig_steps)
        out: dict[str, Tensor] = {}
        for m in s.methods:
            if m in ("ig_black", "ig_blur"):
                parts = [self.integrated_gradients(m, x[i : i + group], targets[i : i + group])
                         for i in range(0, len(ids), group)]
            else:
                parts = [self.raw(m, x[i : i + 1], int(targets[i]), ids[i]) for i in range(len(ids))]
            out[m] = (reduce_attribution(torch.cat(parts), SIGNED[m], s.grid) if parts
                      else torch.zeros(0, 1, 1, device=x.device))
        return out
