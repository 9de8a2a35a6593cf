"""The headline numbers of a run (accuracy, macro and weighted scores, errors, failed images).

Read from the predictions' ``correct`` column and the class metrics directly (two columns' worth
of Parquet), so a page needing only the headline (compare) does not build the run's cache.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from xaidash.store.read.catalog import RunEntry

#: the headline numbers of a run, in display order
HEADLINE = (
    "n",
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "errors",
    "failed",
)

#: The headline row (``?``: the run's predictions file, then its class_metrics file).
HEADLINE_SQL = """
    SELECT p.*, m.*
    FROM (SELECT count(*) AS n,
                 avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) FILTER (WHERE correct IS NOT NULL)
                   AS accuracy,
                 count(*) FILTER (WHERE correct = false) AS errors
          FROM read_parquet(?)) p,
         (SELECT avg(precision) AS macro_precision, avg(recall) AS macro_recall, avg(f1) AS macro_f1,
                 sum(f1 * support) / nullif(sum(support), 0) AS weighted_f1
          FROM read_parquet(?)) m
    """


def headline_out(t: pa.Table, e: RunEntry) -> dict[str, float | int | None]:
    """The headline numbers of a run from its headline row (None where unknown)."""
    row: dict[str, Any] = t.to_pylist()[0]
    tables = (e.manifest or {}).get("tables", {})
    row["failed"] = int(tables.get("failures", {}).get("rows", e.row.get("num_failed") or 0))
    out: dict[str, float | int | None] = {}
    for k in HEADLINE:
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[k] = None
        elif k in ("n", "errors", "failed"):
            out[k] = int(v)
        else:
            out[k] = float(v)
    if out["accuracy"] is None:
        out["errors"] = None  # unlabeled: "errors" is unknown, not zero
    return out
