"""Twins and counterfactuals: exact, class-restricted cosine top-k over training embeddings.

The "twin system" of seed 001 (Chen et al., *This Looks Like That*, 2018, case-based
reasoning): for each validation image, the training images whose penultimate-layer embedding
is most similar (cosine) **among training images of the predicted class** — "the model calls
this a cat because it looks like these cats". Counterfactuals are the nearest training images
of a *different* class: the runner-up class, and also the true class when the prediction is
wrong ("what the right answer looks like to the model").

Algorithm (exact, no approximate index): L2-normalize once, then stream the training set in
chunks; for every chunk compute the similarity block ``Q_block @ T_chunk.T`` on the compute
device, mask entries whose train label is not the query's target class to ``-inf``, and merge
with the running top-k by one ``torch.topk`` over the concatenated candidates
(``k`` running + ``chunk`` new). All targets (twin, runner-up, true) share each similarity
block, so the train set is read once.

Memory bound (float32, K = embedding size, Q = queries, T = targets per query, k = neighbours):

* device: ``Q*K*4`` (normalized queries) + ``chunk*K*4`` (one train chunk)
  + ``2*query_block*chunk*4`` (similarity block + its masked copy)
  + ``Q*T*k*12`` (running top-k values + int64 indices).
  With the defaults (chunk 16384, query_block 2048) and K = 512: 32 MiB + 256 MiB + the
  queries (200 MiB for 100k val images) — independent of the number of training images, so
  1M training images fit any GPU and a laptop.
* host: the arrays passed in (``np.memmap`` works: chunks are sliced, never copied whole).

Cost is ``Q*N*K`` multiply-adds for N training images (masking restricts the result, not the
work); on a GPU 100k × 1M × 512 is ~5e13 FLOP, i.e. tens of seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TWIN = "twin"
COUNTERFACTUAL = "counterfactual"


@dataclass(frozen=True)
class NeighborTable:
    """Neighbour rows in columnar form, one row per (query, neighbour).

    ``query_row`` indexes the query array, ``neighbor_row`` the train array; ``rank`` is
    1-based and unique per (query, kind): twins 1..k; counterfactuals 1..k for the runner-up
    class, continued k+1..2k for the true class when the prediction is wrong and the true
    class is not already the runner-up.
    """

    query_row: np.ndarray  # [M] int64
    kind: np.ndarray  # [M] object (str): "twin" | "counterfactual"
    rank: np.ndarray  # [M] int32, 1-based
    neighbor_row: np.ndarray  # [M] int64
    neighbor_class: np.ndarray  # [M] int64
    similarity: np.ndarray  # [M] float32 cosine similarity

    def __len__(self) -> int:
        return int(self.query_row.shape[0])


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalization in float32 (zero rows stay zero instead of NaN)."""
    x = x.float()
    out: torch.Tensor = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


@torch.no_grad()
def class_restricted_topk(
    queries: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    train_vectors: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    k: int,
    device: str | torch.device = "cpu",
    chunk_size: int = 16384,
    query_block: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k among train rows whose label equals each query's target class.

    Args:
        queries: ``[Q, K]`` query embeddings.
        targets: ``[Q]`` or ``[Q, T]`` target class per query (and per target column);
            a negative target means "no target" (the result row stays empty).
        train_vectors: ``[N, K]`` train embeddings (np.memmap is fine: sliced per chunk).
        train_labels: ``[N]`` train labels; negative = unlabeled, never matched.
        k: neighbours per (query, target).
        device: where the matrix products run.
        chunk_size: train rows per chunk; query_block: query rows per similarity block.

    Returns:
        ``(similarity [Q, T, k] float32, index [Q, T, k] int64)`` best first; missing entries
        (fewer than k train images of the class) have similarity ``-inf`` and index ``-1``.
        With 1-D ``targets`` the T axis is dropped: ``[Q, k]``.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    dev = torch.device(device)
    q_t = queries if torch.is_tensor(queries) else torch.from_numpy(np.array(queries, dtype=np.float32))
    tgt = torch.as_tensor(
        np.array(targets, dtype=np.int64) if not torch.is_tensor(targets) else targets
    ).long()
    squeeze = tgt.dim() == 1
    if squeeze:
        tgt = tgt[:, None]
    num_q, num_t = tgt.shape
    if q_t.shape[0] != num_q:
        raise ValueError(f"queries ({q_t.shape[0]}) and targets ({num_q}) differ in length")
    # np.array copies: the store hands out read-only arrays, which torch warns about sharing
    labels_all = torch.as_tensor(
        np.array(train_labels, dtype=np.int64) if not torch.is_tensor(train_labels) else train_labels
    ).long()
    n_train = int(labels_all.shape[0])
    if int(train_vectors.shape[0]) != n_train:
        raise ValueError("train_vectors and train_labels differ in length")

    best_val = torch.full((num_q, num_t, k), float("-inf"), device=dev)
    best_idx = torch.full((num_q, num_t, k), -1, dtype=torch.long, device=dev)
    if num_q == 0 or n_train == 0:
        return _finish(best_val, best_idx, squeeze)

    # Class buckets: a (query, target) pair only ever matches train rows of its target class, so
    # each class's queries are compared with that class's rows alone. Exact, and C times less
    # work than comparing every query with every row and masking (50k x 1.28M ImageNet-sized:
    # measured in bench/global_phase.py).
    qn = _normalize(q_t.to(dev))
    order = torch.argsort(labels_all, stable=True)
    sorted_labels = labels_all[order]
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    ends = torch.cumsum(counts, 0)
    flat_tgt = tgt.reshape(-1)
    for c, end, count in zip(classes.tolist(), ends.tolist(), counts.tolist(), strict=True):
        if c < 0:
            continue  # unlabeled train rows never match
        pairs = torch.nonzero(flat_tgt == c).flatten()  # flat (query, target column) positions
        if pairs.numel() == 0:
            continue
        rows = order[end - count : end]  # train row indices of class c, ascending
        qi = (pairs // num_t).to(dev)
        bv = torch.full((pairs.numel(), k), float("-inf"), device=dev)
        bi = torch.full((pairs.numel(), k), -1, dtype=torch.long, device=dev)
        for start in range(0, count, chunk_size):
            idx = rows[start : start + chunk_size]
            chunk = train_vectors[idx.numpy()] if not torch.is_tensor(train_vectors) else train_vectors[idx]
            # a copy per chunk: works for read-only arrays (Arrow buffers) and memmaps alike
            chunk_t = chunk if torch.is_tensor(chunk) else torch.from_numpy(np.array(chunk, dtype=np.float32))
            tn = _normalize(chunk_t.to(dev, non_blocking=True))
            cand = idx.to(dev)
            for qs in range(0, pairs.numel(), query_block):
                qe = min(qs + query_block, pairs.numel())
                sim = qn[qi[qs:qe]] @ tn.T  # [qb, rows]
                vals = torch.cat([bv[qs:qe], sim], dim=1)
                idxs = torch.cat([bi[qs:qe], cand.expand(qe - qs, -1)], dim=1)
                top_v, top_p = torch.topk(vals, min(k, vals.shape[1]), dim=1)  # sorted, best first
                bv[qs:qe, : top_v.shape[1]] = top_v
                bi[qs:qe, : top_v.shape[1]] = torch.gather(idxs, 1, top_p)
        fv, fi = best_val.view(-1, k), best_idx.view(-1, k)
        fv[pairs.to(dev)] = bv
        fi[pairs.to(dev)] = bi
    # -inf candidates may have been picked when a class has < k train images: mark them empty
    best_idx[torch.isinf(best_val)] = -1
    return _finish(best_val, best_idx, squeeze)


def _finish(val: torch.Tensor, idx: torch.Tensor, squeeze: bool) -> tuple[np.ndarray, np.ndarray]:
    v = val.cpu().numpy().astype(np.float32)
    i = idx.cpu().numpy().astype(np.int64)
    if squeeze:
        return v[:, 0], i[:, 0]
    return v, i


def find_neighbors(
    val_vectors: np.ndarray,
    pred: np.ndarray,
    runner_up: np.ndarray,
    labels: np.ndarray | None,
    train_vectors: np.ndarray,
    train_labels: np.ndarray | None,
    k: int = 5,
    device: str | torch.device = "cpu",
    chunk_size: int = 16384,
    query_block: int = 2048,
) -> NeighborTable:
    """Twins and counterfactuals for every validation row.

    Args:
        val_vectors: ``[Q, K]``; pred, runner_up: ``[Q]`` class indices (runner_up < 0: none,
            e.g. a one-class model); labels: ``[Q]`` true labels or None (unlabeled val).
        train_vectors: ``[N, K]``; train_labels: ``[N]`` or None (unlabeled train: no
            neighbours at all, since twins are defined by class).
    """
    q = int(np.asarray(val_vectors).shape[0]) if val_vectors is not None else 0
    if train_labels is None or q == 0 or int(np.asarray(train_labels).shape[0]) == 0:
        return _empty_table()
    pred = np.asarray(pred, dtype=np.int64)
    runner_up = np.asarray(runner_up, dtype=np.int64)
    if labels is not None:
        lab = np.asarray(labels, dtype=np.int64)
        # true-class counterfactuals only where wrong and not already covered by the runner-up
        true_t = np.where((lab >= 0) & (lab != pred) & (lab != runner_up), lab, -1)
    else:
        true_t = np.full(q, -1, dtype=np.int64)
    targets = np.stack([pred, runner_up, true_t], axis=1)
    sims, idx = class_restricted_topk(
        val_vectors, targets, train_vectors, train_labels, k, device, chunk_size, query_block
    )
    train_labels_np = np.asarray(train_labels, dtype=np.int64)

    parts: list[tuple[np.ndarray, ...]] = []
    # (target column, kind, rank offset)
    for col, kind, offset in ((0, TWIN, 0), (1, COUNTERFACTUAL, 0), (2, COUNTERFACTUAL, k)):
        s, i = sims[:, col], idx[:, col]  # [Q, k]
        qr, pos = np.nonzero(i >= 0)
        if qr.size == 0:
            continue
        nb = i[qr, pos]
        parts.append(
            (
                qr.astype(np.int64),
                np.full(qr.size, kind, dtype=object),
                (pos + 1 + offset).astype(np.int32),
                nb,
                train_labels_np[nb],
                s[qr, pos].astype(np.float32),
            )
        )
    if not parts:
        return _empty_table()
    cols = [np.concatenate([p[j] for p in parts]) for j in range(6)]
    # deterministic order: by query, then kind (twin first), then rank
    kind_order = (cols[1] == COUNTERFACTUAL).astype(np.int64)
    order = np.lexsort((cols[2], kind_order, cols[0]))
    return NeighborTable(*(c[order] for c in cols))


def _empty_table() -> NeighborTable:
    return NeighborTable(
        query_row=np.zeros(0, np.int64),
        kind=np.zeros(0, dtype=object),
        rank=np.zeros(0, np.int32),
        neighbor_row=np.zeros(0, np.int64),
        neighbor_class=np.zeros(0, np.int64),
        similarity=np.zeros(0, np.float32),
    )


def twins_for_vector(
    vector: np.ndarray,
    target_class: int,
    train_ids: Sequence[str],
    train_labels: np.ndarray,
    train_vectors: np.ndarray,
    k: int = 5,
) -> list[tuple[str, float]]:
    """Twins of one embedding (the dashboard's "explain a new image"): ``[(id, cosine)]``."""
    sims, idx = class_restricted_topk(
        np.asarray(vector, dtype=np.float32)[None, :],
        np.array([target_class]),
        train_vectors,
        train_labels,
        k,
    )
    return [(str(train_ids[int(j)]), float(s)) for s, j in zip(sims[0], idx[0], strict=True) if j >= 0]
