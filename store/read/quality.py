"""Reader queries over a run's data-quality tables (``quality``, ``error_clusters``).

Label issues, leaks, outliers and error clusters of one run, accuracy without the leaked images,
and the cross-run overlap the Compare page shows. A run without ``quality.parquet`` answers
"nothing": ``has_quality`` False, empty frames, so the pages show only what the other tables give.

:class:`QualityQueries` is given what it needs of the reader (the run lookup, a query on the
reader's cursors, the run cache that memoizes its answers); the reader holds one as
:attr:`StoreReader.quality <xaidash.store.read.reader.StoreReader.quality>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xaidash.constants import QUALITY_FLAGS
from xaidash.store.read.cache import RunCache
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.index import QUALITY_INDEX_COLUMNS
from xaidash.store.read.memo import memo_run
from xaidash.store.read.records import Params

CLUSTER_COLUMNS = ["true_class", "pred_class", "cluster", "k", "silhouette", "size",
                   "representative_ids", "method", "h", "w", "mean_map"]



class QualityQueries:
    """The data-quality queries of a reader (see the module docstring).

    ``entry`` looks a run up (None for unknown ids), ``df`` runs one query with bound parameters
    as a DataFrame, and ``run_cache`` keeps the memoized answers with the run's other results.
    """

    def __init__(
        self,
        entry: Callable[[object], RunEntry | None],
        df: Callable[[str, Params], pd.DataFrame],
        run_cache: RunCache,
    ) -> None:
        self._lookup = entry
        self._df = df
        self._run_cache = run_cache

    def _entry(self, run_id: object) -> RunEntry | None:
        return self._lookup(run_id)

    def _quality_entry(self, run_id: object) -> RunEntry | None:
        e = self._entry(run_id)
        return e if e is not None and e.file("quality").is_file() else None

    def quality_rows(self, e: RunEntry) -> pa.Table | None:
        """The columns the gallery index needs (:data:`QUALITY_INDEX_COLUMNS`), None without them."""
        path = e.file("quality")
        if not path.is_file():
            return None
        t = pq.read_table(path, columns=QUALITY_INDEX_COLUMNS)
        return t if t.num_rows else None

    @memo_run
    def has_quality(self, run_id: str) -> bool:
        """True when the run has a non-empty quality table."""
        e = self._quality_entry(run_id)
        return e is not None and pq.ParquetFile(e.file("quality")).metadata.num_rows > 0

    @memo_run
    def quality_summary(self, run_id: str) -> dict[str, Any]:
        """Counts of the run's flags, and the accuracy without leaked images ({} without a table).

        Keys: n, mislabelled, leaks, pixel_leaks, outliers, clustered_cells, accuracy,
        accuracy_without_leaks (None when there is no leak or no label).
        """
        e = self._quality_entry(run_id)
        if e is None or not self.has_quality(run_id):
            return {}
        row = self._df(
            """
            SELECT count(*) AS n,
                   count(*) FILTER (WHERE q.mislabelled) AS mislabelled,
                   count(*) FILTER (WHERE q.leak) AS leaks,
                   count(*) FILTER (WHERE q.leak_match = 'pixels') AS pixel_leaks,
                   count(*) FILTER (WHERE q.outlier) AS outliers,
                   avg(CASE WHEN p.correct THEN 1.0 ELSE 0.0 END) FILTER (WHERE p.correct IS NOT NULL)
                     AS accuracy,
                   avg(CASE WHEN p.correct THEN 1.0 ELSE 0.0 END)
                     FILTER (WHERE p.correct IS NOT NULL AND NOT q.leak) AS accuracy_without_leaks
            FROM read_parquet(?) q JOIN read_parquet(?) p USING (image_id)
            """,
            [str(e.file("quality")), str(e.file("predictions"))],
        ).iloc[0].to_dict()
        cells = self._df(
            "SELECT count(DISTINCT (true_class, pred_class)) AS c FROM read_parquet(?)",
            [str(e.file("error_clusters"))],
        ) if e.file("error_clusters").is_file() else pd.DataFrame({"c": [0]})
        out: dict[str, Any] = {str(k): (None if pd.isna(v) else v) for k, v in row.items()}
        for k in ("n", "mislabelled", "leaks", "pixel_leaks", "outliers"):
            out[k] = int(out[k] or 0)
        out["clustered_cells"] = int(cells["c"].iloc[0])
        if not out["leaks"]:
            out["accuracy_without_leaks"] = None
        return out

    @memo_run
    def quality_by_class(self, run_id: str) -> pd.DataFrame:
        """Per true class with any flag: class, class_name, images, mislabelled, leaks, outliers."""
        cols = ["class", "class_name", "images", "mislabelled", "leaks", "outliers"]
        e = self._quality_entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        df = self._df(
            """
            SELECT p.label AS "class", any_value(p.label_name) AS class_name, count(*) AS images,
                   count(*) FILTER (WHERE q.mislabelled) AS mislabelled,
                   count(*) FILTER (WHERE q.leak) AS leaks, count(*) FILTER (WHERE q.outlier) AS outliers
            FROM read_parquet(?) q JOIN read_parquet(?) p USING (image_id)
            WHERE p.label IS NOT NULL
            GROUP BY p.label HAVING count(*) FILTER (WHERE q.mislabelled OR q.leak OR q.outlier) > 0
            ORDER BY p.label
            """,
            [str(e.file("quality")), str(e.file("predictions"))],
        )
        return df[cols]

    def image_quality(self, run_id: str, image_id: str) -> dict[str, Any] | None:
        """The quality row of one val image (None when the run has none or no such image)."""
        e = self._quality_entry(run_id)
        if e is None or not isinstance(image_id, str):
            return None
        df = self._df("SELECT * EXCLUDE (run_id) FROM read_parquet(?) WHERE image_id = ?",
                      [str(e.file("quality")), image_id])
        if not len(df):
            return None
        rec: dict[str, Any] = {str(k): (None if _isnull(v) else v) for k, v in df.iloc[0].to_dict().items()}
        return rec

    @memo_run
    def error_clusters(self, run_id: str, true_class: int, pred_class: int) -> pd.DataFrame:
        """The clusters of one confusion cell, one row per (cluster, method), by cluster."""
        e = self._entry(run_id)
        if e is None or not e.file("error_clusters").is_file():
            return pd.DataFrame(columns=CLUSTER_COLUMNS)
        cols = ", ".join(f'"{c}"' for c in CLUSTER_COLUMNS)
        return self._df(
            f"SELECT {cols} FROM read_parquet(?) WHERE true_class = ? AND pred_class = ? "
            "ORDER BY cluster, method",
            [str(e.file("error_clusters")), int(true_class), int(pred_class)],
        )

    @memo_run
    def quality_overlap(self, run_a: str, run_b: str) -> pd.DataFrame:
        """Per flag: images flagged in a, in b, in both (matched by image_id); empty when either
        run has no quality table."""
        cols = ["flag", "a", "b", "both"]
        ea, eb = self._quality_entry(run_a), self._quality_entry(run_b)
        if ea is None or eb is None:
            return pd.DataFrame(columns=cols)
        # the flag names are allow-listed identifiers (constants.QUALITY_FLAGS), never input
        pick = ", ".join(f"a.{f} AS a_{f}, b.{f} AS b_{f}" for f in QUALITY_FLAGS)
        parts = [
            f"SELECT '{f}' AS flag, count(*) FILTER (WHERE a_{f}) AS a, count(*) FILTER (WHERE b_{f}) AS b, "
            f'count(*) FILTER (WHERE a_{f} AND b_{f}) AS "both" FROM j'
            for f in QUALITY_FLAGS
        ]
        return self._df(
            f"WITH j AS (SELECT {pick} FROM read_parquet(?) a FULL OUTER JOIN read_parquet(?) b "
            "USING (image_id)) " + " UNION ALL ".join(parts),
            [str(ea.file("quality")), str(eb.file("quality"))],
        )[cols]


def _isnull(v: object) -> bool:
    if isinstance(v, (list, tuple, np.ndarray)):
        return False
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA
