"""Calibration and ranking against scikit-learn (ROC AUC, AP, top-k, the curves) and a literal
implementation of ECE / MCE (scikit-learn has none)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
    top_k_accuracy_score,
)

from xaidash.compute.analysis.calibration import (
    class_ranking,
    ranking_report,
    reliability,
    thin,
    top_k_accuracy,
)


def _probs(n: int, c: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c)) + 2.0 * np.eye(c)[y] * rng.random((n, 1))
    if ties:  # coarse scores: many exact ties inside a class and across classes
        logits = np.round(logits, 0)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p.astype(np.float32)


def _literal_ece_mce(conf: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, float]:
    """Guo et al. 2017, Eq. 3 and 5, one bin at a time (lower < c <= upper)."""
    edges = np.linspace(0, 1, bins + 1)
    ece, mce, n = 0.0, 0.0, len(conf)
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if not inside.any():
            continue
        gap = abs(correct[inside].mean() - conf[inside].mean())
        ece += inside.sum() / n * gap
        mce = max(mce, gap)
    return ece, mce


@pytest.mark.parametrize(
    ("n", "c", "seed", "ties"), [(500, 10, 0, False), (333, 4, 1, True), (80, 2, 2, False)]
)
def test_matches_sklearn_and_literal(n: int, c: int, seed: int, ties: bool) -> None:
    y, p = _probs(n, c, seed, ties)
    rep = ranking_report(y, p)
    onehot = np.eye(c)[y]
    for k in range(c):
        cr = rep.classes[k]
        assert cr.roc_auc == pytest.approx(roc_auc_score(onehot[:, k], p[:, k]), abs=1e-9)
        assert cr.average_precision == pytest.approx(average_precision_score(onehot[:, k], p[:, k]), abs=1e-9)
        fpr, tpr, thr = roc_curve(onehot[:, k], p[:, k])
        np.testing.assert_allclose(cr.roc.x, fpr, atol=1e-12)
        np.testing.assert_allclose(cr.roc.y, tpr, atol=1e-12)
        np.testing.assert_array_equal(cr.roc.threshold[1:], thr[1:])
        prec, rec, _ = precision_recall_curve(onehot[:, k], p[:, k])
        np.testing.assert_allclose(cr.pr.x, rec, atol=1e-12)
        np.testing.assert_allclose(cr.pr.y, prec, atol=1e-12)
    assert rep.macro_roc_auc == pytest.approx(roc_auc_score(onehot, p, average="macro"), abs=1e-9)
    assert rep.macro_average_precision == pytest.approx(
        average_precision_score(onehot, p, average="macro"), abs=1e-9
    )
    for k in (1, 3, 5):
        if c > k:
            want = (
                top_k_accuracy_score(y, p, k=k, labels=np.arange(c))
                if c > 2
                else float(np.mean(p.argmax(1) == y))
            )
            assert rep.top_k[k] == pytest.approx(want, abs=1e-9)
        else:
            assert k not in rep.top_k
    conf = p.max(1).astype(np.float64)
    ece, mce = _literal_ece_mce(conf, p.argmax(1) == y, 15)
    assert rep.reliability.ece == pytest.approx(ece, abs=1e-9)
    assert rep.reliability.mce == pytest.approx(mce, abs=1e-9)
    assert rep.reliability.bins == 15 and rep.reliability.count.sum() == n


def test_top_k_ties_follow_sklearn() -> None:
    p = np.array([[0.25, 0.25, 0.25, 0.25], [0.4, 0.2, 0.2, 0.2], [0.1, 0.3, 0.3, 0.3]])
    y = np.array([0, 1, 3])
    for k in (1, 2, 3):
        assert top_k_accuracy(y, p, k) == pytest.approx(top_k_accuracy_score(y, p, k=k, labels=range(4)))


def test_bin_edges_are_upper_inclusive() -> None:
    # 0.4 is exactly an edge of 15 bins (6/15): it belongs to the bin that ends there
    rel = reliability([6 / 15, 1.0, 1 / 15 + 1e-12], [True, True, False], bins=15)
    assert rel.count[5] == 1 and rel.count[14] == 1 and rel.count[1] == 1
    assert np.isnan(rel.confidence[0]) and rel.count.sum() == 3


def test_undefined_classes_and_thinning() -> None:
    cr = class_ranking(np.zeros(5, bool), np.linspace(0, 1, 5))
    assert np.isnan(cr.roc_auc) and np.isnan(cr.average_precision) and cr.positives == 0
    y, p = _probs(2000, 3, 4)
    full = class_ranking(y == 0, p[:, 0]).roc
    small = thin(full, 50)
    assert small.x.size <= 50 and small.x[0] == full.x[0] and small.x[-1] == full.x[-1]
