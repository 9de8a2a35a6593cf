"""The compute job: run a model over a dataset and publish one complete run into a store.

Two phases (DESIGN.md "Data flow"):

1. **Per-image phase** — embarrassingly parallel. Validation images (sorted by image_id) are cut
   into deterministic chunks of ``chunk_size``; so are the train (reference) images. For each
   val batch: one forward + one backward (:class:`compute.cams.CamEngine`) gives predictions,
   embeddings and CAM / Grad-CAM / Grad-CAM++ (target = predicted class, and the true class
   of wrong predictions with ``--explain pred,true``); Score-CAM and the faithfulness metrics
   follow. Train batches give embeddings and Grad-CAM (target pred) so twins can show theirs.
   Each chunk is written with ``Staging.write_chunk`` (all-or-nothing), so memory does not
   grow with the dataset and a killed job resumes at the first chunk not done.
2. **Global phase** — reads all embeddings and predictions back from staging: twins and
   counterfactuals (:mod:`xaidash.compute.neighbors`), the 2-D projection (:mod:`xaidash.compute.projection`),
   metrics and confusion (:mod:`xaidash.compute.metrics`); then ``Staging.publish`` writes the run
   atomically with its provenance.

Resume and shards: the job key hashes everything that changes the results (model identity,
dataset fingerprint, result-affecting arguments) but not the device, batch size, workers or
shard, so a re-run with the same arguments — or another shard of the same job — writes into
the same staging and skips ``done_chunks()``. ``--shard I/N`` takes chunks whose global index
(val chunks first, then train) is ``I mod N``; the shard that finds every chunk done runs the
global phase (``--finalize`` runs it on demand). A job key is published at most once.
Shards run at the same time (one per GPU or machine, same store): each opens the staging as
owner ``shard-I-of-N`` (a shared lock on the staging plus its own exclusive one, so the same
shard twice is refused), chunk writes are atomic per chunk, and a shard that finds every chunk
done takes the exclusive publish lock, re-checks that every chunk is done and that the job was
not published meanwhile, and only then runs the global phase and publishes; a shard that loses
that race reports the published run (exit 0). An unsharded job (and ``--finalize``) stays the
only writer of its staging.

Precision: fp32 by default everywhere. ``--precision bf16`` wraps the network forwards in
``torch.autocast(bfloat16)``; maps are computed from fp32 copies of activations/gradients
(CamEngine casts), but the activations themselves carry bf16 rounding (8-bit mantissa).
Measured (CPU autocast, the Fashion-MNIST resnet18 at 32 px, 32 val images; no GPU was
available for this work): predictions identical, probabilities within 0.014, CAM / Grad-CAM /
Grad-CAM++ maps within 0.047 max (0.005 mean) of fp32, Score-CAM (top-64 channels) within 0.24
max (0.018 mean) because the channel selection itself moves — 2.3x faster. That is outside a
"same map" tolerance, so bf16 stays opt-in and is recorded in the run's config (and job key).
On CUDA the model and inputs use ``channels_last`` (same numbers, faster convolutions); the
CUDA bf16 numbers still have to be measured on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from xaidash.compute.cams import CamEngine
from xaidash.compute.data import Dataset, ImageLoadError, Item, open_dataset, subsample
from xaidash.constants import GRADIENT_METHODS, METHODS, PRECISIONS, PROJECTIONS, TARGET_KINDS
from xaidash.errors import UserError, choices_error

log = logging.getLogger(__name__)

#: Test hook: raise after this many chunks were written by this process (simulates a kill).
FAIL_AFTER_ENV = "XAIDASH_COMPUTE_FAIL_AFTER_CHUNKS"
#: Bump when the per-image computation changes meaning, so old staging is never reused.
JOB_FORMAT = 1


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class JobConfig:
    """All inputs of one compute job (the CLI's arguments, typed)."""

    data: str
    store: str
    checkpoint: str | None = None
    model: str | None = None
    weights: str | None = None
    classes: list[str] | None = None
    data_root: str | None = None
    methods: tuple[str, ...] = METHODS
    explain: tuple[str, ...] = ("pred",)
    target_layer: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    workers: int = 2
    limit_val: int | None = None
    limit_train: int | None = None
    twins: int = 5
    projection: str | None = None
    faithfulness_steps: int = 16
    faithfulness: bool = True
    scorecam_max_channels: int | None = None
    shard: str | None = None
    finalize: bool = False
    chunk_size: int = 256
    new_run: bool = False

    @classmethod
    def from_args(cls, args: Any) -> JobConfig:
        """Build from an argparse Namespace (missing attributes take the defaults)."""

        def get(name: str, default: Any = None) -> Any:
            return getattr(args, name, default)

        def number(name: str, default: int) -> int:
            # 0 is a value (rejected by setup() with a clear message), not "missing"
            v = get(name)
            return default if v is None else int(v)

        def split_list(v: Any) -> list[str] | None:
            if v is None:
                return None
            if isinstance(v, (list, tuple)):
                return [str(s).strip() for s in v if str(s).strip()]
            return [s.strip() for s in str(v).split(",") if s.strip()]

        return cls(
            data=get("data"),
            store=get("store"),
            checkpoint=get("checkpoint"),
            model=get("model"),
            weights=get("weights"),
            classes=split_list(get("classes")),
            data_root=get("data_root"),
            methods=tuple(METHODS if get("methods") is None else (split_list(get("methods")) or ())),
            explain=tuple(split_list(get("explain")) or ("pred",)),
            target_layer=get("target_layer"),
            device=str(get("device") or "auto"),
            precision=str(get("precision") or "fp32"),
            batch_size=number("batch_size", 64),
            workers=int(get("workers") if get("workers") is not None else 2),
            limit_val=get("limit_val"),
            limit_train=get("limit_train"),
            twins=int(get("twins") if get("twins") is not None else 5),
            projection=get("projection"),
            faithfulness_steps=number("faithfulness_steps", 16),
            faithfulness=not bool(get("no_faithfulness", False)),
            scorecam_max_channels=get("scorecam_max_channels"),
            shard=get("shard"),
            finalize=bool(get("finalize", False)),
            chunk_size=number("chunk_size", 256),
            new_run=bool(get("new_run", False)),
        )


@dataclass
class JobResult:
    """What a job did: ``run_id`` is set when a run was published (or already existed)."""

    ok: bool
    run_id: str | None = None
    published: bool = False
    already_published: bool = False
    chunks_total: int = 0
    chunks_done_here: int = 0
    chunks_missing: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    bytes_per_val_image: float | None = None


@dataclass(frozen=True)
class Chunk:
    """A deterministic unit of work: ``index`` is global (val chunks first, then train)."""

    index: int
    chunk_id: str
    split: str
    items: tuple[Item, ...]


class _Timer:
    """Wall-clock seconds per stage (accumulates when a stage runs more than once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        #: set to the CUDA device: kernels are asynchronous, so a stage ends with a synchronize
        #: (otherwise GPU time would be billed to whichever later stage first waits for it)
        self.cuda: torch.device | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda is not None:
                torch.cuda.synchronize(self.cuda)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# validation helpers (everything here runs before any heavy work)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; UserError otherwise."""
    if spec is None or spec == "":
        return None
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UserError(f"bad --shard {spec!r}: expected I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"bad --shard {spec!r}: need N >= 1 and 0 <= I < N")
    return i, n


def validate_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Known, de-duplicated, in canonical order; UserError listing the valid ones."""
    if not methods:
        raise UserError(f"--methods is empty; valid methods: {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise choices_error("method", m, METHODS)
    return tuple(m for m in METHODS if m in methods)


def validate_explain(explain: Sequence[str]) -> tuple[str, ...]:
    for e in explain:
        if e not in TARGET_KINDS:
            raise choices_error("explain target", e, TARGET_KINDS)
    if "pred" not in explain:
        raise UserError("--explain must include 'pred' (use pred or pred,true)")
    return tuple(e for e in TARGET_KINDS if e in explain)


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a UserError."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown --device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA GPU is available; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported --device {spec!r}; use auto, cpu, cuda or cuda:N")
    return dev


def _check_store_writable(path: Path) -> None:
    """Fail early (not after an hour of compute) when the store cannot be written."""
    probe = path / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"store {path} is not writable: {exc.strerror or exc}") from None


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# model loading


@dataclass
class LoadedModel:
    """The network ready for the job, plus everything the run records about it."""

    parts: Any  # compute.models.ModelParts
    arch: str
    classes: list[str]
    model_ref: dict[str, Any]  # what explain.py needs to rebuild the model (config_json["model"])
    identity: dict[str, Any]  # what makes results differ (goes into the job key)
    checkpoint_path: str | None
    checkpoint_sha256: str | None


def load_model(cfg: JobConfig, dataset: Dataset) -> LoadedModel:
    """Load the checkpoint (or plain weights) and check it fits the dataset's classes."""
    from xaidash.compute import checkpoint as ckpt_mod

    if cfg.checkpoint and (cfg.model or cfg.weights):
        raise UserError("give either --checkpoint or --model/--weights, not both")
    if cfg.checkpoint:
        path = str(Path(cfg.checkpoint).expanduser().absolute())
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
        ckpt = ckpt_mod.load_checkpoint(path)
        sha = ckpt.sha256 or _sha256_file(path)
        model_ref: dict[str, Any] = {"checkpoint": path, "sha256": sha}
        identity: dict[str, Any] = {"checkpoint_sha256": sha}
        ckpt_path: str | None = path
    elif cfg.model:
        weights = cfg.weights or "imagenet"
        if weights != "imagenet":
            wpath = Path(weights).expanduser().absolute()
            if not wpath.is_file():
                raise UserError(f"weights file {wpath} does not exist")
            weights = str(wpath)
        classes = cfg.classes
        if classes is None and weights != "imagenet":
            if not dataset.labeled or dataset.classes is None:
                raise UserError("--weights PATH on unlabeled data needs --classes a,b,c")
            classes = list(dataset.classes)
        ckpt = ckpt_mod.checkpoint_from_weights(cfg.model, weights, classes)
        wsha = None if weights == "imagenet" else (ckpt.sha256 or _sha256_file(weights))
        model_ref = {"arch": cfg.model, "weights": weights, "classes": list(ckpt.classes)}
        identity = {"arch": cfg.model, "weights": weights if wsha is None else wsha,
                    "classes": list(ckpt.classes)}
        ckpt_path = None
        sha = wsha
    else:
        raise UserError("no model: give --checkpoint CKPT, or --model ARCH --weights imagenet|PATH")

    _check_classes(ckpt_mod, ckpt, dataset)
    parts = ckpt_mod.model_from_checkpoint(ckpt)
    return LoadedModel(
        parts=parts, arch=ckpt.arch, classes=list(ckpt.classes), model_ref=model_ref,
        identity=identity, checkpoint_path=ckpt_path, checkpoint_sha256=sha,
    )


def _check_classes(ckpt_mod: Any, ckpt: Any, dataset: Dataset) -> None:
    """The model's classes must be the dataset's, in order (unlabeled data: anything goes)."""
    check = getattr(ckpt_mod, "check_classes", None)
    if check is not None:
        check(ckpt, dataset)
        return
    if dataset.labeled and dataset.classes is not None and list(ckpt.classes) != list(dataset.classes):
        raise UserError(
            f"the model's classes {list(ckpt.classes)[:10]} do not match the dataset's "
            f"{list(dataset.classes)[:10]}; use the checkpoint trained on this data "
            "(or the same classes, in the same order)"
        )


# --------------------------------------------------------------------------------------------
# data loading


#: One decoded sample: (index, tensor or None, failure reason, width, height, thumbnail PNG).
_Sample = tuple[int, torch.Tensor | None, str | None, int, int, bytes | None]


class _ImageSet(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Decodes items in DataLoader workers; a failure becomes a record, never an exception."""

    def __init__(self, dataset: Dataset, items: Sequence[Item], transform: Any, thumbs: set[str]) -> None:
        self.dataset = dataset
        self.items = list(items)
        self.transform = transform
        self.thumbs = thumbs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Sample:
        from xaidash.compute.imageio import thumbnail_png

        item = self.items[i]
        try:
            img = self.dataset.load(item)
            x = self.transform(img)
        except ImageLoadError as exc:
            return i, None, exc.reason, 0, 0, None
        except Exception as exc:  # a decoder/transform bug must not kill a long job either
            return i, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:500], 0, 0, None
        thumb = thumbnail_png(img) if item.image_id in self.thumbs else None
        return i, x, None, img.width, img.height, thumb


def _collate(batch: list[_Sample]) -> dict[str, Any]:
    """Stack the decodable images; keep failures aside (their index and reason)."""
    good = [b for b in batch if b[1] is not None]
    return {
        "index": [b[0] for b in good],
        "x": torch.stack([b[1] for b in good]) if good else None,  # type: ignore[misc]
        "size": [(b[3], b[4]) for b in good],
        "thumb": [b[5] for b in good],
        "failed": [(b[0], b[2]) for b in batch if b[1] is None],
    }


def _batches(chunks: Sequence[Chunk], batch_size: int) -> tuple[list[Item], list[list[int]], list[int]]:
    """Flatten chunks into one item list and batches that never cross a chunk boundary.

    Returns (items, batches of flat indices, chunk position of each batch). One DataLoader over
    all pending chunks keeps its workers alive across chunks (a loader per chunk would re-fork
    them every 256 images).
    """
    items: list[Item] = []
    batches: list[list[int]] = []
    owner: list[int] = []
    for ci, ch in enumerate(chunks):
        base = len(items)
        items.extend(ch.items)
        for s in range(0, len(ch.items), batch_size):
            batches.append(list(range(base + s, base + min(s + batch_size, len(ch.items)))))
            owner.append(ci)
    return items, batches, owner


# --------------------------------------------------------------------------------------------
# table builders


def _list_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """``[N, D]`` numpy -> Arrow list array without a Python loop over rows."""
    values = np.ascontiguousarray(values)
    n, d = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), type=pa.list_(type_))


def cam_disagreement(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 − mean pairwise Pearson correlation between maps (each ``[B, h, w]``), per image.

    A constant map has no defined correlation: pairs involving one are left out; an image with
    no valid pair gets NaN (stored as null). With fewer than two methods: all NaN.
    """
    if len(maps) < 2:
        return torch.full((maps[0].shape[0] if maps else 0,), float("nan"))
    flat = [m.flatten(1).double() for m in maps]
    centered = [f - f.mean(dim=1, keepdim=True) for f in flat]
    norms = [c.norm(dim=1) for c in centered]
    total = torch.zeros(flat[0].shape[0], dtype=torch.float64, device=flat[0].device)
    count = torch.zeros_like(total)
    for i in range(len(maps)):
        for j in range(i + 1, len(maps)):
            den = norms[i] * norms[j]
            ok = den > 1e-12
            r = (centered[i] * centered[j]).sum(dim=1) / den.clamp_min(1e-12)
            total += torch.where(ok, r, torch.zeros_like(r))
            count += ok.double()
    out = torch.where(count > 0, 1.0 - total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return out.float().cpu()


class _ChunkRows:
    """Column buffers of one chunk (converted to Arrow tables when the chunk is complete)."""

    def __init__(self) -> None:
        self.pred: dict[str, list[Any]] = {k: [] for k in (
            "image_id", "split", "label", "label_name", "pred", "pred_name", "confidence",
            "correct", "loss", "runner_up", "cam_disagreement")}
        self.probs: list[np.ndarray] = []
        self.cam_meta: dict[str, list[Any]] = {k: [] for k in (
            "image_id", "method", "target_kind", "target_class", "h", "w")}
        self.cam_maps: list[np.ndarray] = []
        self.emb_ids: list[str] = []
        self.emb_split: list[str] = []
        self.emb_vecs: list[np.ndarray] = []
        self.faith: dict[str, list[Any]] = {k: [] for k in (
            "image_id", "method", "drop", "increase", "deletion_auc", "insertion_auc")}
        self.fail: dict[str, list[Any]] = {k: [] for k in ("image_id", "split", "source", "reason")}
        self.images: dict[str, list[Any]] = {k: [] for k in (
            "image_id", "split", "label", "label_name", "source", "width", "height", "thumbnail")}

    def add_maps(self, ids: Sequence[str], method: str, kind: str, targets: np.ndarray,
                 maps: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Append maps ``[B, h, w]`` (only ``rows`` when given)."""
        sel = np.arange(len(ids)) if rows is None else rows
        if sel.size == 0:
            return
        _, h, w = maps.shape
        self.cam_meta["image_id"].extend(ids[i] for i in sel)
        self.cam_meta["method"].extend([method] * sel.size)
        self.cam_meta["target_kind"].extend([kind] * sel.size)
        self.cam_meta["target_class"].extend(int(t) for t in targets[sel])
        self.cam_meta["h"].extend([h] * sel.size)
        self.cam_meta["w"].extend([w] * sel.size)
        self.cam_maps.append(maps[sel].reshape(sel.size, h * w).astype(np.float32))

    def tables(self, with_predictions: bool) -> dict[str, pa.Table]:
        out: dict[str, pa.Table] = {}
        if with_predictions:
            d: dict[str, Any] = dict(self.pred)
            probs = np.concatenate(self.probs) if self.probs else np.zeros((0, 1), np.float32)
            d["probabilities"] = _list_array(probs.astype(np.float32), pa.float32())
            d["cam_disagreement"] = [None if (v is None or math.isnan(v)) else v
                                     for v in self.pred["cam_disagreement"]]
            out["predictions"] = pa.table(d)
            out["faithfulness"] = pa.table(self.faith)
        cams: dict[str, Any] = dict(self.cam_meta)
        maps = np.concatenate(self.cam_maps) if self.cam_maps else np.zeros((0, 1), np.float32)
        cams["map"] = _list_array(maps, pa.float32())
        out["cams"] = pa.table(cams)
        vecs = np.concatenate(self.emb_vecs) if self.emb_vecs else np.zeros((0, 1), np.float32)
        out["embeddings"] = pa.table({
            "image_id": self.emb_ids, "split": self.emb_split,
            "vector": _list_array(vecs.astype(np.float16), pa.float16()),
        })
        out["failures"] = pa.table({k: pa.array(v, pa.string()) for k, v in self.fail.items()})
        return out


# --------------------------------------------------------------------------------------------
# the job


class _Job:
    """State shared by the phases of one run (built by :func:`run_job`)."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.timer = _Timer()
        #: seconds per image of each method computed *alone* (seed 004's cost comparison);
        #: measured once on the first, already warm, validation batch
        self.method_seconds: dict[str, float] = {}
        self._scorecam_pred = [0.0, 0]  # seconds, images: Score-CAM for the predicted class

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Validate everything and load the model; raise UserError before any real work."""
        from xaidash.compute.models import get_module
        from xaidash.compute.projection import umap_available
        from xaidash.store.writer import Store

        cfg = self.cfg
        self.methods = validate_methods(cfg.methods)
        self.explain = validate_explain(cfg.explain)
        self.shard = parse_shard(cfg.shard)
        if cfg.precision not in PRECISIONS:
            raise choices_error("precision", cfg.precision, PRECISIONS)
        if cfg.projection is not None and cfg.projection not in PROJECTIONS:
            raise choices_error("projection", cfg.projection, PROJECTIONS)
        if cfg.projection == "umap" and not umap_available():
            raise UserError("--projection umap needs umap-learn (pip install umap-learn), or use pca")
        for name, v, lo in (("--batch-size", cfg.batch_size, 1), ("--chunk-size", cfg.chunk_size, 1),
                            ("--twins", cfg.twins, 0), ("--faithfulness-steps", cfg.faithfulness_steps, 2),
                            ("--workers", cfg.workers, 0)):
            if v < lo:
                raise UserError(f"{name} must be >= {lo}, got {v}")
        for name, v in (("--limit-val", cfg.limit_val), ("--limit-train", cfg.limit_train),
                        ("--scorecam-max-channels", cfg.scorecam_max_channels)):
            if v is not None and v < 1:
                raise UserError(f"{name} must be >= 1, got {v}")
        self.device = resolve_device(cfg.device)

        self.store = Store.create(cfg.store)
        _check_store_writable(self.store.path)

        self.dataset = open_dataset(cfg.data, cfg.data_root)
        self.loaded = load_model(cfg, self.dataset)
        parts = self.loaded.parts
        self.target_layer = cfg.target_layer or parts.target_layer
        get_module(parts.model, self.target_layer)  # UserError listing the valid names
        # CAM needs GAP + one linear layer on *this* layer; another layer makes it inapplicable
        self.linear_head = parts.linear_head if self.target_layer == parts.target_layer else None
        if "cam" in self.methods and self.linear_head is None:
            log.warning("cam is not applicable to %s at layer %s (needs global average pooling + one "
                        "linear layer after it); the run will not have CAM maps",
                        parts.arch, self.target_layer)
        self.preprocessing = parts.preprocessing
        self.class_names = self.loaded.classes

        val = subsample(self.dataset.items("val"), cfg.limit_val)
        if not val:
            raise UserError(f"dataset {cfg.data!r} has no validation images")
        # Twins need labels: an unlabeled train split (there is none today) would be skipped.
        train = subsample(self.dataset.items("train"), cfg.limit_train) if self.dataset.labeled else []
        self.val_items, self.train_items = val, train
        self.chunks = self._plan_chunks()
        self.fingerprint = self.dataset.fingerprint()
        self.job_key = self._job_key()

        model = parts.model.eval().to(self.device)
        for p in model.parameters():  # inference only: no parameter gradients ever
            p.requires_grad_(False)
        self.channels_last = self.device.type == "cuda"
        self.timer.cuda = self.device if self.device.type == "cuda" else None
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _plan_chunks(self) -> list[Chunk]:
        cs = self.cfg.chunk_size
        chunks: list[Chunk] = []
        for split, items in (("val", self.val_items), ("train", self.train_items)):
            for n, s in enumerate(range(0, len(items), cs)):
                chunks.append(Chunk(len(chunks), f"{split}-{n:06d}", split, tuple(items[s : s + cs])))
        return chunks

    def result_args(self) -> dict[str, Any]:
        """Arguments that change the published results (part of the job key and config)."""
        cfg = self.cfg
        return {
            "methods": list(self.methods),
            "explain": list(self.explain),
            "target_layer": self.target_layer,
            "precision": cfg.precision,
            "limit_val": cfg.limit_val,
            "limit_train": cfg.limit_train,
            "twins": cfg.twins,
            "projection": cfg.projection,
            "faithfulness": cfg.faithfulness,
            "faithfulness_steps": cfg.faithfulness_steps if cfg.faithfulness else None,
            "scorecam_max_channels": cfg.scorecam_max_channels if "scorecam" in self.methods else None,
            # chunk ids depend on it, so resuming with another chunk size must not mix chunks
            "chunk_size": cfg.chunk_size,
        }

    def _job_key(self) -> str:
        payload = {
            "format": JOB_FORMAT,
            "model": self.loaded.identity,
            "dataset": {"spec_kind": self.dataset.kind, "fingerprint": self.fingerprint},
            "args": self.result_args(),
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return f"compute-{digest[:32]}"

    def config_json(self) -> str:
        cfg = dataclasses.asdict(self.cfg)
        cfg["methods"] = list(self.methods)
        cfg["explain"] = list(self.explain)
        cfg["target_layer"] = self.target_layer
        cfg["job_key"] = self.job_key
        # explain.py rebuilds the model from this; the Score-CAM cap keeps its maps like the run's
        cfg["model"] = {**self.loaded.model_ref, "target_layer": self.target_layer,
                        "scorecam_max_channels": self.cfg.scorecam_max_channels}
        return json.dumps(cfg, sort_keys=True, default=str)

    # -- per-image phase -------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_chunks(self, staging: Any, chunks: Sequence[Chunk]) -> int:
        """Compute and write ``chunks`` (already filtered to this shard and not done)."""
        if not chunks:
            return 0
        fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0") or 0)
        thumbs_have = self.store.thumbnail_ids(self.fingerprint)
        written = 0
        with CamEngine(self.model, self.target_layer, self.linear_head) as engine:
            for split in ("val", "train"):
                todo = [c for c in chunks if c.split == split]
                if not todo:
                    continue
                with self.timer.stage(f"per_image_{split}"):
                    for done in self._run_split(engine, staging, split, todo, thumbs_have):
                        written += done
                        if fail_after and written >= fail_after:
                            raise RuntimeError(f"simulated crash after {written} chunk(s) ({FAIL_AFTER_ENV})")
        return written

    def _run_split(self, engine: CamEngine, staging: Any, split: str, chunks: Sequence[Chunk],
                   thumbs_have: set[str]) -> Iterator[int]:
        items, batches, owner = _batches(chunks, self.cfg.batch_size)
        want_thumbs = {it.image_id for it in items} - thumbs_have
        ds = _ImageSet(self.dataset, items, self.preprocessing.transform(train=False), want_thumbs)
        loader = DataLoader(
            ds, batch_sampler=batches, num_workers=self.cfg.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        bar = tqdm(total=len(items), desc=f"{split} images", unit="img", file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.1)
        rows = _ChunkRows()
        current = 0
        n_failed = 0
        try:
            for bi, batch in enumerate(loader):
                ci = owner[bi]
                if ci != current:  # all batches of the previous chunk have arrived
                    self._write_chunk(staging, chunks[current], rows)
                    yield 1
                    rows, current = _ChunkRows(), ci
                for idx, reason in batch["failed"]:
                    it = items[idx]
                    log.warning("skipping unreadable image %s: %s", it.source, reason)
                    rows.fail["image_id"].append(it.image_id)
                    rows.fail["split"].append(it.split)
                    rows.fail["source"].append(it.source)
                    rows.fail["reason"].append(reason)
                    n_failed += 1
                if batch["x"] is not None:
                    batch_items = [items[i] for i in batch["index"]]
                    if split == "val":
                        self._val_batch(engine, batch["x"], batch_items, rows)
                    else:
                        self._train_batch(engine, batch["x"], batch_items, rows)
                    self._image_rows(batch_items, batch["size"], batch["thumb"], rows)
                bar.update(len(batch["index"]) + len(batch["failed"]))
            if batches:
                self._write_chunk(staging, chunks[current], rows)
                yield 1
        finally:
            bar.close()
        if n_failed:
            log.warning("%s: %d image(s) could not be read and were skipped (see the failures table)",
                        split, n_failed)

    def _write_chunk(self, staging: Any, chunk: Chunk, rows: _ChunkRows) -> None:
        tables = rows.tables(with_predictions=chunk.split == "val")
        # Thumbnails are staged with the chunk and join the dataset's shared images at publish,
        # so a killed job leaves nothing visible.
        if rows.images["image_id"]:
            tables["images"] = pa.table({
                **{k: v for k, v in rows.images.items() if k not in ("thumbnail", "dataset_fingerprint")},
                "thumbnail": pa.array(rows.images["thumbnail"], pa.binary()),
            })
        staging.write_chunk(chunk.chunk_id, tables)

    def _image_rows(self, items: Sequence[Item], sizes: Sequence[tuple[int, int]],
                    thumbs: Sequence[bytes | None], rows: _ChunkRows) -> None:
        for it, (w, h), th in zip(items, sizes, thumbs, strict=True):
            if th is None:  # already stored for this dataset fingerprint
                continue
            rows.images["image_id"].append(it.image_id)
            rows.images["split"].append(it.split)
            rows.images["label"].append(it.label)
            rows.images["label_name"].append(self._label_name(it.label))
            rows.images["source"].append(it.source)
            rows.images["width"].append(w)
            rows.images["height"].append(h)
            rows.images["thumbnail"].append(th)

    def _label_name(self, label: int | None) -> str | None:
        if label is None or self.dataset.classes is None:
            return None
        return self.dataset.classes[label]

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _val_batch(self, engine: CamEngine, x_cpu: torch.Tensor, items: Sequence[Item],
                   rows: _ChunkRows) -> None:
        cfg = self.cfg
        x = self._to_device(x_cpu)
        ids = [it.image_id for it in items]
        labeled = self.dataset.labeled and all(it.label is not None for it in items)
        labels = torch.tensor([it.label for it in items], dtype=torch.long) if labeled else None
        # sub-stages of per_image_val (the rest of it is decoding wait, tables and writes)
        with self.timer.stage("val_forward_backward"), self.autocast():
            res = engine.forward(x, self.methods, true_labels=labels if "true" in self.explain else None)
        if not self.method_seconds:
            self._calibrate(engine, x)
        logits = res.logits.float()
        probs = logits.softmax(dim=1)
        # the class the gradient maps explain (argmax of the logits): ties in the rounded
        # softmax must not make the stored prediction differ from the explained class
        pred = res.targets["pred"].to(probs.device)
        conf = probs.gather(1, pred[:, None])[:, 0]
        # runner-up: the second most probable class (none for a one-class model)
        runner = probs.topk(2, dim=1).indices[:, 1] if probs.shape[1] >= 2 else torch.full_like(pred, -1)
        pred_np = pred.cpu().numpy()
        maps: dict[str, torch.Tensor] = {m: res.maps[(m, "pred")] for m in self.methods
                                          if (m, "pred") in res.maps}
        if "scorecam" in self.methods:
            t0 = time.perf_counter()
            with self.timer.stage("val_scorecam"), self.autocast():
                maps["scorecam"] = engine.scorecam(
                    x, res.activations, pred, batch_size=max(cfg.batch_size, 64),
                    max_channels=cfg.scorecam_max_channels, channels_last=self.channels_last,
                ).float()
            self._scorecam_pred[0] += time.perf_counter() - t0
            self._scorecam_pred[1] += len(ids)
        maps = {m: maps[m] for m in self.methods if m in maps}  # canonical order

        for m, mp in maps.items():
            rows.add_maps(ids, m, "pred", pred_np, mp.detach().cpu().numpy())
        if labels is not None and "true" in self.explain:
            lab_np = labels.numpy()
            wrong = np.nonzero(lab_np != pred_np)[0]
            if wrong.size:
                for m in self.methods:
                    if m == "scorecam":
                        continue
                    if (m, "true") in res.maps:
                        rows.add_maps(ids, m, "true", lab_np, res.maps[(m, "true")].cpu().numpy(), wrong)
                if "scorecam" in self.methods:
                    sel = torch.from_numpy(wrong).to(self.device)
                    with self.timer.stage("val_scorecam"), self.autocast():
                        sc_true = engine.scorecam(
                            x[sel], res.activations[sel.to(res.activations.device)],
                            labels[wrong].to(self.device), batch_size=max(cfg.batch_size, 64),
                            max_channels=cfg.scorecam_max_channels, channels_last=self.channels_last,
                        ).float().cpu().numpy()
                    full = np.zeros((len(ids), *sc_true.shape[1:]), np.float32)
                    full[wrong] = sc_true
                    rows.add_maps(ids, "scorecam", "true", lab_np, full, wrong)

        if cfg.faithfulness and maps:
            from xaidash.compute.faithfulness import faithfulness

            with self.timer.stage("val_faithfulness"), self.autocast():
                # the base probability Y is the confidence already computed: saves a forward
                fa = faithfulness(self.model, x, maps, pred.to(self.device), steps=cfg.faithfulness_steps,
                                  batch_size=max(cfg.batch_size, 64), base_probs=conf.to(self.device))
            for m, vals in fa.items():
                rows.faith["image_id"].extend(ids)
                rows.faith["method"].extend([m] * len(ids))
                for key in ("drop", "increase", "deletion_auc", "insertion_auc"):
                    rows.faith[key].extend(float(v) for v in vals[key].float().cpu().tolist())

        disagreement = cam_disagreement([mp.detach() for mp in maps.values()]).tolist()
        if labels is not None:
            loss = F.cross_entropy(logits.cpu(), labels, reduction="none").tolist()
            correct = (labels == pred.cpu()).tolist()
        else:
            loss = [None] * len(ids)
            correct = [None] * len(ids)
        names = self.class_names
        p = rows.pred
        for i, it in enumerate(items):
            p["image_id"].append(it.image_id)
            p["split"].append("val")
            p["label"].append(it.label if labels is not None else None)
            p["label_name"].append(self._label_name(it.label) if labels is not None else None)
            p["pred"].append(int(pred_np[i]))
            p["pred_name"].append(names[int(pred_np[i])])
            p["confidence"].append(float(conf[i]))
            p["correct"].append(correct[i])
            p["loss"].append(loss[i])
            r = int(runner[i])
            p["runner_up"].append(r if r >= 0 else None)
            p["cam_disagreement"].append(disagreement[i])
        rows.probs.append(probs.cpu().numpy())
        rows.emb_ids.extend(ids)
        rows.emb_split.extend(["val"] * len(ids))
        rows.emb_vecs.append(res.embedding.float().cpu().numpy())

    def _calibrate(self, engine: CamEngine, x: torch.Tensor) -> None:
        """Time each method alone on this batch, per image.

        In a run the three gradient methods share one forward and one backward pass, so their
        cost cannot be told apart there. Seed 004 compares the methods' cost, so each one is
        also run alone once: CAM is a forward pass and a weighted sum, Grad-CAM and Grad-CAM++
        add the backward pass to the target layer, and Score-CAM (timed over the whole run)
        adds its masked forward passes to a forward pass that captures the activations.
        """
        b = max(1, x.shape[0])
        alone = [m for m in GRADIENT_METHODS if m in self.methods]
        if "scorecam" in self.methods:
            alone.append("forward")
        for m in alone:
            if m == "cam" and not engine.cam_applicable:
                continue
            t0 = time.perf_counter()
            with self.autocast():
                engine.forward(x, [] if m == "forward" else [m])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.method_seconds[m] = (time.perf_counter() - t0) / b

    def method_ms_per_image(self) -> dict[str, float]:
        """Milliseconds per image of each method on its own (see :meth:`_calibrate`)."""
        out = {m: 1000.0 * v for m, v in self.method_seconds.items() if m != "forward"}
        seconds, n = self._scorecam_pred
        if "scorecam" in self.methods and n:
            out["scorecam"] = 1000.0 * (self.method_seconds.get("forward", 0.0) + seconds / n)
        return {m: round(v, 3) for m, v in out.items()}

    def _train_batch(self, engine: CamEngine, x_cpu: torch.Tensor, items: Sequence[Item],
                     rows: _ChunkRows) -> None:
        x = self._to_device(x_cpu)
        ids = [it.image_id for it in items]
        # Grad-CAM (target pred) so the dashboard can show each twin's own evidence; without
        # gradcam in --methods the train pass is a plain forward for the embeddings.
        want = ("gradcam",) if "gradcam" in self.methods else ()
        with self.autocast():
            res = engine.forward(x, want)
        if ("gradcam", "pred") in res.maps:
            rows.add_maps(ids, "gradcam", "pred", res.targets["pred"].cpu().numpy(),
                          res.maps[("gradcam", "pred")].cpu().numpy())
        rows.emb_ids.extend(ids)
        rows.emb_split.extend(["train"] * len(ids))
        rows.emb_vecs.append(res.embedding.float().cpu().numpy())

    # -- global phase ------------------------------------------------------------------------
    def global_phase(self, staging: Any) -> tuple[str, float | None]:
        """Neighbours, projection, metrics; publish. Returns (run_id, accuracy)."""
        from xaidash.compute.metrics import classification_report, confusion_long
        from xaidash.compute.neighbors import find_neighbors
        from xaidash.compute.projection import project_2d

        with self.timer.stage("global_read"):
            pred_cols: dict[str, list[Any]] = {k: [] for k in ("image_id", "label", "pred", "runner_up")}
            for b in staging.iter_table("predictions", columns=list(pred_cols)):
                for k in pred_cols:
                    pred_cols[k].extend(b.column(k).to_pylist())
            emb_ids: list[str] = []
            emb_split: list[str] = []
            vec_parts: list[np.ndarray] = []
            dim = 0
            for b in staging.iter_table("embeddings", columns=["image_id", "split", "vector"]):
                emb_ids.extend(b.column("image_id").to_pylist())
                emb_split.extend(b.column("split").to_pylist())
                col = b.column("vector")
                if len(col):
                    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                    dim = flat.size // len(col)
                    vec_parts.append(flat.reshape(len(col), dim))
            vectors = np.concatenate(vec_parts) if vec_parts else np.zeros((0, 1), np.float32)
            n_failed = sum(b.num_rows for b in staging.iter_table("failures", columns=["image_id"]))
            # The methods the run really has: CAM may have been found inapplicable at runtime
            # (CamEngine checks logits == fc(GAP(A)) on the first batch and switches it off).
            map_hw = None
            present: set[str] = set()
            for b in staging.iter_table("cams", columns=["method", "h", "w"]):
                if b.num_rows:
                    present.update(b.column("method").unique().to_pylist())
                    if map_hw is None:
                        map_hw = (int(b.column("h")[0].as_py()), int(b.column("w")[0].as_py()))

        val_ids = pred_cols["image_id"]
        row_of = {iid: i for i, iid in enumerate(emb_ids)}
        split_arr = np.array(emb_split)
        train_rows = np.nonzero(split_arr == "train")[0]
        train_label_of = {it.image_id: it.label for it in self.train_items}
        labels_known = self.dataset.labeled and all(v is not None for v in pred_cols["label"])
        tables: dict[str, pa.Table] = {}

        with self.timer.stage("neighbors"):
            nb_rows = 0
            if self.cfg.twins > 0 and train_rows.size and self.dataset.labeled and val_ids:
                val_rows = np.array([row_of[i] for i in val_ids], dtype=np.int64)
                train_ids = [emb_ids[r] for r in train_rows]
                train_labels = np.array([train_label_of[i] for i in train_ids], dtype=np.int64)
                runner = np.array([-1 if r is None else r for r in pred_cols["runner_up"]], np.int64)
                tab = find_neighbors(
                    vectors[val_rows], np.array(pred_cols["pred"], np.int64), runner,
                    np.array(pred_cols["label"], np.int64) if labels_known else None,
                    vectors[train_rows], train_labels, k=self.cfg.twins, device=self.device,
                )
                tables["neighbors"] = pa.table({
                    "image_id": [val_ids[q] for q in tab.query_row],
                    "kind": pa.array(tab.kind.tolist(), pa.string()),
                    "rank": tab.rank,
                    "neighbor_id": [train_ids[j] for j in tab.neighbor_row],
                    "neighbor_class": tab.neighbor_class.astype(np.int32),
                    "similarity": tab.similarity,
                })
                nb_rows = len(tab)
            log.info("neighbors: %d rows", nb_rows)

        with self.timer.stage("projection"):
            xy, used = project_2d(vectors, self.cfg.projection, seed=0)
            tables["embeddings"] = pa.table({"image_id": emb_ids, "x": xy[:, 0], "y": xy[:, 1]})
            log.info("projection: %s over %d embeddings", used, len(emb_ids))

        accuracy: float | None = None
        with self.timer.stage("metrics"):
            if labels_known and val_ids:
                y = np.array(pred_cols["label"], np.int64)
                p = np.array(pred_cols["pred"], np.int64)
                c = len(self.class_names)
                rep = classification_report(y, p, c)
                accuracy = rep.accuracy
                tables["class_metrics"] = pa.table({
                    "class": np.arange(c, dtype=np.int32), "class_name": self.class_names,
                    "precision": rep.precision, "recall": rep.recall, "f1": rep.f1, "support": rep.support,
                })
                t_idx, p_idx, cnt = confusion_long(rep.confusion)
                if c > 100:  # ImageNet-sized: a dense 1M-cell grid of zeros helps nobody
                    keep = cnt > 0
                    t_idx, p_idx, cnt = t_idx[keep], p_idx[keep], cnt[keep]
                tables["confusion"] = pa.table({
                    "true_class": t_idx.astype(np.int32), "pred_class": p_idx.astype(np.int32), "count": cnt,
                })

        scorecam_note = None
        max_ch = self.cfg.scorecam_max_channels
        if "scorecam" in self.methods and max_ch and dim > max_ch:
            scorecam_note = (f"top-{max_ch} channels of {dim} "
                             "by mean activation per image (approximate Score-CAM)")
        n_train = int(train_rows.size)
        run_row: dict[str, Any] = {
            "status": "partial" if n_failed else "complete",
            "dataset_spec": self.cfg.data,
            "dataset_fingerprint": self.fingerprint,
            "dataset_kind": self.dataset.kind,
            "checkpoint_path": self.loaded.checkpoint_path,
            "checkpoint_sha256": self.loaded.checkpoint_sha256,
            "arch": self.loaded.arch,
            "class_names": list(self.class_names),
            "methods": [m for m in self.methods if m in present],
            "target_layer": self.target_layer,
            "map_h": map_hw[0] if map_hw else None,
            "map_w": map_hw[1] if map_hw else None,
            "num_val": len(val_ids),
            "num_train": n_train,
            "num_failed": int(n_failed),
            "accuracy": accuracy,
            "scorecam_note": scorecam_note,
            "config_json": self.config_json(),
            "versions_json": json.dumps(_versions(used)),
            "timings_json": json.dumps({**{k: round(v, 3) for k, v in self.timer.seconds.items()},
                                        "method_ms_per_image": self.method_ms_per_image()}),
            "device": str(self.device) if self.device.type == "cpu"
            else f"{self.device} ({_gpu_name(self.device)})",
        }
        with self.timer.stage("publish"):
            run_id = staging.publish(run_row, tables)
        return run_id, accuracy


def _gpu_name(dev: torch.device) -> str:
    with contextlib.suppress(Exception):
        return torch.cuda.get_device_name(dev)
    return "?"


def _versions(projection: str) -> dict[str, str]:
    """Versions of everything that shapes the numbers (recorded in the run)."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "pyarrow": pa.__version__, "projection": projection}
    for pkg in ("xaidash", "torchvision", "timm", "umap-learn", "scikit-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def _run_bytes(store_path: Path, run_id: str) -> int:
    """Bytes of a published run's tables, from its manifest."""
    from xaidash.store.writer import read_manifest

    m = read_manifest(store_path / "runs" / run_id) or {}
    tables: Mapping[str, Any] = m.get("tables", {})
    return int(sum(int(t.get("bytes", 0)) for t in tables.values()))


def run_job(cfg: JobConfig) -> JobResult:
    """Run (or resume, or finish) one compute job. See the module docstring."""
    job = _Job(cfg)
    with job.timer.stage("setup"):
        job.setup()
    store = job.store
    existing = store.published_job(job.job_key)
    if existing is not None and cfg.new_run:
        # Same model, data and arguments, but the user asked for another run (the demo does,
        # to add a run each time it is started). The suffix is deterministic - the first free
        # one - so a killed --new-run job still resumes its own staging when run again.
        n = 2
        while store.published_job(f"{job.job_key}-{n}") is not None:
            n += 1
        job.job_key = f"{job.job_key}-{n}"
        existing = None
    if existing is not None:
        log.info("this run already exists: run %s (same model, data and arguments); nothing to do. "
                 "Delete it with `xaidash runs delete %s --store %s`, or pass --new-run, to recompute.",
                 existing, existing, cfg.store)
        return JobResult(ok=True, run_id=existing, already_published=True, chunks_total=len(job.chunks))

    from xaidash.store.writer import AlreadyPublished

    # Shards of one job run at the same time (one per GPU or machine): each holds its own lock on
    # the shared staging and writes its own chunks; an unsharded job is the only writer.
    owner = f"shard-{job.shard[0]}-of-{job.shard[1]}" if job.shard else None
    try:
        staging = store.staging(job.job_key, owner=owner)
    except AlreadyPublished as exc:  # another shard published it since the check above
        log.info("this run already exists: run %s (published by another shard)", exc.run_id)
        return JobResult(ok=True, run_id=exc.run_id, already_published=True, chunks_total=len(job.chunks))
    try:
        all_ids = {c.chunk_id for c in job.chunks}
        done = staging.done_chunks() & all_ids
        if done:
            log.info("resuming: %d of %d chunks already done", len(done), len(job.chunks))
        mine = [c for c in job.chunks
                if job.shard is None or c.index % job.shard[1] == job.shard[0]]
        todo = [] if cfg.finalize else [c for c in mine if c.chunk_id not in done]
        n_val = sum(len(c.items) for c in todo if c.split == "val")
        n_train = sum(len(c.items) for c in todo if c.split == "train")
        log.info("job %s: %d chunks to compute (%d val + %d train images) on %s%s",
                 job.job_key, len(todo), n_val, n_train, job.device,
                 f", shard {cfg.shard}" if job.shard else "")
        written = job.run_chunks(staging, todo)
        missing = all_ids - staging.done_chunks()
        if missing:
            if cfg.finalize or job.shard is None:
                raise UserError(
                    f"{len(missing)} of {len(job.chunks)} chunks are not computed yet; run the "
                    "remaining shards (same arguments, --shard I/N) before --finalize"
                )
            n = job.shard[1]
            pending = sorted({c.index % n for c in job.chunks if c.chunk_id in missing})
            log.info("shard %s done (%d chunks); %d chunks remain in shard(s) %s: run them with the same "
                     "arguments; the last one publishes the run (or run --finalize afterwards).",
                     cfg.shard, written, len(missing), ", ".join(f"{i}/{n}" for i in pending))
            staging.close()
            return JobResult(ok=True, chunks_total=len(job.chunks), chunks_done_here=written,
                             chunks_missing=len(missing), timings=dict(job.timer.seconds))
        try:
            # Every chunk is done: take the exclusive publish lock (waits for other shards that
            # are still writing or publishing), then re-check under it before the global phase.
            with staging.publishing():
                missing = all_ids - staging.done_chunks()
                if missing:  # pragma: no cover - a chunk being rewritten by an overlapping shard
                    raise UserError(f"{len(missing)} chunks are not done any more; run --finalize "
                                    "once every shard has finished")
                run_id, accuracy = job.global_phase(staging)
        except AlreadyPublished as exc:
            # another shard published the same job concurrently: report its run, not an error
            log.info("shard %s: every chunk is done and another shard published the run: %s",
                     cfg.shard, exc.run_id)
            staging.close()
            return JobResult(ok=True, run_id=exc.run_id, already_published=True,
                             chunks_total=len(job.chunks), chunks_done_here=written,
                             timings=dict(job.timer.seconds))
    except BaseException:
        staging.close()  # keep the staging: a re-run resumes from the done chunks
        raise

    nbytes = _run_bytes(store.path, run_id)
    per_val = nbytes / max(1, len(job.val_items))
    t = job.timer.seconds
    log.info("published run %s to %s", run_id, store.path)
    log.info("  images: %d val, %d train; accuracy: %s", len(job.val_items), len(job.train_items),
             "n/a (unlabeled)" if accuracy is None else f"{accuracy:.4f}")
    log.info("  time per stage: %s", ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    log.info("  run tables: %.1f KiB in total, %.0f bytes per val image (thumbnails are shared per dataset)",
             nbytes / 1024, per_val)
    return JobResult(ok=True, run_id=run_id, published=True, chunks_total=len(job.chunks),
                     chunks_done_here=written, timings=dict(t), accuracy=accuracy,
                     bytes_per_val_image=per_val)
