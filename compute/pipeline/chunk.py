"""The per-chunk function, the centre of the compute job: ``(plan, chunk) -> Arrow tables``.

:func:`compute_chunk` takes the immutable :class:`~xaidash.compute.pipeline.plan.JobPlan` and one
:class:`Chunk` (a deterministic slice of the val or train images) and returns the chunk's tables,
built from the store's schemas (:mod:`xaidash.store.builder`), plus what it measured. It never
touches the store: the local loop, ``--shard I/N`` and distributed workers all call it
unchanged, and only the process that owns the staging area writes what it returns.

Per val batch: one forward + one backward (:class:`~xaidash.compute.methods.cams.CamEngine`) gives the
predictions, embeddings and every method but Score-CAM (CAM, Grad-CAM, Grad-CAM++, LayerCAM,
XGradCAM, HiResCAM, EigenCAM; target = predicted class, and the true class of wrong predictions
with ``--explain pred,true``); Score-CAM and the faithfulness metrics follow, then the pixel
attributions of the sampled images (:mod:`~xaidash.compute.pipeline.attribution_step`). Per train
batch: embeddings and Grad-CAM (target pred), so twins can show theirs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xaidash.compute.analysis.image_facts import ImageFacts, describe
from xaidash.compute.analysis.metrics import cam_disagreement
from xaidash.compute.datasets.imageset import Batch, ImageSet, Sample, collate, input_hashes
from xaidash.compute.datasets.sources import Item
from xaidash.compute.methods.cams import CamEngine, ForwardResult
from xaidash.compute.methods.faithfulness import SCORES, faithfulness
from xaidash.compute.pipeline.attribution_step import AttributionWork
from xaidash.compute.pipeline.plan import Chunk, JobPlan
from xaidash.compute.pipeline.precision import forward_only_precision, masked_batch_size, masked_forward_model
from xaidash.compute.pipeline.timing import Timer
from xaidash.compute.pipeline.trust_step import TrustWork
from xaidash.constants import GRADIENT_METHODS
from xaidash.store.builder import TableBuilder

log = logging.getLogger(__name__)


@dataclass
class ChunkOutput:
    """What :func:`compute_chunk` returns: the tables to stage and what it measured."""

    chunk_id: str
    tables: dict[str, pa.Table]
    images: int = 0  #: decoded and computed
    failed: int = 0  #: could not be decoded (rows in ``tables["failures"]``)
    seconds: dict[str, float] = field(default_factory=dict)  #: wall seconds per sub-stage
    #: Score-CAM for the predicted class alone: seconds and images (seed 004's cost table)
    scorecam_seconds: float = 0.0
    scorecam_images: int = 0
    #: seconds per image of each method run alone (only when asked to calibrate)
    method_seconds: dict[str, float] = field(default_factory=dict)
    #: images each trust part covered (sanity, baselines, road, localisation: compute/pipeline/trust_step.py)
    trust_images: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# decoding


def loader(plan: JobPlan, items: Sequence[Item], batches: list[list[int]],
           thumbnails: frozenset[str]) -> DataLoader[Sample]:
    """A DataLoader decoding ``items`` in the given batches of positions."""
    ds = ImageSet(plan.dataset, items, plan.parts.preprocessing.transform(train=False), thumbnails, describe)
    return DataLoader(ds, batch_sampler=batches, num_workers=plan.cfg.workers, collate_fn=collate,
                      pin_memory=plan.device.type == "cuda")


def decode_chunks(plan: JobPlan, chunks: Sequence[Chunk],
                  thumbnails: frozenset[str]) -> Iterator[tuple[Chunk, Iterator[Batch]]]:
    """Each chunk with the iterator of its decoded batches (positions local to the chunk).

    One DataLoader over all the chunks keeps its worker processes alive across chunks (a
    loader per chunk would re-fork them every 256 images); batches never cross a chunk.
    Consume each chunk's batches before asking for the next chunk.
    """
    items: list[Item] = []
    batches: list[list[int]] = []
    owner: list[int] = []
    base: list[int] = []
    bs = plan.cfg.batch_size
    for ci, ch in enumerate(chunks):
        base.append(len(items))
        items.extend(ch.items)
        for s in range(0, len(ch.items), bs):
            batches.append(list(range(base[ci] + s, base[ci] + min(s + bs, len(ch.items)))))
            owner.append(ci)
    if not batches:
        return

    def local(pairs: Iterable[tuple[int, Batch]]) -> Iterator[Batch]:
        for ci, b in pairs:
            o = base[ci]
            yield dataclasses.replace(b, index=[i - o for i in b.index],
                                      failed=[(i - o, r) for i, r in b.failed])

    numbered = zip(owner, loader(plan, items, batches, thumbnails), strict=True)
    for ci, group in itertools.groupby(numbered, key=lambda p: p[0]):
        yield chunks[ci], local(group)


# --------------------------------------------------------------------------------------------
# the per-chunk function


def compute_chunk(
    plan: JobPlan,
    chunk: Chunk,
    thumbnails: frozenset[str] = frozenset(),
    batches: Iterable[Batch] | None = None,
    calibrate: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ChunkOutput:
    """Compute one chunk's tables.

    ``thumbnails``: the ids whose thumbnail the store still lacks. ``batches``: the chunk's
    decoded batches (from :func:`decode_chunks`); by default the chunk decodes itself.
    ``calibrate``: also time each method alone on the first val batch. ``progress`` is called
    with the number of images of each finished batch (decoded or failed).
    """
    if batches is None:
        bs = plan.cfg.batch_size
        n = len(chunk.items)
        batches = loader(plan, chunk.items, [list(range(s, min(s + bs, n))) for s in range(0, n, bs)],
                         thumbnails)
    work = _ChunkWork(plan, chunk)
    with plan.cam_engine() as engine:
        for batch in batches:
            work.add_failures(batch.failed)
            if batch.x is not None:
                batch_items = [chunk.items[i] for i in batch.index]
                x = plan.to_device(batch.x)
                if chunk.split == "val":
                    work.val_batch(engine, x, batch_items, calibrate and not work.out.method_seconds,
                                   batch.sizes)
                else:
                    work.train_batch(engine, x, batch_items)
                # one hash per embedding row (val and train alike): exact-duplicate leaks
                work.tables["embeddings"].extend("input_hash", input_hashes(batch.x))
                work.add_images(batch_items, batch.sizes, batch.thumbnails)
                work.add_facts(batch_items, batch.facts)
            if progress is not None:
                progress(len(batch.index) + len(batch.failed))
    work.trust.finish()  # the sanity check, after the engine removed its hook
    work.attributions.finish()  # and that of the attributions
    if work.out.failed:
        log.warning("chunk %s: %d image(s) could not be read and were skipped (see the failures table)",
                    chunk.chunk_id, work.out.failed)
    work.out.tables = {name: b.table() for name, b in work.tables.items()
                       if chunk.split == "val" or name not in ("predictions", "faithfulness")}
    work.out.tables.update(work.trust.tables_out())
    work.out.trust_images = {**work.trust.images, **work.attributions.images}
    if not work.tables["images"].num_rows:
        del work.out.tables["images"]
    work.out.seconds = work.timer.seconds
    return work.out


class _ChunkWork:
    """The column builders and measurements of one :func:`compute_chunk` call."""

    def __init__(self, plan: JobPlan, chunk: Chunk) -> None:
        self.plan = plan
        self.chunk = chunk
        self.timer = Timer(plan.device if plan.device.type == "cuda" else None)
        self.tables = {name: TableBuilder(name) for name in
                       ("predictions", "cams", "embeddings", "faithfulness", "failures", "images",
                        "image_facts")}
        self.out = ChunkOutput(chunk.chunk_id, {})
        self._masked_batch: int | None = None
        #: runs the forward-only bulk; built before the chunk's CamEngine hooks plan.model
        self.masked_model = (masked_forward_model(plan.model, plan.cfg.precision)
                             if chunk.split == "val" else plan.model)
        self.trust = TrustWork(plan, self.timer, self.autocast, self.masked_model)
        self.attributions = AttributionWork(plan, self.timer, self.autocast, self.masked_model, self.add_maps,
                                            self.tables["faithfulness"], self.trust.tables["road"],
                                            self.trust.tables["sanity"])

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The forward-only bulk (Score-CAM's masked forwards, the faithfulness forwards) in the
        run's precision; see :func:`forward_only_precision`."""
        return forward_only_precision(self.plan.cfg.precision, self.plan.device)

    # -- rows -------------------------------------------------------------------------------
    def add_failures(self, failed: Sequence[tuple[int, str]]) -> None:
        for index, reason in failed:
            it = self.chunk.items[index]
            log.warning("skipping unreadable image %s: %s", it.source, reason)
            self.tables["failures"].add(image_id=[it.image_id], split=[it.split], source=[it.source],
                                        reason=[reason])
            self.out.failed += 1

    def add_images(self, items: Sequence[Item], sizes: Sequence[tuple[int, int]],
                   thumbs: Sequence[bytes | None]) -> None:
        """Thumbnails (and sizes) the store does not have yet; staged with the chunk, they join
        the dataset's shared images at publish, so a killed job leaves nothing visible."""
        self.out.images += len(items)
        rows = [(it, wh, th) for it, wh, th in zip(items, sizes, thumbs, strict=True) if th is not None]
        self.tables["images"].add(
            image_id=[it.image_id for it, _, _ in rows], split=[it.split for it, _, _ in rows],
            label=[it.label for it, _, _ in rows],
            label_name=[self.plan.label_name(it.label) for it, _, _ in rows],
            source=[it.source for it, _, _ in rows], width=[w for _, (w, _), _ in rows],
            height=[h for _, (_, h), _ in rows], thumbnail=[th for _, _, th in rows],
        )

    def add_facts(self, items: Sequence[Item], facts: Sequence[object | None]) -> None:
        """The data-quality facts measured on each decoded image (perceptual hash, 16x16
        thumbnail, image statistics; :mod:`xaidash.compute.analysis.image_facts`)."""
        rows = [(it, f) for it, f in zip(items, facts, strict=True) if isinstance(f, ImageFacts)]
        if not rows:
            return
        fs = [f for _, f in rows]
        self.tables["image_facts"].add(
            image_id=[it.image_id for it, _ in rows], split=[it.split for it, _ in rows],
            width=[f.width for f in fs], height=[f.height for f in fs], phash=[f.phash for f in fs],
            tiny=[f.tiny for f in fs], bright_p05=[f.bright_p05 for f in fs],
            bright_p99=[f.bright_p99 for f in fs],
            sharpness=[None if f.sharpness != f.sharpness else f.sharpness for f in fs],
            entropy=[f.entropy for f in fs], colour=[f.colour for f in fs],
        )

    def add_maps(self, ids: Sequence[str], method: str, kind: str, targets: np.ndarray,
                 maps: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Append maps ``[B, h, w]`` (only ``rows`` when given)."""
        sel = np.arange(len(ids)) if rows is None else rows
        if sel.size == 0:
            return
        _, h, w = maps.shape
        self.tables["cams"].add(
            image_id=[ids[int(i)] for i in sel], method=[method] * sel.size, target_kind=[kind] * sel.size,
            target_class=[int(t) for t in targets[sel]], h=[h] * sel.size, w=[w] * sel.size,
        )
        self.tables["cams"].extend_matrix("map", maps[sel].reshape(sel.size, h * w).astype(np.float32))

    def add_embeddings(self, ids: Sequence[str], split: str, res: ForwardResult) -> None:
        self.tables["embeddings"].add(image_id=ids, split=[split] * len(ids))
        vectors = res.embedding.float().cpu().numpy().astype(np.float16)
        self.tables["embeddings"].extend_matrix("vector", vectors)

    # -- batches ----------------------------------------------------------------------------
    def train_batch(self, engine: CamEngine, x: torch.Tensor, items: Sequence[Item]) -> None:
        ids = [it.image_id for it in items]
        # Grad-CAM (target pred) so the dashboard can show each twin's own evidence; without
        # gradcam in --methods the train pass is a plain forward for the embeddings.
        want = ("gradcam",) if "gradcam" in self.plan.methods else ()
        with self.timer.stage("train_forward_backward"):
            res = engine.forward(x, want)
        if ("gradcam", "pred") in res.maps:
            self.add_maps(ids, "gradcam", "pred", res.targets["pred"].cpu().numpy(),
                          res.maps[("gradcam", "pred")].cpu().numpy())
        self.add_embeddings(ids, "train", res)

    def masked_batch(self, x: torch.Tensor) -> int:
        """:func:`masked_batch_size`, measured once per chunk (on CUDA)."""
        if self._masked_batch is None:
            self._masked_batch = masked_batch_size(self.plan, x)
        return self._masked_batch

    def _scorecam(self, engine: CamEngine, x: torch.Tensor, activations: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
        cfg = self.plan.cfg
        with self.timer.stage("val_scorecam"), self.autocast():
            return engine.scorecam(
                x, activations, targets, batch_size=self.masked_batch(x),
                max_channels=cfg.scorecam_max_channels, channels_last=self.plan.masked_channels_last,
                masked_model=self.masked_model,
            ).float()

    def val_batch(self, engine: CamEngine, x: torch.Tensor, items: Sequence[Item], calibrate: bool,
                  sizes: Sequence[tuple[int, int]] | None = None) -> None:
        plan, cfg = self.plan, self.plan.cfg
        ids = [it.image_id for it in items]
        labeled = plan.dataset.labeled and all(it.label is not None for it in items)
        labels = torch.tensor([it.label for it in items], dtype=torch.long) if labeled else None
        with self.timer.stage("val_forward_backward"):
            res = engine.forward(x, plan.methods, true_labels=labels if "true" in plan.explain else None)
        if calibrate:
            self.out.method_seconds = self._calibrate(engine, x)
        logits = res.logits.float()
        probs = logits.softmax(dim=1)
        # the class the gradient maps explain (argmax of the logits): ties in the rounded
        # softmax must not make the stored prediction differ from the explained class
        pred = res.targets["pred"].to(probs.device)
        conf = probs.gather(1, pred[:, None])[:, 0]
        # runner-up: the second most probable class (none for a one-class model)
        runner = probs.topk(2, dim=1).indices[:, 1] if probs.shape[1] >= 2 else torch.full_like(pred, -1)
        pred_np = pred.cpu().numpy()
        maps = {m: res.maps[(m, "pred")] for m in plan.methods if (m, "pred") in res.maps}
        if "scorecam" in plan.methods:
            t0 = time.perf_counter()
            maps["scorecam"] = self._scorecam(engine, x, res.activations, pred)
            self.out.scorecam_seconds += time.perf_counter() - t0
            self.out.scorecam_images += len(ids)
        maps = {m: maps[m] for m in plan.methods if m in maps}  # canonical order
        for m, mp in maps.items():
            self.add_maps(ids, m, "pred", pred_np, mp.detach().cpu().numpy())
        if labels is not None and "true" in plan.explain:
            self._true_maps(engine, x, res, ids, labels, pred_np)

        if cfg.faithfulness and maps:
            with self.timer.stage("val_faithfulness"), self.autocast():
                # the base probability Y is the confidence already computed: saves a forward
                fa = faithfulness(self.masked_model, x, maps, pred.to(plan.device),
                                  steps=cfg.faithfulness_steps, batch_size=self.masked_batch(x),
                                  base_probs=conf.to(plan.device))
            for m, vals in fa.items():
                self.tables["faithfulness"].add(image_id=ids, method=[m] * len(ids), **{
                    key: vals[key].float().cpu().tolist()
                    for key in SCORES})

        self.trust.val_batch(x, items, sizes, maps, pred, conf, self.masked_batch(x))
        self.attributions.val_batch(x, items, labels, pred, conf, self.masked_batch(x))
        disagreement = cam_disagreement([mp.detach().cpu().numpy() for mp in maps.values()])
        if labels is not None:
            loss: list[float | None] = F.cross_entropy(logits.cpu(), labels, reduction="none").tolist()
            correct: list[bool | None] = (labels == pred.cpu()).tolist()
        else:
            loss = [None] * len(ids)
            correct = [None] * len(ids)
        names = plan.class_names
        self.tables["predictions"].add(
            image_id=ids, split=["val"] * len(ids),
            label=[it.label if labels is not None else None for it in items],
            label_name=[plan.label_name(it.label) if labels is not None else None for it in items],
            pred=pred_np.tolist(), pred_name=[names[int(p)] for p in pred_np],
            confidence=conf.cpu().tolist(), correct=correct, loss=loss,
            runner_up=[int(r) if r >= 0 else None for r in runner.tolist()],
            cam_disagreement=[None if np.isnan(v) else float(v) for v in disagreement],
        )
        self.tables["predictions"].extend_matrix("probabilities", probs.cpu().numpy())
        self.add_embeddings(ids, "val", res)

    def _true_maps(self, engine: CamEngine, x: torch.Tensor, res: ForwardResult, ids: Sequence[str],
                   labels: torch.Tensor, pred_np: np.ndarray) -> None:
        """Maps for the true class of the wrong predictions (``--explain pred,true``)."""
        lab_np = labels.numpy()
        wrong = np.nonzero(lab_np != pred_np)[0]
        if not wrong.size:
            return
        for m in self.plan.methods:
            if m != "scorecam" and (m, "true") in res.maps:
                self.add_maps(ids, m, "true", lab_np, res.maps[(m, "true")].cpu().numpy(), wrong)
        if "scorecam" in self.plan.methods:
            sel = torch.from_numpy(wrong).to(self.plan.device)
            sc_true = self._scorecam(engine, x[sel], res.activations[sel.to(res.activations.device)],
                                     labels[wrong].to(self.plan.device)).cpu().numpy()
            full = np.zeros((len(ids), *sc_true.shape[1:]), np.float32)
            full[wrong] = sc_true
            self.add_maps(ids, "scorecam", "true", lab_np, full, wrong)

    def _calibrate(self, engine: CamEngine, x: torch.Tensor) -> dict[str, float]:
        """Seconds per image of each method alone, on this batch.

        In a run the engine's methods share one forward and one backward pass, so their cost
        cannot be told apart there. Seed 004 compares the methods' cost, so each one is also run
        alone once: CAM is a forward pass and a weighted sum, EigenCAM a forward pass and a
        batched SVD, Grad-CAM, Grad-CAM++, LayerCAM, XGradCAM and HiResCAM add the backward pass
        to the target layer, and Score-CAM (timed over the whole run) adds its masked forward
        passes to a forward pass that captures the activations.
        """
        b = max(1, x.shape[0])
        alone = [m for m in GRADIENT_METHODS if m in self.plan.methods]
        if "scorecam" in self.plan.methods:
            alone.append("forward")
        out: dict[str, float] = {}
        for m in alone:
            if m == "cam" and not engine.cam_applicable:
                continue
            t0 = time.perf_counter()
            engine.forward(x, [] if m == "forward" else [m])
            if self.plan.device.type == "cuda":
                torch.cuda.synchronize(self.plan.device)
            out[m] = (time.perf_counter() - t0) / b
        return out
