"""xaidash.compute.analysis.metrics against scikit-learn on random and edge-case data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from xaidash.compute.analysis.metrics import accuracy, classification_report, confusion_long, confusion_matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_matches_sklearn(seed: int, num_classes: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, 200)
    # biased predictions so that some classes are never predicted (zero-division paths)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, max(1, num_classes - 1), 200))
    labels = list(range(num_classes))
    rep = classification_report(y, p, num_classes)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    np.testing.assert_allclose(rep.precision, prec)
    np.testing.assert_allclose(rep.recall, rec)
    np.testing.assert_allclose(rep.f1, f1)
    np.testing.assert_array_equal(rep.support, sup)
    np.testing.assert_array_equal(rep.confusion, skm.confusion_matrix(y, p, labels=labels))
    assert rep.accuracy == pytest.approx(skm.accuracy_score(y, p))
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    for avg, got in (("macro", rep.macro), ("weighted", rep.weighted)):
        ep, er, ef, _ = skm.precision_recall_fscore_support(
            y, p, labels=labels, average=avg, zero_division=0
        )
        assert got["precision"] == pytest.approx(ep)
        assert got["recall"] == pytest.approx(er)
        assert got["f1"] == pytest.approx(ef)


def test_absent_class_and_empty() -> None:
    rep = classification_report(np.array([0, 0, 1]), np.array([0, 1, 1]), 4)
    assert rep.support.tolist() == [2, 1, 0, 0]
    assert rep.precision[2] == 0.0 and rep.f1[3] == 0.0
    empty = classification_report(np.zeros(0, int), np.zeros(0, int), 3)
    assert empty.accuracy == 0.0 and empty.confusion.sum() == 0


def test_confusion_long_complete_grid() -> None:
    cm = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    t, p, c = confusion_long(cm)
    assert len(t) == 9
    assert {(int(a), int(b)): int(n) for a, b, n in zip(t, p, c, strict=True)}[(2, 1)] == 1
    assert c.sum() == 4


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0]), np.array([0, 1]), 3)
