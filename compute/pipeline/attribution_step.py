"""Pixel attributions inside the per-chunk function, for the images of the attribution sample.

The hook :mod:`xaidash.compute.pipeline.chunk` calls, next to the trust step. For every val image of
``plan.attribution_ids`` (``--attribution-images N``: stratified, seeded) that falls in the chunk,
:class:`AttributionWork`:

* computes Integrated Gradients (black and blurred baselines) and SmoothGrad through Captum
  (:mod:`~xaidash.compute.methods.attributions`) for the predicted class - and for the true class of a
  wrong prediction when the run explains ``pred,true`` - on the run's fp32 model, and adds the
  reduced 32 × 32 maps to the chunk's ``cams`` rows (method ``ig_black``, ``ig_blur``, ``smoothgrad``);
* scores the predicted-class maps with the same code as the CAMs: the faithfulness metrics
  (:func:`~xaidash.compute.methods.faithfulness.faithfulness`: every sampled image, with faithfulness
  on) and ROAD (:func:`~xaidash.compute.methods.road.road`: the sampled images that are in the ROAD
  sample too, so every attribution ROAD row has CAM rows on the same image), in the run's precision
  on the model the CAMs' scores use;
* keeps the images of ``plan.attribution_sanity_ids`` (inside both the attribution and the sanity
  sample) for the sanity check, which :meth:`AttributionWork.finish` runs once per chunk after the CAM
  engine is closed: the attributions are recomputed on the same seeded randomised networks as the
  CAMs' (:func:`~xaidash.compute.methods.sanity.iter_randomised`) and their Spearman correlation with
  the trained model's maps lands in the ``sanity`` table under the attribution method names.

Each part is a stage of the chunk's timer (``val_attributions``, ``val_attribution_scores``,
``val_attribution_sanity``) and :attr:`AttributionWork.images` counts the images it covered, so the
run records milliseconds per image of each (``trust_ms_per_image``, next to the trust checks').
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from xaidash.compute.methods.attributions import Attributor
from xaidash.compute.methods.faithfulness import SCORES, faithfulness
from xaidash.compute.methods.road import road
from xaidash.compute.methods.sanity import SanityBatch, join_batches, randomisation_blocks, sanity_rows
from xaidash.compute.pipeline.plan import JobPlan
from xaidash.compute.pipeline.timing import Timer
from xaidash.compute.pipeline.trust_step import add_road_rows
from xaidash.store.builder import TableBuilder

if TYPE_CHECKING:
    from xaidash.compute.datasets.sources import Item

#: ``(ids, method, target_kind, targets [B], maps [B, h, w], rows)``: the chunk's ``cams`` rows
AddMaps = Callable[[Sequence[str], str, str, np.ndarray, np.ndarray, np.ndarray | None], None]


class AttributionWork:
    """The attributions of one chunk's sampled images (see the module docstring)."""

    def __init__(self, plan: JobPlan, timer: Timer,
                 autocast: Callable[[], contextlib.AbstractContextManager[object]],
                 bulk_model: torch.nn.Module, add_maps: AddMaps, faithfulness_rows: TableBuilder,
                 road_rows: TableBuilder, sanity_rows_out: TableBuilder) -> None:
        self.plan = plan
        self.timer = timer
        self.autocast = autocast
        self.bulk_model = bulk_model
        self.add_maps = add_maps
        self.faithfulness_rows = faithfulness_rows
        self.road_rows = road_rows
        self.sanity_rows_out = sanity_rows_out
        self.images: dict[str, int] = {}
        self._sanity: list[SanityBatch] = []

    def _attributor(self, model: torch.nn.Module) -> Attributor:
        pre = self.plan.parts.preprocessing
        return Attributor(model, self.plan.attribution_settings(), pre.mean, pre.std)

    def _count(self, part: str, n: int) -> None:
        self.images[part] = self.images.get(part, 0) + n

    def val_batch(self, x: torch.Tensor, items: Sequence[Item], labels: torch.Tensor | None,
                  pred: torch.Tensor, conf: torch.Tensor, batch_size: int) -> None:
        """The sampled images of one val batch (``pred``: the class the CAMs explain, ``conf`` its
        probability; ``labels`` None when the batch is unlabeled)."""
        plan, cfg = self.plan, self.plan.cfg
        sel = [i for i, it in enumerate(items) if it.image_id in plan.attribution_ids]
        if not sel:
            return
        idx = torch.tensor(sel, device=x.device)
        xs = x[idx].detach()
        ids = [items[i].image_id for i in sel]
        targets = pred.to(x.device)[idx]
        attributor = self._attributor(plan.model)
        with self.timer.stage("val_attributions"):
            maps = attributor.maps(xs, targets, ids)
            true_maps: dict[str, torch.Tensor] = {}
            wrong = np.zeros(0, np.int64)
            if labels is not None and "true" in plan.explain:
                lab = labels.cpu().numpy()[sel]
                wrong = np.nonzero(lab != targets.cpu().numpy())[0]
                if wrong.size:
                    w = torch.from_numpy(wrong).to(x.device)
                    true_maps = attributor.maps(xs[w], torch.from_numpy(lab[wrong]).to(x.device),
                                                [ids[int(j)] for j in wrong])
        pred_np = targets.cpu().numpy()
        for m, mp in maps.items():
            self.add_maps(ids, m, "pred", pred_np, mp.cpu().numpy(), None)
        if true_maps:
            lab_np = labels.cpu().numpy()[sel] if labels is not None else pred_np
            wrong_ids = [ids[int(j)] for j in wrong]
            for m, mp in true_maps.items():
                self.add_maps(wrong_ids, m, "true", lab_np[wrong], mp.cpu().numpy(), None)
        self._count("attributions", len(sel))

        if cfg.faithfulness:
            self._scores(xs, ids, maps, targets, conf.to(x.device)[idx], batch_size)
        keep = [j for j, iid in enumerate(ids) if iid in plan.attribution_sanity_ids]
        if keep:
            k = torch.tensor(keep, device=x.device)
            self._sanity.append((xs[k], targets[k], {m: mp[k.to(mp.device)] for m, mp in maps.items()},
                                 [ids[j] for j in keep]))

    def _scores(self, xs: torch.Tensor, ids: list[str], maps: dict[str, torch.Tensor], targets: torch.Tensor,
                conf: torch.Tensor, batch_size: int) -> None:
        """Faithfulness (every sampled image) and ROAD (those in the ROAD sample too)."""
        plan, cfg = self.plan, self.plan.cfg
        with self.timer.stage("val_attribution_scores"), self.autocast():
            fa = faithfulness(self.bulk_model, xs, maps, targets, steps=cfg.faithfulness_steps,
                              batch_size=batch_size, base_probs=conf)
            road_sel = [j for j, iid in enumerate(ids) if plan.road_ids is None or iid in plan.road_ids]
            res = None
            if cfg.road_fractions and road_sel:
                r = torch.tensor(road_sel, device=xs.device)
                res = road(self.bulk_model, xs[r], {m: mp[r.to(mp.device)] for m, mp in maps.items()},
                           targets[r], [ids[j] for j in road_sel], cfg.road_fractions, batch_size=batch_size)
        for m, vals in fa.items():
            self.faithfulness_rows.add(image_id=ids, method=[m] * len(ids), **{
                key: vals[key].float().cpu().tolist() for key in SCORES})
        if res is not None:
            add_road_rows(self.road_rows, [ids[j] for j in road_sel], cfg.road_fractions, res)
        self._count("attribution_scores", len(ids))

    def finish(self) -> None:
        """The sanity check of the chunk's kept images (call after the CAM engine is closed: the
        randomised networks are deep copies of the run's model)."""
        if not self._sanity:
            return
        plan = self.plan
        x, targets, trained, ids = join_batches(self._sanity)
        self._sanity = []

        def maps_of(model: torch.nn.Module, xb: torch.Tensor, tb: torch.Tensor) -> dict[str, torch.Tensor]:
            return self._attributor(model).maps(xb, tb, ids)

        blocks = randomisation_blocks(plan.model, plan.parts.arch)
        with self.timer.stage("val_attribution_sanity"):
            rows = sanity_rows(maps_of, plan.model, blocks, x, targets, trained, ids)
        self.sanity_rows_out.add(image_id=rows.image_id, method=rows.method, step=rows.step,
                                 block=rows.block, spearman=rows.spearman)
        self._count("attribution_sanity", len(ids))
