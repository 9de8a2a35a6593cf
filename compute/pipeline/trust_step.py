""""Can I trust these maps?" inside the per-chunk function.

The hook :mod:`xaidash.compute.pipeline.chunk` calls.

:class:`TrustWork` holds the four tables of one chunk and fills them from each val batch:

* ``baseline_faithfulness`` - the trivial maps of :mod:`~xaidash.compute.methods.baselines` scored by
  :func:`~xaidash.compute.methods.faithfulness.faithfulness` (every image with faithfulness on);
* ``road`` - :mod:`~xaidash.compute.methods.road` for the images of ``plan.road_ids`` (all by default);
* ``localisation`` - :mod:`~xaidash.compute.methods.localisation` for the images with ground truth;
* ``sanity`` - :mod:`~xaidash.compute.methods.sanity` for the images of ``plan.sanity_ids``: their
  inputs, targets and trained maps are kept during the batches and the randomised networks run
  once per chunk, in :meth:`TrustWork.finish`, after the chunk's CAM engine has removed its
  hook (a deep copy of a hooked model would copy the hook).

Each part's wall time is a stage of the chunk's timer (``val_baselines``, ``val_road``,
``val_localisation``, ``val_sanity``) and :attr:`TrustWork.images` counts the images each part
covered, so the run records milliseconds per image of each part (``trust_ms_per_image``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from xaidash.compute.methods.baselines import baseline_maps
from xaidash.compute.methods.faithfulness import SCORES, faithfulness
from xaidash.compute.methods.localisation import localisation_scores, pointing_radius, to_input_grid
from xaidash.compute.methods.road import road
from xaidash.compute.methods.sanity import SanityBatch, join_batches, randomisation_blocks, sanity_rows
from xaidash.compute.pipeline.plan import JobPlan
from xaidash.compute.pipeline.precision import masked_batch_size, masked_forward_model
from xaidash.compute.pipeline.timing import Timer
from xaidash.store.builder import TableBuilder

if TYPE_CHECKING:
    from xaidash.compute.datasets.sources import Item

TRUST_TABLES = ("sanity", "baseline_faithfulness", "road", "localisation")


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if v != v else float(v) for v in values]


def add_road_rows(t: TableBuilder, ids: Sequence[str], fractions: Sequence[float],
                  res: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """The ``road`` rows of :func:`~xaidash.compute.methods.road.road`'s result for images ``ids``."""
    nf = len(fractions)
    for m, orders in res.items():
        for order, probs in orders.items():
            p = probs.float().cpu().numpy()  # [B, F]
            t.add(image_id=[i for i in ids for _ in range(nf)], method=[m] * p.size,
                  order=[order] * p.size, fraction=[float(f) for _ in ids for f in fractions],
                  probability=p.reshape(-1).tolist())


class TrustWork:
    """The trust tables of one chunk (see the module docstring)."""

    def __init__(self, plan: JobPlan, timer: Timer,
                 autocast: Callable[[], contextlib.AbstractContextManager[object]],
                 bulk_model: torch.nn.Module | None = None) -> None:
        self.plan = plan
        self.timer = timer
        self.autocast = autocast
        #: the forward-only bulk (baselines, ROAD) runs where the chunk's faithfulness runs
        self.bulk_model = plan.model if bulk_model is None else bulk_model
        self.tables = {name: TableBuilder(name) for name in TRUST_TABLES}
        self.images: dict[str, int] = {}
        self._sanity: list[SanityBatch] = []

    def _count(self, part: str, n: int) -> None:
        self.images[part] = self.images.get(part, 0) + n

    def val_batch(self, x: torch.Tensor, items: Sequence[Item], sizes: Sequence[tuple[int, int]] | None,
                  maps: Mapping[str, torch.Tensor], pred: torch.Tensor, conf: torch.Tensor,
                  batch_size: int) -> None:
        """Everything but the sanity check for one val batch (``maps``: the pred-target maps)."""
        if not maps:
            return
        ids = [it.image_id for it in items]
        plan, cfg = self.plan, self.plan.cfg
        pred = pred.to(plan.device)
        if cfg.faithfulness:
            self._baselines(x, ids, maps, pred, conf, batch_size)
        if cfg.faithfulness and cfg.road_fractions:  # ROAD is a faithfulness measure too
            sel = [i for i, iid in enumerate(ids) if plan.road_ids is None or iid in plan.road_ids]
            if sel:
                self._road(x, ids, maps, pred, sel, batch_size)
        gt = plan.ground_truth
        if gt is not None and sizes is not None:
            sel = [i for i, iid in enumerate(ids) if gt.has(iid)]
            if sel:
                self._localisation(ids, maps, sizes, sel)
        sel = [i for i, iid in enumerate(ids) if iid in plan.sanity_ids]
        if sel:
            idx = torch.tensor(sel, device=x.device)
            self._sanity.append((x[idx].detach(), pred[idx.to(pred.device)].detach(),
                                 {m: mp[idx.to(mp.device)].detach() for m, mp in maps.items()},
                                 [ids[i] for i in sel]))

    # -- the parts ------------------------------------------------------------------------------
    def _baselines(self, x: torch.Tensor, ids: list[str], maps: Mapping[str, torch.Tensor],
                   pred: torch.Tensor, conf: torch.Tensor, batch_size: int) -> None:
        _, h, w = next(iter(maps.values())).shape
        with self.timer.stage("val_baselines"), self.autocast():
            base = baseline_maps(ids, h, w, self.plan.device)
            fa = faithfulness(self.bulk_model, x, base, pred, steps=self.plan.cfg.faithfulness_steps,
                              batch_size=batch_size, base_probs=conf.to(self.plan.device))
        for b, vals in fa.items():
            self.tables["baseline_faithfulness"].add(image_id=ids, baseline=[b] * len(ids), **{
                k: vals[k].float().cpu().tolist() for k in SCORES})
        self._count("baselines", len(ids))

    def _road(self, x: torch.Tensor, ids: list[str], maps: Mapping[str, torch.Tensor], pred: torch.Tensor,
              sel: list[int], batch_size: int) -> None:
        fractions = self.plan.cfg.road_fractions
        idx = torch.tensor(sel, device=x.device)
        sub_ids = [ids[i] for i in sel]
        with self.timer.stage("val_road"), self.autocast():
            res = road(self.bulk_model, x[idx], {m: mp[idx.to(mp.device)] for m, mp in maps.items()},
                       pred[idx], sub_ids, fractions, batch_size=batch_size)
        add_road_rows(self.tables["road"], sub_ids, fractions, res)
        self._count("road", len(sel))

    def _localisation(self, ids: list[str], maps: Mapping[str, torch.Tensor],
                      sizes: Sequence[tuple[int, int]], sel: list[int]) -> None:
        gt = self.plan.ground_truth
        assert gt is not None
        topk = self.plan.cfg.localisation_topk
        with self.timer.stage("val_localisation"):
            keep: list[int] = []
            objects: list[torch.Tensor] = []
            for i in sel:
                mask = gt.object_mask(ids[i], sizes[i])
                if mask is None:
                    continue
                obj = to_input_grid(mask, self.plan.parts.preprocessing)
                if bool(obj.any()):
                    keep.append(i)
                    objects.append(obj)
            if not keep:
                return
            obj_t = torch.stack(objects)
            radius = pointing_radius(self.plan.cfg.pointing_tolerance, (obj_t.shape[1], obj_t.shape[2]))
            scores = {m: localisation_scores(mp[torch.tensor(keep, device=mp.device)].cpu(), obj_t, topk,
                                             radius) for m, mp in maps.items()}
        for m, s in scores.items():
            self.tables["localisation"].add(
                image_id=[ids[i] for i in keep], method=[m] * len(keep),
                pointing=_nan_to_none(s["pointing"].tolist()), energy=_nan_to_none(s["energy"].tolist()),
                iou=_nan_to_none(s["iou"].tolist()), topk=[float(topk)] * len(keep))
        self._count("localisation", len(keep))

    def finish(self) -> None:
        """The sanity check of the chunk's sampled images (call after the CAM engine is closed)."""
        if not self._sanity:
            return
        plan = self.plan
        x, targets, trained, ids = join_batches(self._sanity)
        self._sanity = []
        blocks = randomisation_blocks(plan.model, plan.parts.arch)
        with self.timer.stage("val_sanity"):
            rows = sanity_rows(self._map_fn(), plan.model, blocks, x, targets, trained, ids)
        self.tables["sanity"].add(image_id=rows.image_id, method=rows.method, step=rows.step,
                                  block=rows.block, spearman=rows.spearman)
        self._count("sanity", len(ids))

    def _map_fn(self) -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        """The run's maps on a (randomised) network, for fixed targets: the gradient methods from
        one forward + backward (target kind "true" = the given classes), Score-CAM in the run's
        precision on the model it would use there, as in the run."""
        plan = self.plan


        batch: list[int] = []  # the masked batch, measured once (on CUDA it costs a forward)

        def maps_of(model: torch.nn.Module, x: torch.Tensor,
                    targets: torch.Tensor) -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            # the masked forwards run on this step's model as the run's do on the trained one (bf16:
            # the folded copy, made before the engine hooks the model; fp32: the model itself)
            bulk = masked_forward_model(model, plan.cfg.precision) if "scorecam" in plan.methods else model
            with plan.cam_engine(model) as engine:
                res = engine.forward(x, plan.methods, true_labels=targets)
                for m in plan.methods:
                    if (m, "true") in res.maps:
                        out[m] = res.maps[(m, "true")]
                if "scorecam" in plan.methods:
                    if not batch:
                        batch.append(masked_batch_size(plan, x))
                    with self.autocast():
                        out["scorecam"] = engine.scorecam(
                            x, res.activations, targets, batch_size=batch[0],
                            max_channels=plan.cfg.scorecam_max_channels,
                            channels_last=plan.masked_channels_last, masked_model=bulk).float()
            return out

        return maps_of

    def tables_out(self) -> dict[str, object]:
        """The non-empty trust tables of the chunk."""
        return {n: b.table() for n, b in self.tables.items() if b.num_rows}
