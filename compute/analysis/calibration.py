"""Calibration and ranking of a classifier's probabilities: the reliability diagram with ECE and
MCE, per-class one-vs-rest ROC and precision-recall curves with their AUC and average precision,
and top-k accuracy.

Plain numpy on the stored softmax probabilities (``[N, C]``) and labels, so the global phase does
not need scikit-learn; each definition follows ``sklearn.metrics`` to the letter (the tests check
equality to 1e-9), and ECE/MCE, which scikit-learn lacks, follow Guo et al. 2017 ("On Calibration
of Modern Neural Networks", §2, https://arxiv.org/abs/1706.04599) and are checked against a
literal loop over the bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Equal-width confidence bins of the reliability diagram (Guo et al. use 15).
CALIBRATION_BINS = 15
#: Top-k accuracies reported, each only where the run has more than k classes.
TOP_K: tuple[int, ...] = (1, 3, 5)
#: Points kept per stored curve: the AUC is computed on the full curve, the stored one is for
#: drawing, and 100k images x 1000 classes of full curves would dwarf the rest of a run.
MAX_CURVE_POINTS = 201

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram of ``n`` predictions over ``bins`` equal-width confidence bins.

    Bin ``b`` holds the confidences in ``(lower[b], upper[b]]`` (the first bin also holds 0).
    ``confidence`` and ``accuracy`` are NaN for empty bins.
    """

    lower: Floats
    upper: Floats
    count: Ints
    confidence: Floats  # mean confidence of the bin's predictions
    accuracy: Floats  # share of the bin's predictions that are correct
    ece: float  # sum_b n_b / n * |accuracy_b - confidence_b|
    mce: float  # max over non-empty bins of |accuracy_b - confidence_b|

    @property
    def bins(self) -> int:
        """Number of bins."""
        return int(self.count.shape[0])


def reliability(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, bins: int = CALIBRATION_BINS
) -> Reliability:
    """Bin the predictions by confidence and compare each bin's accuracy with its mean confidence."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {ok.size}")
    if bins < 1:
        raise ValueError("bins must be positive")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted on the upper edges gives exactly "lower < c <= upper" for the same edges a
    # literal loop compares against; confidences above 1 (rounding) land in the last bin.
    which = np.minimum(np.searchsorted(edges[1:], conf, side="left"), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    ok_sum = np.bincount(which, weights=ok.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, ok_sum / np.maximum(count, 1), np.nan)
    gap = np.abs(acc - mean_conf)
    n = int(count.sum())
    filled = count > 0
    ece = float(np.sum(count[filled] / n * gap[filled])) if n else float("nan")
    mce = float(gap[filled].max()) if n else float("nan")
    return Reliability(edges[:-1], edges[1:], count, mean_conf, acc, ece, mce)


def _binary_clf_curve(positive: npt.NDArray[np.bool_], score: Floats) -> tuple[Floats, Floats, Floats]:
    """False and true positive counts at each distinct score, highest first
    (``sklearn.metrics._ranking._binary_clf_curve`` without sample weights)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    s = score[order]
    y = positive[order].astype(np.float64)
    distinct = np.where(np.diff(s))[0]
    threshold_idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[threshold_idx]
    fps = 1 + threshold_idx - tps
    return fps, tps, s[threshold_idx]


@dataclass(frozen=True)
class Curve:
    """One curve as drawn: x, y and the score threshold of each point."""

    x: Floats
    y: Floats
    threshold: Floats


@dataclass(frozen=True)
class ClassRanking:
    """One-vs-rest ranking quality of one class's probability."""

    positives: int
    roc_auc: float  # NaN when the class has no positives or no negatives
    average_precision: float  # NaN when the class has no positives
    roc: Curve  # fpr, tpr (sklearn's roc_curve, drop_intermediate=True)
    pr: Curve  # recall, precision (sklearn's precision_recall_curve)


def class_ranking(positive: npt.ArrayLike, score: npt.ArrayLike) -> ClassRanking:
    """ROC and PR curves with ROC AUC (trapezoid rule) and average precision
    (``sum_n (R_n - R_{n-1}) P_n``), as ``roc_auc_score`` / ``average_precision_score``."""
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    n_pos = int(pos.sum())
    empty = Curve(np.zeros(0), np.zeros(0), np.zeros(0))
    if s.size == 0:
        return ClassRanking(0, float("nan"), float("nan"), empty, empty)
    fps, tps, thr = _binary_clf_curve(pos, s)
    # ROC: drop the points collinear with their neighbours (they change neither curve nor area)
    keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
    r_fps, r_tps, r_thr = np.r_[0, fps[keep]], np.r_[0, tps[keep]], np.r_[np.inf, thr[keep]]
    n_neg = int(s.size - n_pos)
    if n_pos and n_neg:
        fpr, tpr = r_fps / r_fps[-1], r_tps / r_tps[-1]
        # the trapezoid rule, spelled out: numpy 1.26 (allowed by pyproject) has no np.trapezoid
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    else:
        fpr = r_fps / max(r_fps[-1], 1)
        tpr = r_tps / max(r_tps[-1], 1)
        auc = float("nan")
    roc = Curve(fpr, tpr, r_thr)
    if n_pos:
        precision = tps / (tps + fps)
        recall = tps / tps[-1]
        ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
        # sklearn's order: decreasing recall, ending at (recall 0, precision 1)
        pr = Curve(np.r_[recall[::-1], 0.0], np.r_[precision[::-1], 1.0], np.r_[thr[::-1], np.inf])
    else:
        ap, pr = float("nan"), empty
    return ClassRanking(n_pos, auc, ap, roc, pr)


def thin(curve: Curve, max_points: int = MAX_CURVE_POINTS) -> Curve:
    """At most ``max_points`` evenly spaced points of ``curve``, both ends kept."""
    n = curve.x.size
    if n <= max_points:
        return curve
    at = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
    return Curve(curve.x[at], curve.y[at], curve.threshold[at])


def top_k_accuracy(labels: npt.ArrayLike, probabilities: npt.ArrayLike, k: int) -> float:
    """Share of images whose label is among the ``k`` highest probabilities.

    Ties are broken as ``sklearn.metrics.top_k_accuracy_score`` breaks them (a stable ascending
    sort reversed: among equal scores the higher class index ranks first), computed as a rank
    count (O(N C), no sort of every row)."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError("probabilities must be [N, C] with one row per label")
    if y.size == 0:
        return float("nan")
    own = p[np.arange(y.size), y][:, None]
    above = p > own
    tied_after = (p == own) & (np.arange(p.shape[1])[None, :] > y[:, None])
    rank = above.sum(axis=1) + tied_after.sum(axis=1)
    return float(np.mean(rank < k))


@dataclass(frozen=True)
class RankingReport:
    """Everything the global phase stores about calibration and ranking."""

    reliability: Reliability
    classes: list[ClassRanking]
    top_k: dict[int, float]  # k -> accuracy, for k < number of classes

    @property
    def macro_roc_auc(self) -> float:
        """Mean ROC AUC over the classes where it is defined (NaN when none is)."""
        return _nanmean([c.roc_auc for c in self.classes])

    @property
    def macro_average_precision(self) -> float:
        """Mean average precision over the classes with positives (NaN when none has)."""
        return _nanmean([c.average_precision for c in self.classes])


def _nanmean(values: list[float]) -> float:
    a = np.array(values, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def ranking_report(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, bins: int = CALIBRATION_BINS
) -> RankingReport:
    """The calibration (of the top-1 confidence) and ranking quality of ``[N, C]`` probabilities."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError("probabilities must be [N, C] with one row per label")
    n_classes = p.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    pred = np.argmax(p, axis=1) if y.size else np.zeros(0, np.int64)
    conf = p[np.arange(y.size), pred] if y.size else np.zeros(0)
    rel = reliability(conf, pred == y, bins)
    classes = [class_ranking(y == c, p[:, c]) for c in range(n_classes)]
    top_k = {k: top_k_accuracy(y, p, k) for k in TOP_K if n_classes > k}
    return RankingReport(rel, classes, top_k)
