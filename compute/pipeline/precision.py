"""Precision policy: exact where it is cheap, bf16 where the cost is, and the deviation measured.

* The gradient trio, predictions and embeddings are always fp32 (one forward + one backward).
* ``--precision bf16`` applies to the forward-only bulk only: Score-CAM's masked forwards and the
  faithfulness forwards (:func:`xaidash.compute.pipeline.chunk.forward_only_precision`).
* Every bf16 run measures its own deviation: :func:`measure_deviation` recomputes Score-CAM and
  the faithfulness scores of a stratified calibration sample in fp32 and in bf16 and records the
  max and median |Δmap| and |Δscore| in the run (``runs.precision_json``).
* On CUDA, TF32 is switched off for the fp32 path (:func:`configure_device`): on Ampere and newer
  GPUs cuDNN convolutions use TF32 by default, which would silently make "fp32" maps bf16-like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xaidash.compute.datasets.imageset import ImageSet, collate
from xaidash.compute.datasets.sources import Item, subsample
from xaidash.compute.pipeline.chunk import forward_only_precision, masked_batch_size, masked_forward_model

if TYPE_CHECKING:
    from xaidash.compute.pipeline.plan import JobPlan

log = logging.getLogger(__name__)

#: Images of the calibration sample of a bf16 run (stratified by class, deterministic).
CALIBRATION_IMAGES = 16
_SCORES = ("drop", "deletion_auc", "insertion_auc")


def configure_device(device: torch.device) -> dict[str, object]:
    """Make fp32 mean fp32 on ``device``; returns the settings the run records."""
    if device.type != "cuda":
        return {"tf32": None}  # no TF32 on CPUs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"tf32": False}


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
        from xaidash.compute.methods.faithfulness import faithfulness

        scores = {}
        for precision in ("fp32", "bf16"):
            with forward_only_precision(precision, plan.device):
                # the fp32 maps in both: what changes is the precision of the forwards alone
                scores[precision] = faithfulness(bulk[precision], x, maps["fp32"], pred,
                                                 steps=cfg.faithfulness_steps, batch_size=bs)
        diffs = [(scores["bf16"][m][k].float() - scores["fp32"][m][k].float()).abs().cpu().numpy()
                 for m in scores["fp32"] for k in _SCORES]
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
