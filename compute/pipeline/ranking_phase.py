"""The global phase's calibration and ranking step: the ``calibration``, ``class_ranking``,
``ranking_curves`` and ``scores`` tables, from the staged probabilities of a labeled run.

The definitions are in :mod:`xaidash.compute.analysis.calibration`; this module turns its report
into the store's tables. An unlabeled run gets none of them (nothing to be calibrated against).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from xaidash.compute.analysis.calibration import CALIBRATION_BINS, RankingReport, ranking_report, thin
from xaidash.store.builder import table

log = logging.getLogger(__name__)


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def ranking_tables(
    labels: npt.ArrayLike,
    probabilities: npt.NDArray[np.float32],
    class_names: Sequence[str],
    bins: int = CALIBRATION_BINS,
) -> dict[str, pa.Table]:
    """The four tables of ``[N, C]`` probabilities of val images with known ``labels``."""
    rep = ranking_report(labels, probabilities, bins)
    out = report_tables(rep, class_names)
    log.info(
        "calibration: ECE %.4f, MCE %.4f over %d bins; macro ROC AUC %.4f",
        rep.reliability.ece,
        rep.reliability.mce,
        rep.reliability.bins,
        rep.macro_roc_auc,
    )
    return out


def report_tables(rep: RankingReport, class_names: Sequence[str]) -> dict[str, pa.Table]:
    """:class:`RankingReport` -> the store's tables (staged schema: without run_id)."""
    rel = rep.reliability
    calibration = table(
        "calibration",
        {
            "bins": [rel.bins] * rel.bins,
            "bin": list(range(rel.bins)),
            "lower": rel.lower.tolist(),
            "upper": rel.upper.tolist(),
            "count": rel.count.tolist(),
            "confidence": [_value(v) for v in rel.confidence],
            "accuracy": [_value(v) for v in rel.accuracy],
        },
    )
    class_ranking = table(
        "class_ranking",
        {
            "class": list(range(len(rep.classes))),
            "class_name": [str(n) for n in class_names],
            "positives": [c.positives for c in rep.classes],
            "roc_auc": [_value(c.roc_auc) for c in rep.classes],
            "average_precision": [_value(c.average_precision) for c in rep.classes],
        },
    )
    cols: dict[str, list[object]] = {k: [] for k in ("class", "curve", "point", "x", "y", "threshold")}
    for k, c in enumerate(rep.classes):
        for name, curve in (("roc", c.roc), ("pr", c.pr)):
            t = thin(curve)
            n = t.x.size
            cols["class"] += [k] * n
            cols["curve"] += [name] * n
            cols["point"] += list(range(n))
            cols["x"] += t.x.tolist()
            cols["y"] += t.y.tolist()
            cols["threshold"] += t.threshold.tolist()
    curves = table("ranking_curves", cols)
    metrics: list[tuple[str, float]] = [
        ("ece", rel.ece),
        ("mce", rel.mce),
        ("macro_roc_auc", rep.macro_roc_auc),
        ("macro_average_precision", rep.macro_average_precision),
        *((f"top{k}_accuracy", v) for k, v in rep.top_k.items()),
    ]
    scores = table("scores", {"metric": [m for m, _ in metrics], "value": [_value(v) for _, v in metrics]})
    return {
        "calibration": calibration,
        "class_ranking": class_ranking,
        "ranking_curves": curves,
        "scores": scores,
    }
