"""The global phase's data-quality step: the ``quality`` and ``error_clusters`` tables.

Runs after the neighbours, from what the run already computed: the staged probabilities, the
embeddings and their input hashes, the twins and counterfactuals just found, and the staged maps
(:mod:`xaidash.compute.analysis.quality` and :mod:`xaidash.compute.analysis.clusters` hold the definitions).

"Nearest training image of any class" is the best of the stored neighbours: the nearest train
images of the predicted class (twins), of the runner-up and, for errors, of the true class
(counterfactuals). A leaked copy of a train image is found exactly that way whenever its train
label is one of those classes - the model's prediction, runner-up or the val label, which for a
copy is its own label - and the input hash finds copies whatever their class. An exhaustive
any-class search would cost C times the class-bucketed one (bench/global_phase.py); for the
outlier score, which is relative to the run's own distribution, the best of three classes is what
the model itself considers close. Without neighbours (``--twins 0``, unlabeled train) only
pixel-identical leaks are found and no image is an outlier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from xaidash.compute.analysis.clusters import CellClusters, error_clusters
from xaidash.compute.analysis.quality import label_issues, leaks_and_outliers
from xaidash.store import Staging
from xaidash.store.builder import table

log = logging.getLogger(__name__)


def read_probabilities(staging: Staging, val_ids: Sequence[str]) -> npt.NDArray[np.float32]:
    """The staged probabilities ``[N, C]`` in the order of ``val_ids``."""
    ids: list[str] = []
    parts: list[npt.NDArray[np.float32]] = []
    for b in staging.iter_table("predictions", columns=["image_id", "probabilities"]):
        ids.extend(b.column("image_id").to_pylist())
        col = b.column("probabilities")
        if len(col):
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            parts.append(flat.reshape(len(col), flat.size // len(col)))
    probs = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    if ids != list(val_ids):
        at = {i: r for r, i in enumerate(ids)}
        probs = probs[np.array([at[i] for i in val_ids], dtype=np.int64)]
    return probs


def centred(vectors: npt.NDArray[np.float32], train: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Rows minus the mean train embedding, L2-normalized (zero rows stay zero).

    Post-ReLU pooled activations are all positive, so raw cosines crowd near 1 (the demo's
    ResNet-18: median 0.994 to the nearest train image) and a 0.99 cut-off would call most val
    images copies. Subtracting the mean spreads them over the sphere; a copy still scores 1.
    """
    x = np.asarray(vectors, dtype=np.float64)
    mu = x[train].mean(axis=0) if train.any() else np.zeros(x.shape[1])
    c = x - mu
    out: npt.NDArray[np.float64] = c / np.clip(np.linalg.norm(c, axis=1, keepdims=True), 1e-12, None)
    return out


def nearest_train(
    neighbors: pa.Table | None, val_ids: Sequence[str], row_of: dict[str, int], unit: npt.NDArray[np.float64]
) -> tuple[list[str | None], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per val id: the stored neighbour most similar by centred cosine (``unit``: rows of
    :func:`centred`), as (id, centred cosine), and the best raw (stored) cosine of its
    neighbours; None/NaN when it has no neighbour."""
    n = len(val_ids)
    best_id: list[str | None] = [None] * n
    best = np.full(n, np.nan)
    raw_best = np.full(n, np.nan)
    if neighbors is None or neighbors.num_rows == 0:
        return best_id, best, raw_best
    at = {i: r for r, i in enumerate(val_ids)}
    qids = neighbors.column("image_id").to_pylist()
    nids = neighbors.column("neighbor_id").to_pylist()
    rows = np.array([at.get(i, -1) for i in qids], dtype=np.int64)
    ok = (rows >= 0) & np.array([i in row_of for i in nids], dtype=bool)
    sims = np.full(rows.size, -np.inf)
    qv = np.array([row_of[i] for i, good in zip(qids, ok.tolist(), strict=True) if good], dtype=np.int64)
    tv = np.array([row_of[i] for i, good in zip(nids, ok.tolist(), strict=True) if good], dtype=np.int64)
    if qv.size:
        sims[ok] = np.einsum("ij,ij->i", unit[qv], unit[tv])
    order = np.lexsort((-sims, rows))  # per row, most similar first
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    for j in order[first]:
        r = int(rows[j])
        if r >= 0 and np.isfinite(sims[j]):
            best[r] = sims[j]
            best_id[r] = nids[j]
    raw = neighbors.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    keep = rows >= 0
    np.fmax.at(raw_best, rows[keep], raw[keep])
    return best_id, best, raw_best


def quality_tables(
    *,
    staging: Staging,
    val_ids: Sequence[str],
    labels: Sequence[int | None],
    preds: Sequence[int],
    labels_known: bool,
    emb_ids: Sequence[str],
    emb_split: Sequence[str],
    vectors: npt.NDArray[np.float32],
    hashes: Sequence[str | None],
    neighbors: pa.Table | None,
    leak_threshold: float,
    cluster_min_errors: int,
) -> dict[str, pa.Table]:
    """The run's ``quality`` table (one row per val image) and ``error_clusters`` table."""
    n = len(val_ids)
    if n == 0:
        return {}
    row_of = {iid: i for i, iid in enumerate(emb_ids)}
    val_rows = np.array([row_of[i] for i in val_ids], dtype=np.int64)
    unit = centred(vectors, np.array([sp == "train" for sp in emb_split], dtype=bool))
    near_id, near_sim, raw_sim = nearest_train(neighbors, val_ids, row_of, unit)

    # exact duplicates: the same model input as a train image, whatever its class
    train_by_hash: dict[str, int] = {}
    for r, (sp, h) in enumerate(zip(emb_split, hashes, strict=True)):
        if sp == "train" and h is not None:
            train_by_hash.setdefault(h, r)
    pixel = np.zeros(n, dtype=bool)
    for q, vr in enumerate(val_rows.tolist()):
        h = hashes[vr]
        tr = train_by_hash.get(h) if h is not None else None
        if tr is not None:
            pixel[q] = True
            near_id[q] = emb_ids[tr]
            near_sim[q] = float(unit[vr] @ unit[tr])
            raw_sim[q] = 1.0  # the same model input
    lo = leaks_and_outliers(near_sim, pixel, leak_threshold, raw_sim)

    y = np.array([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    quality: list[float | None] = [None] * n
    flagged: list[bool | None] = [None] * n
    suggested: list[int | None] = [None] * n
    cells: list[CellClusters] = []
    if labels_known:
        li = label_issues(y, read_probabilities(staging, val_ids))
        quality = li.quality.tolist()
        flagged = li.flagged.tolist()
        suggested = [int(s) if s >= 0 else None for s in li.suggested.tolist()]
        cells = error_clusters(vectors[val_rows], y, p, cluster_min_errors)
    member_cluster: list[int | None] = [None] * n
    for cell in cells:
        for c, rows in enumerate(cell.members):
            for r in rows.tolist():
                member_cluster[r] = c
    out = {
        "quality": table("quality", {
            "image_id": list(val_ids), "label_quality": quality, "mislabelled": flagged,
            "suggested_class": suggested, "nearest_train_id": near_id,
            "nearest_train_similarity": [None if np.isnan(s) else float(s) for s in near_sim],
            "leak": lo.leak.tolist(), "leak_match": lo.match,
            "outlier_score": [None if np.isnan(z) else float(z) for z in lo.outlier_score],
            "outlier": lo.outlier.tolist(), "error_cluster": member_cluster,
        }),
    }
    if cells:
        out["error_clusters"] = _cluster_table(staging, cells, list(val_ids))
    log.info("quality: %d label issues, %d leaks, %d outliers, %d clustered cells",
             sum(1 for f in flagged if f), int(lo.leak.sum()), int(lo.outlier.sum()), len(cells))
    return out


def _mean_maps(staging: Staging, member_ids: set[str]) -> dict[str, tuple[int, int, dict[str, np.ndarray]]]:
    """Per method: (h, w, {image_id: map}) of the members' predicted-class maps (staged cams)."""
    maps: dict[str, tuple[int, int, dict[str, np.ndarray]]] = {}
    want = pa.array(sorted(member_ids), pa.string())
    for b in staging.iter_table("cams", columns=["image_id", "method", "target_kind", "h", "w", "map"]):
        t = pa.Table.from_batches([b])
        keep = pc.and_(pc.is_in(t.column("image_id"), value_set=want),
                       pc.equal(t.column("target_kind"), "pred"))
        t = t.filter(keep)
        if not t.num_rows:
            continue
        flat = t.column("map").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        hs, ws = t.column("h").to_pylist(), t.column("w").to_pylist()
        mat = flat.reshape(t.num_rows, -1)
        for i, (iid, m) in enumerate(zip(t.column("image_id").to_pylist(), t.column("method").to_pylist(),
                                         strict=True)):
            entry = maps.setdefault(m, (int(hs[i]), int(ws[i]), {}))
            entry[2][iid] = mat[i]
    return maps


def _cluster_table(staging: Staging, cells: list[CellClusters], val_ids: list[str]) -> pa.Table:
    member_ids = {val_ids[r] for cell in cells for rows in cell.members for r in rows.tolist()}
    maps = _mean_maps(staging, member_ids)
    cols: dict[str, list[object]] = {k: [] for k in (
        "true_class", "pred_class", "cluster", "k", "silhouette", "size", "representative_ids",
        "method", "h", "w", "mean_map")}
    for cell in cells:
        for c, (rows, reps) in enumerate(zip(cell.members, cell.representatives, strict=True)):
            ids = [val_ids[r] for r in rows.tolist()]
            per_method: list[tuple[str | None, int | None, int | None, list[float] | None]] = []
            for m, (h, w, by_id) in maps.items():
                got = [by_id[i] for i in ids if i in by_id]
                if got:
                    per_method.append((m, h, w, np.mean(got, axis=0).astype(np.float32).tolist()))
            for method, mh, mw, mean in per_method or [(None, None, None, None)]:
                for key, value in (("true_class", cell.true_class), ("pred_class", cell.pred_class),
                                   ("cluster", c), ("k", cell.k), ("silhouette", cell.silhouette),
                                   ("size", len(ids)), ("representative_ids", [val_ids[r] for r in reps]),
                                   ("method", method), ("h", mh), ("w", mw), ("mean_map", mean)):
                    cols[key].append(value)
    return table("error_clusters", cols)
