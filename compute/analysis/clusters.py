"""Error clusters inside a confusion cell: "these 40 coats predicted as pullover" split by embedding.

For every off-diagonal cell (true t, predicted p) with at least ``min_errors`` errors, the errors'
embeddings are L2-normalized (cosine geometry, like the twins) and clustered with scikit-learn's
k-means (``n_init=10``, seeded, so a run is reproducible). k is chosen by the silhouette score
(Rousseeuw, 1987) among 2..4 (at most n-1): the best k is kept when its silhouette is at least
:data:`MIN_SILHOUETTE` (0.25; Kaufman & Rousseeuw read less as "no substantial structure"),
otherwise the cell is one cluster. Clusters are numbered by size (0 = largest, ties by the
smallest member row); the representatives are the (up to) three members closest to the centre.

Pure numpy + scikit-learn; the maps' means are taken by :mod:`xaidash.compute.pipeline.quality_phase`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: fewest errors in a cell for it to be clustered (the ``--cluster-min-errors`` default)
MIN_ERRORS = 6
MAX_K = 4
MIN_SILHOUETTE = 0.25
REPRESENTATIVES = 3


@dataclass(frozen=True)
class CellClusters:
    """The clusters of one confusion cell; ``members`` index the rows passed in."""

    true_class: int
    pred_class: int
    k: int
    silhouette: float | None
    members: list[npt.NDArray[np.int64]]  # per cluster, rows (into the caller's arrays)
    representatives: list[npt.NDArray[np.int64]]  # per cluster, up to 3 rows, closest first


def _normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    x64 = np.asarray(x, dtype=np.float64)
    out: npt.NDArray[np.float64] = x64 / np.clip(np.linalg.norm(x64, axis=1, keepdims=True), 1e-12, None)
    return out


def cluster_cell(
    vectors: npt.NDArray[np.float32], seed: int = 0
) -> tuple[int, float | None, npt.NDArray[np.int64]]:
    """(k, silhouette of k or None for k = 1, cluster label per row) for one cell's errors."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = _normalize(vectors)
    n = x.shape[0]
    best: tuple[float, int, npt.NDArray[np.int64]] | None = None
    distinct = np.unique(np.round(x, 6), axis=0).shape[0]
    for k in range(2, min(MAX_K, n - 1, distinct) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)
        if np.unique(labels).size < 2:
            continue
        score = float(silhouette_score(x, labels, metric="euclidean"))
        if best is None or score > best[0] + 1e-9:
            best = (score, k, labels)
    if best is None or best[0] < MIN_SILHOUETTE:
        return 1, None, np.zeros(n, dtype=np.int64)
    return best[1], best[0], best[2]


def error_clusters(
    vectors: npt.NDArray[np.float32],
    labels: npt.ArrayLike,
    preds: npt.ArrayLike,
    min_errors: int = MIN_ERRORS,
    seed: int = 0,
) -> list[CellClusters]:
    """Clusters of the errors of every confusion cell with at least ``min_errors`` of them.

    ``vectors [N, K]``, ``labels``/``preds [N]`` over the val images (labels < 0: unknown, never
    an error). Cells in (true, pred) order.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    wrong = (y >= 0) & (y != p)
    out: list[CellClusters] = []
    if not wrong.any():
        return out
    cells, counts = np.unique(np.stack([y[wrong], p[wrong]], 1), axis=0, return_counts=True)
    for (t, pc), count in zip(cells.tolist(), counts.tolist(), strict=True):
        if count < max(min_errors, 2):
            continue
        rows = np.flatnonzero(wrong & (y == t) & (p == pc)).astype(np.int64)
        k, sil, lab = cluster_cell(vectors[rows], seed)
        x = _normalize(vectors[rows])
        groups = [np.flatnonzero(lab == c) for c in range(k)]
        groups = [g for g in groups if g.size]
        groups.sort(key=lambda g: (-g.size, int(g[0])))
        members, reps = [], []
        for g in groups:
            centre = x[g].mean(axis=0)
            dist = 1.0 - x[g] @ (centre / max(float(np.linalg.norm(centre)), 1e-12))
            order = np.lexsort((g, dist))[:REPRESENTATIVES]
            members.append(rows[g])
            reps.append(rows[g[order]])
        out.append(CellClusters(int(t), int(pc), len(groups), sil, members, reps))
    return out
