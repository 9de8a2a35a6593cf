"""The global phase: what needs every image at once, computed from the staged chunks.

It reads all embeddings and predictions back from the staging area, then computes the twins and
counterfactuals (:mod:`xaidash.compute.analysis.neighbors`), the 2-D projection
(:mod:`xaidash.compute.analysis.projection`), the metrics and the confusion matrix
(:mod:`xaidash.compute.analysis.metrics`), the data-quality tables
(:mod:`xaidash.compute.pipeline.quality_phase`:
label issues, leaks, outliers, error clusters), calibration and ranking
(:mod:`xaidash.compute.pipeline.ranking_phase`), and the runs row. It returns the run's global
tables, which the job hands to ``Staging.publish``; the embeddings table is written here, once,
complete (vectors and projection), and the staged per-chunk vectors are only its input.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pyarrow as pa
import torch

from xaidash.compute.analysis.metrics import classification_report, confusion_long
from xaidash.compute.analysis.neighbors import find_neighbors
from xaidash.compute.analysis.projection import project_2d
from xaidash.compute.pipeline.method_ranking_phase import method_ranking_tables
from xaidash.compute.pipeline.plan import JobPlan
from xaidash.compute.pipeline.quality_phase import QualityOptions, quality_tables, read_probabilities
from xaidash.compute.pipeline.ranking_phase import ranking_tables
from xaidash.compute.pipeline.timing import Timer
from xaidash.constants import ATTRIBUTION_METHODS
from xaidash.store import Staging
from xaidash.store.builder import table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Staged:
    """What the global phase reads back from the staged chunks."""

    val_ids: list[str]
    labels: list[int | None]
    preds: list[int]
    runner_up: list[int | None]
    emb_ids: list[str]
    emb_split: list[str]
    vectors: np.ndarray  # [N, K] float32, rows of emb_ids
    n_failed: int
    methods_present: set[str]
    map_hw: tuple[int, int] | None
    input_hash: list[str | None]  # rows of emb_ids (None: staged before hashes existed)


def _read_staged(staging: Staging) -> _Staged:
    val_ids: list[str] = []
    labels: list[int | None] = []
    preds: list[int] = []
    runner_up: list[int | None] = []
    for b in staging.iter_table("predictions", columns=["image_id", "label", "pred", "runner_up"]):
        val_ids.extend(b.column("image_id").to_pylist())
        labels.extend(b.column("label").to_pylist())
        preds.extend(b.column("pred").to_pylist())
        runner_up.extend(b.column("runner_up").to_pylist())
    emb_ids: list[str] = []
    emb_split: list[str] = []
    parts: list[np.ndarray] = []
    hashes: list[str | None] = []
    for b in staging.iter_table("embeddings", columns=["image_id", "split", "vector", "input_hash"]):
        emb_ids.extend(b.column("image_id").to_pylist())
        emb_split.extend(b.column("split").to_pylist())
        hashes.extend(b.column("input_hash").to_pylist())
        col = b.column("vector")
        if len(col):
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            parts.append(flat.reshape(len(col), flat.size // len(col)))
    n_failed = sum(b.num_rows for b in staging.iter_table("failures", columns=["image_id"]))
    # The methods the run really has: CAM may have been found inapplicable at runtime
    # (CamEngine checks logits == fc(GAP(A)) on every batch and switches it off).
    map_hw = None
    present: set[str] = set()
    for b in staging.iter_table("cams", columns=["method", "h", "w"]):
        if b.num_rows:
            present.update(b.column("method").unique().to_pylist())
            # the CAMs' native resolution: the attribution rows have their own fixed grid
            cam_rows = [i for i, m in enumerate(b.column("method").to_pylist())
                        if m not in ATTRIBUTION_METHODS]
            if map_hw is None and cam_rows:
                map_hw = (int(b.column("h")[cam_rows[0]].as_py()), int(b.column("w")[cam_rows[0]].as_py()))
    return _Staged(
        val_ids=val_ids, labels=labels, preds=preds, runner_up=runner_up,
        emb_ids=emb_ids, emb_split=emb_split,
        vectors=np.concatenate(parts) if parts else np.zeros((0, 1), np.float32),
        n_failed=n_failed, methods_present=present, map_hw=map_hw, input_hash=hashes,
    )


def global_phase(plan: JobPlan, staging: Staging, timer: Timer, timings: dict[str, object],
                 precision: dict[str, object]) -> tuple[dict[str, object], dict[str, pa.Table]]:
    """(runs row, global tables) of the run, ready for ``Staging.publish``; ``timings`` are
    recorded next to the stage seconds (method costs, the cluster), ``precision`` as the run's
    precision_json."""
    with timer.stage("global_read"):
        st = _read_staged(staging)
    row_of = {iid: i for i, iid in enumerate(st.emb_ids)}
    train_rows = np.nonzero(np.array(st.emb_split) == "train")[0]
    labels_known = plan.dataset.labeled and all(v is not None for v in st.labels)
    tables: dict[str, pa.Table] = {}

    with timer.stage("neighbors"):
        if plan.cfg.twins > 0 and train_rows.size and plan.dataset.labeled and st.val_ids:
            tables["neighbors"] = _neighbors(plan, st, row_of, train_rows, labels_known)
        log.info("neighbors: %d rows", tables["neighbors"].num_rows if "neighbors" in tables else 0)

    with timer.stage("projection"):
        xy, used = project_2d(st.vectors, plan.cfg.projection, seed=0)
        tables["embeddings"] = table("embeddings", {
            "image_id": st.emb_ids, "split": st.emb_split, "vector": st.vectors,
            "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "input_hash": st.input_hash})
        log.info("projection: %s over %d embeddings", used, len(st.emb_ids))

    accuracy: float | None = None
    with timer.stage("metrics"):
        if labels_known and st.val_ids:
            accuracy = _metrics(plan, st, tables)

    with timer.stage("quality"):  # label issues, leaks, outliers, error clusters
        tables.update(quality_tables(
            staging=staging, val_ids=st.val_ids, labels=st.labels, preds=st.preds,
            labels_known=labels_known, emb_ids=st.emb_ids, emb_split=st.emb_split, vectors=st.vectors,
            hashes=st.input_hash, neighbors=tables.get("neighbors"),
            train_labels={it.image_id: it.label for it in plan.train_items},
            options=QualityOptions(copy_distance=plan.cfg.copy_distance,
                                   lookalike_quantile=plan.cfg.lookalike_quantile,
                                   outlier_quantile=plan.cfg.outlier_quantile,
                                   cluster_min_errors=plan.cfg.cluster_min_errors)))

    with timer.stage("ranking"):  # reliability diagram, ROC / PR per class, top-k
        if labels_known and st.val_ids:
            probs = read_probabilities(staging, st.val_ids)
            tables.update(ranking_tables(np.array(st.labels, np.int64), probs, plan.class_names))

    with timer.stage("method_ranking"):  # which method to trust: bootstrap CIs, paired tests, the rule
        tables.update(method_ranking_tables(staging, plan.methods))

    dim = st.vectors.shape[1] if len(st.emb_ids) else 0
    max_ch = plan.cfg.scorecam_max_channels
    scorecam_note = None
    if "scorecam" in plan.methods and max_ch and dim > max_ch:
        scorecam_note = f"top-{max_ch} channels of {dim} by mean activation per image (approximate Score-CAM)"
    dev = plan.device
    run_row: dict[str, object] = {
        "status": "partial" if st.n_failed else "complete",
        "dataset_spec": plan.cfg.data,
        "dataset_fingerprint": plan.fingerprint,
        "dataset_kind": plan.dataset.kind,
        "checkpoint_path": plan.loaded.checkpoint_path,
        "checkpoint_sha256": plan.loaded.checkpoint_sha256,
        "arch": plan.loaded.arch,
        "class_names": list(plan.class_names),
        "methods": [m for m in plan.methods if m in st.methods_present],
        "target_layer": plan.target_layer,
        "map_h": st.map_hw[0] if st.map_hw else None,
        "map_w": st.map_hw[1] if st.map_hw else None,
        "num_val": len(st.val_ids),
        "num_train": int(train_rows.size),
        "num_failed": int(st.n_failed),
        "accuracy": accuracy,
        "scorecam_note": scorecam_note,
        "precision_json": json.dumps(precision),
        "config_json": plan.config_json(),
        "versions_json": json.dumps(_versions(used)),
        "timings_json": json.dumps({**{k: round(v, 3) for k, v in timer.seconds.items()},
                                    **timings}),
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({_gpu_name(dev)})",
    }
    return run_row, tables


def _neighbors(plan: JobPlan, st: _Staged, row_of: dict[str, int], train_rows: np.ndarray,
               labels_known: bool) -> pa.Table:
    train_label_of = {it.image_id: it.label for it in plan.train_items}
    val_rows = np.array([row_of[i] for i in st.val_ids], dtype=np.int64)
    train_ids = [st.emb_ids[r] for r in train_rows]
    train_labels = np.array([train_label_of[i] for i in train_ids], dtype=np.int64)
    runner = np.array([-1 if r is None else r for r in st.runner_up], np.int64)
    tab = find_neighbors(
        st.vectors[val_rows], np.array(st.preds, np.int64), runner,
        np.array(st.labels, np.int64) if labels_known else None,
        st.vectors[train_rows], train_labels, k=plan.cfg.twins, device=plan.device,
    )
    return table("neighbors", {
        "image_id": [st.val_ids[q] for q in tab.query_row],
        "kind": tab.kind.tolist(),
        "rank": tab.rank.tolist(),
        "neighbor_id": [train_ids[j] for j in tab.neighbor_row],
        "neighbor_class": tab.neighbor_class.tolist(),
        "similarity": tab.similarity.tolist(),
    })


def _metrics(plan: JobPlan, st: _Staged, tables: dict[str, pa.Table]) -> float:
    y = np.array(st.labels, np.int64)
    p = np.array(st.preds, np.int64)
    c = len(plan.class_names)
    rep = classification_report(y, p, c)
    tables["class_metrics"] = table("class_metrics", {
        "class": list(range(c)), "class_name": list(plan.class_names),
        "precision": rep.precision.tolist(), "recall": rep.recall.tolist(), "f1": rep.f1.tolist(),
        "support": rep.support.tolist(),
    })
    t_idx, p_idx, cnt = confusion_long(rep.confusion)
    if c > 100:  # ImageNet-sized: a dense 1M-cell grid of zeros helps nobody
        keep = cnt > 0
        t_idx, p_idx, cnt = t_idx[keep], p_idx[keep], cnt[keep]
    tables["confusion"] = table("confusion", {
        "true_class": t_idx.tolist(), "pred_class": p_idx.tolist(), "count": cnt.tolist()})
    return rep.accuracy


def _gpu_name(dev: torch.device) -> str:
    with contextlib.suppress(Exception):
        return torch.cuda.get_device_name(dev)
    return "?"


def _versions(projection: str) -> dict[str, str]:
    """Versions of everything that shapes the numbers (recorded in the run)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "pyarrow": pa.__version__, "projection": projection}
    for pkg in ("xaidash", "torchvision", "timm", "umap-learn", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())  # type: ignore[no-untyped-call]  # unannotated in torch
    return out
