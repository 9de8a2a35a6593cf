"""Precision policy: exact where it is cheap, bf16 where the cost is, and the deviation measured.

* The gradient trio, predictions and embeddings are always fp32 (one forward + one backward).
* ``--precision bf16`` applies to the forward-only bulk only: Score-CAM's masked forwards and the
  faithfulness forwards, the baselines' and ROAD's included (:func:`forward_only_precision`), on
  a BatchNorm-folded channels-last copy of the model (:func:`masked_forward_model`).
* Every bf16 run measures its own deviation: :func:`measure_deviation` recomputes Score-CAM and
  the faithfulness scores of a stratified calibration sample in fp32 and in bf16 and records the
  max and median |Δmap| and |Δscore| in the run (``runs.precision_json``).
* On CUDA, TF32 is switched off for the fp32 path (:func:`xaidash.compute.device.configure_device`):
  on Ampere and newer GPUs cuDNN convolutions use TF32 by default, which would silently make
  "fp32" maps bf16-like.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xaidash.compute.datasets.imageset import ImageSet, collate
from xaidash.compute.datasets.sources import Item, subsample
from xaidash.compute.methods.cams import folded_copy
from xaidash.compute.methods.faithfulness import SCORES, faithfulness
from xaidash.compute.pipeline.plan import JobPlan

log = logging.getLogger(__name__)

#: Images of the calibration sample of a bf16 run (stratified by class, deterministic).
CALIBRATION_IMAGES = 16
#: The faithfulness scores whose bf16 deviation is measured: all but "increase", a 0/1 indicator
#: (its |Δ| would be 0 or 1, not a deviation on the scores' scale).
CALIBRATED_SCORES = tuple(s for s in SCORES if s != "increase")


def forward_only_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast for the forward-only stages in ``precision`` (a no-op for fp32).

    Predictions, embeddings, CAM, Grad-CAM and Grad-CAM++ come from one fp32 forward and
    backward and stay fp32 always: they are cheap, and exactness is the product's promise.
    ``--precision bf16`` governs only the bulk that costs: Score-CAM's masked forwards (512 per
    image for a ResNet-18) and the faithfulness forwards (baselines and ROAD included). Every
    bf16 run measures what that costs in deviation (:func:`measure_deviation`).
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_FOLDED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], nn.Module]] = (
    weakref.WeakKeyDictionary())


def _weights_state(model: nn.Module) -> tuple[object, ...] | None:
    """Which tensors the model holds, where their memory is, their dtype and device, and how often
    each was changed in place (torch bumps ``_version`` on in-place writes through autograd-visible
    views; a write through ``.data`` or an in-place ``.to()`` is caught by the storage pointer or
    dtype only when they change). None when a tensor tracks no version (made under
    ``torch.inference_mode``): such a model is not cached."""
    tensors = (*model.parameters(), *model.buffers())
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((id(t), t.data_ptr(), t.dtype, t.device, t._version) for t in tensors)


def masked_forward_model(model: nn.Module, precision: str) -> nn.Module:
    """The model the forward-only bulk runs on: ``model`` itself in fp32 (exact, same numbers as
    the gradient pass); in bf16 a BatchNorm-folded channels-last copy (:func:`folded_copy`),
    whose deviation from fp32 is part of what the run's calibration measures.

    The copy is made once per model and weights (about 0.1 s for ResNet-18; every val chunk,
    the calibration and the speed-up hint ask for it): a model whose weights were changed or
    replaced since (the sanity check's cascade re-initialises one copy step by step) gets a
    new copy."""
    if precision != "bf16":
        return model
    state = _weights_state(model)
    hit = _FOLDED.get(model)
    if state is not None and hit is not None and hit[0] == state:
        return hit[1]
    copy_ = folded_copy(model)
    if state is not None:
        _FOLDED[model] = (state, copy_)
    return copy_


#: Share of the free GPU memory the masked-forward batches may take (the rest: the model, the
#: allocator's fragmentation, the faithfulness curves next to them).
GPU_MEMORY_SHARE = 0.5
MAX_MASKED_BATCH = 4096


def masked_batch_size(plan: JobPlan, x: torch.Tensor) -> int:
    """Images per masked forward (Score-CAM, faithfulness).

    On CPU the batch only needs to amortise per-call overhead: ``max(--batch-size, 32)`` (32 was
    the fastest of 16/32/64 for ResNet-18 at 224 px on the 2-core dev CPU; larger batches fall out
    of its cache: 15.8 vs 15.9 ms/img fp32, 6.0 vs 6.5 bf16 folded). On CUDA
    it is chosen from the free memory: one masked forward of a single image is measured (peak
    bytes above the current allocation) and the batch takes ``GPU_MEMORY_SHARE`` of what is free.
    """
    floor = max(plan.cfg.batch_size, 32)
    if plan.device.type != "cuda":
        return floor
    free, _ = torch.cuda.mem_get_info(plan.device)
    torch.cuda.synchronize(plan.device)
    base = torch.cuda.memory_allocated(plan.device)
    torch.cuda.reset_peak_memory_stats(plan.device)
    with torch.inference_mode(), forward_only_precision(plan.cfg.precision, plan.device):
        plan.model(x[:1])
    per_image = max(1, torch.cuda.max_memory_allocated(plan.device) - base)
    return int(max(floor, min(MAX_MASKED_BATCH, GPU_MEMORY_SHARE * free // per_image)))


@dataclass(frozen=True)
class Deviation:
    """bf16 against fp32 on the calibration sample: per-image max |Δ| of the Score-CAM maps
    (max and median over images) and |Δ| of every faithfulness score (max and median)."""

    images: int
    max_abs_dmap: float
    median_abs_dmap: float
    max_abs_dscore: float
    median_abs_dscore: float

    def as_dict(self) -> dict[str, float | int]:
        return {"images": self.images, "max_abs_dmap": round(self.max_abs_dmap, 6),
                "median_abs_dmap": round(self.median_abs_dmap, 6),
                "max_abs_dscore": round(self.max_abs_dscore, 6),
                "median_abs_dscore": round(self.median_abs_dscore, 6)}


def calibration_items(plan: JobPlan, n: int = CALIBRATION_IMAGES) -> list[Item]:
    return subsample(list(plan.val_items), n, seed=0)


def measure_deviation(plan: JobPlan, items: Sequence[Item]) -> Deviation | None:
    """Score-CAM maps and faithfulness scores of ``items`` in fp32 and in bf16, compared.

    The same inputs, the same fp32 gradient forward (the class explained, the activations), the
    same maps fed to faithfulness: only the forward-only stages change precision, as in the run.
    None when there is nothing forward-only to compare (neither Score-CAM nor faithfulness).
    """
    cfg = plan.cfg
    if "scorecam" not in plan.methods and not cfg.faithfulness:
        return None
    ds = ImageSet(plan.dataset, items, plan.parts.preprocessing.transform(train=False))
    batch = collate([ds[i] for i in range(len(ds))])
    if batch.x is None:
        return None
    x = plan.to_device(batch.x)
    bs = masked_batch_size(plan, x)
    # what each precision's run uses for its forward-only bulk, built before the engine hooks
    bulk = {p: masked_forward_model(plan.model, p) for p in ("fp32", "bf16")}
    with plan.cam_engine() as engine:
        res = engine.forward(x, [m for m in plan.methods if m != "scorecam"])
        pred = res.targets["pred"]
        maps: dict[str, dict[str, torch.Tensor]] = {}
        for precision in ("fp32", "bf16"):
            m = {k: v for (k, kind), v in res.maps.items() if kind == "pred"}
            if "scorecam" in plan.methods:
                with forward_only_precision(precision, plan.device):
                    m["scorecam"] = engine.scorecam(x, res.activations, pred, batch_size=bs,
                                                    max_channels=cfg.scorecam_max_channels,
                                                    channels_last=plan.masked_channels_last,
                                                    masked_model=bulk[precision]).float()
            maps[precision] = m
    dmap = np.zeros(0)
    if "scorecam" in plan.methods:
        d = (maps["bf16"]["scorecam"] - maps["fp32"]["scorecam"]).abs().flatten(1).amax(1)
        dmap = d.cpu().numpy()
    dscore = np.zeros(0)
    if cfg.faithfulness:
        scores = {}
        for precision in ("fp32", "bf16"):
            with forward_only_precision(precision, plan.device):
                # the fp32 maps in both: what changes is the precision of the forwards alone
                scores[precision] = faithfulness(bulk[precision], x, maps["fp32"], pred,
                                                 steps=cfg.faithfulness_steps, batch_size=bs)
        diffs = [(scores["bf16"][m][k].float() - scores["fp32"][m][k].float()).abs().cpu().numpy()
                 for m in scores["fp32"] for k in CALIBRATED_SCORES]
        dscore = np.concatenate(diffs) if diffs else dscore
    return Deviation(
        images=len(batch.index),
        max_abs_dmap=float(dmap.max()) if dmap.size else 0.0,
        median_abs_dmap=float(np.median(dmap)) if dmap.size else 0.0,
        max_abs_dscore=float(dscore.max()) if dscore.size else 0.0,
        median_abs_dscore=float(np.median(dscore)) if dscore.size else 0.0,
    )


# --------------------------------------------------------------------------------------------
# what the hardware can do


def bf16_hardware(device: torch.device) -> str | None:
    """The bf16 unit that makes ``--precision bf16`` pay off here, or None."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX-512-BF16"
    return None


def bf16_speedup(plan: JobPlan, x: torch.Tensor) -> float:
    """Measured: masked-forward throughput in bf16 over fp32 on this batch (one warm-up each),
    each precision on the model its run would use (:func:`masked_forward_model`)."""
    models = {p: masked_forward_model(plan.model, p) for p in ("fp32", "bf16")}
    times: dict[str, float] = {}
    with torch.inference_mode():
        for precision in ("fp32", "bf16", "fp32", "bf16"):  # the first of each warms up
            with forward_only_precision(precision, plan.device):
                t0 = time.perf_counter()
                models[precision](x)
                if plan.device.type == "cuda":
                    torch.cuda.synchronize(plan.device)
                times[precision] = time.perf_counter() - t0
    return times["fp32"] / max(times["bf16"], 1e-9)
