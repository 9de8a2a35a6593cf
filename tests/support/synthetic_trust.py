"""Synthetic trust tables for :func:`tests.support.synthetic.build_synthetic_store`
with ``trust=True``: Grad-CAM-like methods decorrelate under randomisation, ``cam`` survives it
(so the overview has a flagged method), baselines are worse than the methods except that ``cam``
does not beat the centre, ROAD and localisation rows for every image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

BLOCKS = ("fc", "layer4", "layer3", "layer2", "layer1", "stem")
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def trust_tables(ids: np.ndarray, methods: Sequence[str], rng: np.random.Generator,
                 sanity_images: int = 8) -> dict[str, pa.Table]:
    n, m = len(ids), len(methods)
    s_ids = ids[:sanity_images]
    rows_s: dict[str, list[object]] = {"image_id": [], "method": [], "step": [], "block": [], "spearman": []}
    for method in methods:
        for k, block in enumerate(BLOCKS, start=1):
            base = 0.95 if method == "cam" else max(0.9 - 0.45 * k, -0.1)
            for i in s_ids:
                rows_s["image_id"].append(i)
                rows_s["method"].append(method)
                rows_s["step"].append(k)
                rows_s["block"].append(block)
                rows_s["spearman"].append(float(np.clip(base + rng.normal(0, 0.03), -1, 1)))
    sanity = pa.table({**rows_s, "step": pa.array(rows_s["step"], pa.int32())})
    baselines = pa.table({
        "image_id": np.repeat(ids, 2), "baseline": np.tile(["random", "centre"], n),
        "drop": np.tile([0.6, 0.3], n).astype(np.float32), "increase": np.zeros(2 * n, np.float32),
        "deletion_auc": np.tile([0.5, 0.2], n).astype(np.float32),
        "insertion_auc": np.tile([0.5, 0.95], n).astype(np.float32),
    })
    nf = len(FRACTIONS)
    per = n * m * 2 * nf
    order = np.tile(np.repeat(["morf", "lerf"], nf), n * m)
    frac = np.tile(np.array(FRACTIONS, np.float32), n * m * 2)
    prob = np.where(order == "morf", 0.9 - frac * 0.8, 0.9 - frac * 0.2) + rng.normal(0, 0.02, per)
    road = pa.table({"image_id": np.repeat(ids, m * 2 * nf), "method": np.tile(np.repeat(methods, 2 * nf), n),
                     "order": order, "fraction": frac, "probability": np.clip(prob, 0, 1).astype(np.float32)})
    loc = pa.table({
        "image_id": np.repeat(ids, m), "method": np.tile(methods, n),
        "pointing": (rng.random(n * m) < 0.7).astype(np.float32),
        "energy": rng.uniform(0.3, 0.9, n * m).astype(np.float32),
        "iou": rng.uniform(0.1, 0.6, n * m).astype(np.float32), "topk": np.full(n * m, 20.0, np.float32),
    })
    return {"sanity": sanity, "baseline_faithfulness": baselines, "road": road, "localisation": loc}
