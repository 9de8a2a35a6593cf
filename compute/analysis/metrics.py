"""Classification metrics (accuracy, per-class precision/recall/F1/support, macro and weighted
averages, the confusion matrix) and the disagreement between CAM methods.

Plain numpy on integer label/prediction arrays, so the global phase of the job does not need
scikit-learn; the definitions match ``sklearn.metrics`` (``precision_recall_fscore_support``
with ``zero_division=0`` and ``confusion_matrix`` with rows = true class, columns = predicted
class), which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationReport:
    """All metrics of one labeled evaluation.

    Per-class arrays have one entry per class index ``0..C-1`` (classes absent from both the
    labels and the predictions get 0 everywhere, support 0).
    """

    accuracy: float
    precision: np.ndarray  # [C] float64
    recall: np.ndarray  # [C] float64
    f1: np.ndarray  # [C] float64
    support: np.ndarray  # [C] int64: number of true instances per class
    confusion: np.ndarray  # [C, C] int64: confusion[true, pred]
    macro: dict[str, float]  # precision, recall, f1: unweighted mean over classes
    weighted: dict[str, float]  # precision, recall, f1: mean weighted by support

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.support.shape[0])


def _check(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert inputs to int64 1-D arrays of equal length within ``[0, C)``."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(preds, dtype=np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.shape[0]} vs {p.shape[0]}")
    if num_classes <= 0:
        raise ValueError("num_classes must be positive")
    for name, arr in (("labels", y), ("preds", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    return y, p


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts; row = true class, column = predicted class (sklearn's layout)."""
    y, p = _check(labels, preds, num_classes)
    # bincount over the flattened (true, pred) index: one pass, no Python loop over images
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's ``zero_division=0``)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def classification_report(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> ClassificationReport:
    """Compute every metric from the confusion matrix (one pass over the data)."""
    cm = confusion_matrix(labels, preds, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true instances per class
    predicted = cm.sum(axis=0)  # predictions per class
    precision = _safe_div(tp, predicted.astype(np.float64))
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2.0 * precision * recall, precision + recall)
    n = int(support.sum())
    accuracy = float(tp.sum() / n) if n else 0.0
    macro = {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
    }
    if n:
        w = support / n
        weighted = {
            "precision": float((precision * w).sum()),
            "recall": float((recall * w).sum()),
            "f1": float((f1 * w).sum()),
        }
    else:
        weighted = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    return ClassificationReport(
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support.astype(np.int64),
        confusion=cm,
        macro=macro,
        weighted=weighted,
    )


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of predictions equal to the label (0.0 for no data)."""
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(preds).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.shape[0]} vs {p.shape[0]}")
    return float((y == p).mean()) if y.size else 0.0


def confusion_long(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long form of a confusion matrix: (true_class, pred_class, count) for every cell.

    Every cell is kept, zeros included, so the store's confusion table is a complete C×C grid
    and readers never have to fill gaps.
    """
    c = cm.shape[0]
    true_idx, pred_idx = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")
    return true_idx.reshape(-1), pred_idx.reshape(-1), cm.reshape(-1).astype(np.int64)


def cam_disagreement(maps: Sequence[np.ndarray]) -> np.ndarray:
    """``predictions.cam_disagreement``: 1 − mean pairwise Pearson correlation between the
    methods' maps (each ``[B, h, w]``), per image, as float32 ``[B]``.

    A constant map has no defined correlation: pairs involving one are left out, and an image
    with no valid pair gets NaN (stored as null). With fewer than two methods: all NaN. Torch-free
    (numpy), so the compute job and the synthetic store used by the benchmarks share this one
    definition.
    """
    if len(maps) < 2:
        return np.full(maps[0].shape[0] if maps else 0, np.nan, np.float32)
    flat = np.stack([np.asarray(m, np.float64).reshape(m.shape[0], -1) for m in maps], 1)  # [B, M, P]
    centered = flat - flat.mean(axis=2, keepdims=True)
    norms = np.linalg.norm(centered, axis=2)  # [B, M]
    dots = np.einsum("bip,bjp->bij", centered, centered)  # [B, M, M]
    iu, ju = np.triu_indices(len(maps), 1)
    den = norms[:, iu] * norms[:, ju]
    ok = den > 1e-12
    r = np.where(ok, dots[:, iu, ju] / np.where(ok, den, 1.0), 0.0)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, 1.0 - r.sum(axis=1) / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)
