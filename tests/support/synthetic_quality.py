"""The synthetic store's data-quality tables, computed by the compute job's own code.

:func:`quality` runs :func:`xaidash.compute.pipeline.quality_phase.quality_tables` over the synthetic
run's staged probabilities, vectors and maps, as the global phase does. Synthetic images have no
pixels, so the input hashes are made up: every :data:`LEAK_EVERY`-th val image gets the hash of a
train image (a pixel-identical copy); and :func:`with_outliers` lowers the neighbour
similarities of every :data:`OUTLIER_EVERY`-th val image, and the image facts are made up too
(:func:`synthetic_facts`: every :data:`DUPLICATE_EVERY`-th val image a copy of its neighbour,
every :data:`ISSUE_EVERY`-th one dark, blurry or constant), so the gallery's quality filters
all have images at any size (``bench/dashboard_latency.py`` exercises them at 1M).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xaidash.compute.pipeline.quality_phase import Facts, QualityOptions, quality_tables
from xaidash.store import Staging

LEAK_EVERY = 499
OUTLIER_EVERY = 331
DUPLICATE_EVERY = 613
ISSUE_EVERY = 211


def synthetic_facts(split: list[str], seed: int = 0) -> Facts:
    """Image facts for rows of a synthetic run: random hashes and thumbnails, ordinary
    statistics, and the planted duplicates and issues of the module doc."""
    n = len(split)
    rng = np.random.default_rng(seed)
    facts = Facts.empty(n)
    facts.has[:] = True
    facts.phash[:] = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    facts.tiny[:] = rng.integers(0, 256, facts.tiny.shape, dtype=np.uint8)
    st = facts.stats
    st["bright_p05"][:] = rng.uniform(0.0, 0.1, n)
    st["bright_p99"][:] = rng.uniform(0.8, 1.0, n)
    st["sharpness"][:] = rng.uniform(1.0, 2.0, n)
    st["entropy"][:] = rng.uniform(5.0, 7.0, n)
    st["colour"][:] = rng.uniform(0.1, 0.3, n)
    st["width"][:] = 224
    st["height"][:] = 224
    val = np.flatnonzero(np.array(split) == "val")
    dup = val[5::DUPLICATE_EVERY]
    dup = dup[dup + 1 < n]
    facts.phash[dup + 1] = facts.phash[dup]
    facts.tiny[dup + 1] = facts.tiny[dup]
    for k, (key, value) in enumerate((("bright_p99", 0.05), ("sharpness", 0.1), ("entropy", 0.0))):
        st[key][val[11 + k::ISSUE_EVERY * 3]] = value
    return facts


def with_outliers(neighbors: pa.Table, val_ids: np.ndarray) -> pa.Table:
    """``neighbors`` with the similarities of every OUTLIER_EVERY-th val image scaled by 0.4."""
    far = pa.array([str(i) for i in val_ids[3::OUTLIER_EVERY]], pa.string())
    hit = pc.is_in(neighbors.column("image_id"), value_set=far)
    sims = pc.if_else(hit, pc.multiply(neighbors.column("similarity"), pa.scalar(0.4, pa.float32())),
                      neighbors.column("similarity"))
    return neighbors.set_column(neighbors.schema.get_field_index("similarity"), "similarity", sims)


def quality(
    staging: Staging,
    staged: pa.Table,
    val_ids: np.ndarray,
    val_label: np.ndarray,
    pred: np.ndarray,
    neighbors: pa.Table,
    train_labels: dict[str, int | None],
) -> dict[str, pa.Table]:
    """The ``quality`` and ``error_clusters`` tables of a synthetic run (see the module doc)."""
    emb_ids = [str(i) for i in staged.column("image_id").to_pylist()]
    split = [str(s) for s in staged.column("split").to_pylist()]
    col = staged.column("vector").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    vectors = flat.reshape(len(col), -1) if len(col) else np.zeros((0, 1), np.float32)
    train_rows = [r for r, s in enumerate(split) if s == "train"]
    hashes: list[str | None] = [f"h{r:015x}" for r in range(len(emb_ids))]
    row_of = {iid: r for r, iid in enumerate(emb_ids)}
    for j, vid in enumerate(val_ids[7::LEAK_EVERY]):
        if train_rows:
            hashes[row_of[str(vid)]] = hashes[train_rows[(j * 7919) % len(train_rows)]]
    return quality_tables(
        staging=staging, val_ids=[str(i) for i in val_ids], labels=[int(v) for v in val_label],
        preds=[int(p) for p in pred], labels_known=True, emb_ids=emb_ids, emb_split=split,
        vectors=vectors, hashes=hashes, neighbors=neighbors, train_labels=train_labels,
        options=QualityOptions(), facts=synthetic_facts(split),
    )
