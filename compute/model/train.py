"""Training / fine-tuning loop behind ``xaidash train``.

Adam + cross-entropy (seed 001: Adam lr 1e-4, batch 32), augmentation = random horizontal
flip + rotation within ±10° (seed 003), optional frozen backbone with only the new head
trained (seed 003's transfer-learning setup). Deterministic on CPU for a given ``--seed``:
all randomness (init, shuffling, augmentation, worker seeds) comes from seeded torch RNGs.

Images are decoded through :meth:`compute.data.Dataset.load`; an unreadable image is
reported once (path + reason, logging warning), skipped, and counted per split - one bad file
does not cost a training run, and the reported accuracy says over how many images it was
measured. The checkpoint is written atomically at the end, and the output directory is checked
for writability *before* training starts.

**BatchNorm statistics are recalibrated at the end** (:func:`recalibrate_batchnorm`): the
running mean/variance start at 0/1 and move 10 % per step, so after few steps (a small
dataset, few epochs) they are far from the activations' and eval mode can predict one class
for everything while training accuracy is high. One pass over the training images without
augmentation recomputes them as plain averages (what ``torch.optim.swa_utils.update_bn`` does,
with dropout kept in eval mode). BatchNorm layers of a frozen backbone keep theirs. The
per-epoch validation accuracy in ``metrics["history"]`` is measured with the training-time
statistics; the final one with the recalibrated statistics the checkpoint carries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from xaidash.compute.datasets.imageset import Batch, ImageSet, Sample, Transform, collate
from xaidash.compute.datasets.sources import Dataset, ImageLoadError, Item, open_dataset, subsample
from xaidash.compute.device import resolve_device
from xaidash.compute.hostmem import tune_host_allocator
from xaidash.compute.model.architectures import (
    build_model,
    check_arch,
    freeze_backbone,
    get_module,
    head_module,
    is_timm,
)
from xaidash.compute.model.checkpoint import (
    Checkpoint,
    check_writable,
    current_versions,
    now_iso,
    save_checkpoint,
)
from xaidash.compute.model.external import parse_model_args
from xaidash.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything ``xaidash train`` takes; stored in the checkpoint as ``train_args``."""

    data: str
    model: str
    out: str
    weights: str = "none"
    data_root: str | None = None
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    freeze_backbone: bool = False
    input_size: int | None = None
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    limit_train: int | None = None
    #: timm:NAME models: timm.create_model's keyword arguments, as JSON
    model_args: str | None = None
    limit_val: int | None = None


@dataclass
class TrainResult:
    """What the CLI reports after training."""

    checkpoint: Checkpoint
    accuracy: float | None
    report: str
    elapsed_s: float
    skipped: dict[str, str] = field(default_factory=dict)  # source -> reason
    n_train: int = 0  # listed (after --limit-train)
    n_val: int = 0  # listed (after --limit-val)
    device: str = "cpu"
    n_train_skipped: int = 0  # unreadable, left out
    n_val_skipped: int = 0
    n_val_evaluated: int = 0  # what ``accuracy`` is measured over


def default_workers() -> int:
    """DataLoader workers: leave one core for the training process itself, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _note_failures(batch: Batch, items: list[Item], skipped: dict[str, str]) -> None:
    for index, reason in batch.failed:
        source = items[index].source
        if source not in skipped:
            skipped[source] = reason
            logger.warning("skipping unreadable image %s: %s", source, reason)


def _loader(ds: Dataset, items: list[Item], transform: Transform, cfg: TrainConfig, shuffle: bool,
            workers: int, pin: bool) -> DataLoader[Sample]:
    gen = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(
        ImageSet(ds, items, transform), batch_size=cfg.batch_size, shuffle=shuffle,
        num_workers=workers, collate_fn=collate, generator=gen, pin_memory=pin,
        persistent_workers=workers > 0, drop_last=False,
    )


def _labels(batch: Batch, items: list[Item]) -> torch.Tensor:
    return torch.tensor([items[i].label for i in batch.index], dtype=torch.long)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader[Sample], items: list[Item], device: torch.device,
             skipped: dict[str, str], desc: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) over ``loader`` of ``items``; unreadable images are skipped and noted."""
    model.eval()
    labels: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    for batch in tqdm(loader, desc=desc, unit="batch", file=sys.stderr, leave=False):
        _note_failures(batch, items, skipped)
        if batch.x is None:
            continue
        logits = model(batch.x.to(device, non_blocking=True))
        preds.append(logits.argmax(1).cpu().numpy())
        labels.append(_labels(batch, items).numpy())
    if not preds:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(labels), np.concatenate(preds)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader: DataLoader[Sample], items: list[Item],
                          device: torch.device, skipped: dict[str, str],
                          layers: list[torch.nn.modules.batchnorm._BatchNorm]) -> int:
    """Recompute the running mean/variance of ``layers`` over ``loader`` (the training images
    without augmentation) as plain averages over its batches; returns the images seen.

    The rest of the model stays in eval mode (dropout off: the statistics of what the network
    computes at inference). With no layer or no readable image nothing changes."""
    if not layers:
        return 0
    saved = {id(m): ({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in layers}
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    seen = 0
    for batch in tqdm(loader, desc="BatchNorm statistics", unit="batch", file=sys.stderr, leave=False):
        _note_failures(batch, items, skipped)
        if batch.x is None:
            continue
        model(batch.x.to(device, non_blocking=True))
        seen += batch.x.shape[0]
    for m in layers:
        state, m.momentum = saved[id(m)]
        if not seen:  # nothing readable: keep what training left
            m.load_state_dict(state)
    model.eval()
    return seen


def _trained_batchnorm(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers in training mode (after :func:`_set_train_mode`: not a frozen one)."""
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]


def _set_train_mode(model: torch.nn.Module, head: str, frozen: bool) -> None:
    """train() mode; with a frozen backbone keep its BatchNorm statistics fixed too (eval),
    otherwise "frozen" layers would still drift through their running mean/var."""
    if not frozen:
        model.train()
        return
    model.eval()
    get_module(model, head).train()


def _metrics(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> tuple[dict[str, Any], str]:
    from sklearn.metrics import classification_report

    idx = list(range(len(classes)))
    rep = classification_report(labels, preds, labels=idx, target_names=classes, zero_division=0,
                                output_dict=True)
    text = classification_report(labels, preds, labels=idx, target_names=classes, zero_division=0,
                                 digits=3)
    per_class = {c: {k: float(rep[c][k]) for k in ("precision", "recall", "f1-score", "support")}
                 for c in classes}
    acc = float((labels == preds).mean()) if labels.size else 0.0
    metrics = {
        "val_accuracy": acc,
        "per_class": per_class,
        "macro_f1": float(rep["macro avg"]["f1-score"]),
        "weighted_f1": float(rep["weighted avg"]["f1-score"]),
        "n_val": int(labels.size),
    }
    return metrics, text


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the checkpoint to ``cfg.out``."""
    t0 = time.perf_counter()
    check_arch(cfg.model)  # cheap checks first: a typo should not wait for a dataset scan
    out = check_writable(cfg.out)  # fail before the long part, not after it
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr > 0")
    if cfg.workers is not None and cfg.workers < 0:
        raise UserError(f"--workers must be >= 0, got {cfg.workers}")
    device = resolve_device(cfg.device)
    tune_host_allocator()

    ds = open_dataset(cfg.data, cfg.data_root)
    if not ds.labeled or ds.classes is None:
        raise UserError(f"{cfg.data} is unlabeled (folder:); training needs labeled data")
    train_items = subsample(ds.items("train"), cfg.limit_train, seed=cfg.seed)
    val_items = subsample(ds.items("val"), cfg.limit_val, seed=cfg.seed)
    if not train_items:
        raise UserError(
            f"{cfg.data} has no train split; training needs DIR/train/<class>/... next to DIR/val/<class>/..."
        )
    if len(ds.classes) < 2:
        raise UserError(f"{cfg.data} has {len(ds.classes)} class; training needs at least 2")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    input_size = cfg.input_size
    if input_size is None and cfg.weights == "none" and not is_timm(cfg.model):
        # scratch: the images' own resolution (a timm model takes the size it was built for)
        input_size = max(16, ds.natural_size())
    parts = build_model(cfg.model, len(ds.classes), cfg.weights, input_size, reinit_head=True,
                        model_args=parse_model_args(cfg.model_args))
    model = parts.model.to(device)
    head = head_module(parts)
    if cfg.freeze_backbone:
        trainable = freeze_backbone(parts)
        logger.info("frozen backbone: training %d tensors of %s", len(trainable), head)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    workers = default_workers() if cfg.workers is None else max(0, cfg.workers)
    pin = device.type == "cuda"
    # Load array datasets once before workers fork, so they share the decoded arrays.
    for it in (*train_items[:1], *val_items[:1]):
        with contextlib.suppress(ImageLoadError):  # reported later, when the loader meets it
            ds.load(it)
    pre = parts.preprocessing
    train_loader = _loader(ds, train_items, pre.transform(train=True), cfg, True, workers, pin)
    val_loader = _loader(ds, val_items, pre.transform(train=False), cfg, False, workers, pin)
    logger.info("training %s on %s: %d train / %d val images, %d classes, input %d px, %s, %d workers",
                cfg.model, cfg.data, len(train_items), len(val_items), len(ds.classes), pre.input_size,
                device, workers)

    skipped: dict[str, str] = {}
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        _set_train_mode(model, head, cfg.freeze_backbone)
        seen, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", file=sys.stderr)
        for batch in bar:
            _note_failures(batch, train_items, skipped)
            if batch.x is None:
                continue
            x = batch.x.to(device, non_blocking=True)
            y = _labels(batch, train_items).to(device, non_blocking=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = y.numel()
            seen += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        bar.close()
        if seen == 0:
            raise UserError(f"none of the {len(train_items)} training images could be read (see warnings)")
        entry = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen}
        if val_items:
            labels, preds = evaluate(model, val_loader, val_items, device, skipped)
            entry["val_acc"] = float((labels == preds).mean()) if labels.size else 0.0
        history.append(entry)
        logger.info("epoch %d/%d: loss %.4f, train acc %.3f%s", epoch, cfg.epochs, entry["train_loss"],
                    entry["train_acc"], f", val acc {entry['val_acc']:.3f}" if "val_acc" in entry else "")

    del bar, train_loader  # training is over: its persistent workers go before the next loader's start
    _set_train_mode(model, head, cfg.freeze_backbone)
    bn_layers = _trained_batchnorm(model)
    recal_loader = _loader(ds, train_items, pre.transform(train=False), cfg, False, workers, pin)
    recalibrated = recalibrate_batchnorm(model, recal_loader, train_items, device, skipped, bn_layers)
    if recalibrated:
        last = history[-1]
        before = f"; validation accuracy before: {last['val_acc']:.3f}" if "val_acc" in last else ""
        logger.info("recalibrated BatchNorm statistics over %d training images (no augmentation)%s",
                    recalibrated, before)

    accuracy: float | None = None
    report = "no validation images"
    metrics: dict[str, Any] = {}
    n_val_evaluated = 0
    if val_items:
        labels, preds = evaluate(model, val_loader, val_items, device, skipped, desc="final val")
        metrics, report = _metrics(labels, preds, list(ds.classes))
        accuracy = metrics["val_accuracy"]
        n_val_evaluated = int(labels.size)
    elapsed = time.perf_counter() - t0
    train_sources = {it.source for it in train_items}
    n_train_skipped = sum(1 for src in skipped if src in train_sources)
    n_val_skipped = len(skipped) - n_train_skipped
    metrics.update({"n_train": len(train_items) - n_train_skipped, "n_train_skipped": n_train_skipped,
                    "n_val_skipped": n_val_skipped, "skipped": len(skipped), "history": history,
                    "bn_recalibrated": recalibrated, "elapsed_s": round(elapsed, 3), "device": str(device)})
    if skipped:
        logger.warning("skipped %d unreadable images (%d train, %d val)", len(skipped), n_train_skipped,
                       n_val_skipped)

    args = asdict(cfg)
    args["out"] = str(out)
    args["input_size"] = pre.input_size
    args["workers"] = workers
    args["dataset_fingerprint"] = ds.fingerprint()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = Checkpoint(
        arch=cfg.model, classes=list(ds.classes), preprocessing=pre,
        small_input_stem=parts.small_input_stem, state_dict=state, train_args=args,
        metrics=metrics, versions=current_versions(), created=now_iso(),
    )
    save_checkpoint(ckpt, out)
    logger.info("wrote checkpoint %s", out)
    return TrainResult(ckpt, accuracy, report, time.perf_counter() - t0, skipped,
                       len(train_items), len(val_items), str(device), n_train_skipped=n_train_skipped,
                       n_val_skipped=n_val_skipped, n_val_evaluated=n_val_evaluated)


def checkpoint_path_hint(path: str | Path) -> str:
    """How the next step uses the checkpoint (printed by the CLI)."""
    return f"next: xaidash compute --data SPEC --checkpoint {path} --store DIR"
