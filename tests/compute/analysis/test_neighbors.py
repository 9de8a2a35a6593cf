"""xaidash.compute.analysis.neighbors: chunked exact top-k equals brute force, class restriction,
counterfactuals."""

from __future__ import annotations

import numpy as np
import pytest

from xaidash.compute.analysis.neighbors import (
    COUNTERFACTUAL,
    TWIN,
    class_restricted_topk,
    find_neighbors,
    twins_for_vector,
)


def _brute(
    q: np.ndarray, t: np.ndarray, tl: np.ndarray, target: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    qn = q / np.linalg.norm(q)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    sims = tn @ qn
    rows = np.nonzero(tl == target)[0]
    order = rows[np.argsort(-sims[rows], kind="stable")][:k]
    return order, sims[order]


@pytest.mark.parametrize(("chunk", "qblock"), [(7, 3), (16, 64), (1000, 1000), (1, 1)])
def test_topk_matches_brute_force(chunk: int, qblock: int) -> None:
    rng = np.random.default_rng(0)
    q, t = rng.normal(size=(11, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    tl = rng.integers(0, 3, 50)
    targets = rng.integers(0, 3, 11)
    k = 4
    sims, idx = class_restricted_topk(q, targets, t, tl, k, chunk_size=chunk, query_block=qblock)
    assert sims.shape == (11, k) and idx.shape == (11, k)
    for i in range(11):
        bi, bs = _brute(q[i], t, tl, int(targets[i]), k)
        np.testing.assert_array_equal(idx[i], bi)
        np.testing.assert_allclose(sims[i], bs, rtol=1e-5, atol=1e-6)
        assert (tl[idx[i]] == targets[i]).all()


def test_fewer_train_than_k_and_no_target() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=(5, 4)).astype(np.float32)
    tl = np.array([0, 0, 1, 1, 1])
    sims, idx = class_restricted_topk(rng.normal(size=(3, 4)), np.array([0, -1, 2]), t, tl, k=3, chunk_size=2)
    assert (idx[0, :2] >= 0).all() and idx[0, 2] == -1 and np.isinf(sims[0, 2])
    assert (idx[1] == -1).all() and (idx[2] == -1).all()


def test_find_neighbors_twins_and_counterfactuals() -> None:
    rng = np.random.default_rng(2)
    n_cls, k = 3, 2
    t = rng.normal(size=(30, 6)).astype(np.float32)
    tl = np.arange(30) % n_cls
    v = rng.normal(size=(4, 6)).astype(np.float32)
    pred = np.array([0, 1, 2, 0])
    runner = np.array([1, 2, 0, 2])
    labels = np.array([0, 2, 1, 1])  # row 0 correct; row 1 wrong (true = runner-up); rows 2-3 wrong
    tab = find_neighbors(v, pred, runner, labels, t, tl, k=k, chunk_size=7)
    for i in range(4):
        rows = tab.query_row == i
        tw = rows & (tab.kind == TWIN)
        cf = rows & (tab.kind == COUNTERFACTUAL)
        assert tab.rank[tw].tolist() == [1, 2]
        assert (tab.neighbor_class[tw] == pred[i]).all()
        bi, bs = _brute(v[i], t, tl, int(pred[i]), k)
        np.testing.assert_array_equal(tab.neighbor_row[tw], bi)
        np.testing.assert_allclose(tab.similarity[tw], bs, rtol=1e-5)
        expected = [runner[i]] * k
        if labels[i] != pred[i] and labels[i] != runner[i]:
            expected += [labels[i]] * k
        assert tab.neighbor_class[cf].tolist() == expected
        assert tab.rank[cf].tolist() == list(range(1, len(expected) + 1))


def test_unlabeled_train_gives_nothing() -> None:
    v = np.ones((2, 3), np.float32)
    tab = find_neighbors(v, np.zeros(2, int), np.ones(2, int), None, np.ones((4, 3), np.float32), None)
    assert len(tab) == 0


def test_twins_for_vector() -> None:
    t = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    out = twins_for_vector(np.array([1.0, 0.0]), 0, ["a", "b", "c", "d"], np.array([0, 0, 1, 0]), t, k=5)
    assert [i for i, _ in out] == ["a", "b", "d"]
    assert out[0][1] == pytest.approx(1.0)
