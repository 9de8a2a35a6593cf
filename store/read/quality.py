"""Reader queries over a run's data-quality tables (``quality``, ``duplicates``,
``quality_rules``, ``error_clusters``).

Label issues, leaks, look-alikes, outliers, near-duplicates, image issues and error clusters of
one run, accuracy without the leaked images, the rules the run judged by, and the cross-run
overlap the Compare page shows. A run without ``quality.parquet`` answers "nothing":
``has_quality`` False, empty frames, so the pages show only what the other tables give. Older
quality tables lack the later columns: each flag is read by :func:`flag_sql` /
:func:`flag_columns` from the columns the file has (a missing one flags nothing).

:class:`QualityQueries` is given what it needs of the reader (the run lookup, a query on the
reader's cursors, the run cache that memoizes its answers); the reader holds one as
:attr:`StoreReader.quality <xaidash.store.read.reader.StoreReader.quality>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xaidash.constants import IMAGE_ISSUES, QUALITY_FLAGS
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.index import QUALITY_INDEX_COLUMNS
from xaidash.store.read.memo import RunQueries, memo_run

CLUSTER_COLUMNS = ["true_class", "pred_class", "cluster", "k", "silhouette", "size",
                   "representative_ids", "method", "h", "w", "mean_map"]
#: flags stored as boolean columns of the quality table (the others are derived)
BOOL_FLAGS = ("mislabelled", "leak", "lookalike", "outlier")


def flag_sql(columns: set[str] | list[str]) -> dict[str, str]:
    """Per flag (``QUALITY_FLAGS``), a SQL expression over a quality file with these columns
    (allow-listed names and constants only, never input)."""
    have = set(columns)
    out: dict[str, str] = {}
    for f in QUALITY_FLAGS:
        if f in BOOL_FLAGS:
            out[f] = f"coalesce(q.{f}, false)" if f in have else "false"
        elif f == "duplicate":
            out[f] = "q.duplicate_group IS NOT NULL" if "duplicate_group" in have else "false"
        else:
            out[f] = (f"coalesce(list_contains(q.image_issues, '{f}'), false)"
                      if "image_issues" in have else "false")
    return out


def flag_columns(t: pa.Table) -> dict[str, npt.NDArray[np.bool_]]:
    """Per flag, a boolean mask over the rows of a quality table read with whatever columns its
    file has (the gallery index's masks)."""
    n = t.num_rows
    out: dict[str, npt.NDArray[np.bool_]] = {}
    for f in BOOL_FLAGS:
        out[f] = (t.column(f).cast(pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
                  if f in t.column_names else np.zeros(n, bool))
    out["duplicate"] = (t.column("duplicate_group").is_valid().to_numpy(zero_copy_only=False).astype(bool)
                        if "duplicate_group" in t.column_names else np.zeros(n, bool))
    issues = {k: np.zeros(n, bool) for k in IMAGE_ISSUES}
    if "image_issues" in t.column_names:
        col = t.column("image_issues").combine_chunks()
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        for k in IMAGE_ISSUES:
            issues[k][parents[flat == k]] = True
    out.update(issues)
    return out



class QualityQueries(RunQueries):
    """The data-quality queries of a reader (see the module docstring)."""

    def _quality_entry(self, run_id: object) -> RunEntry | None:
        e = self._entry(run_id)
        return e if e is not None and e.file("quality").is_file() else None

    def quality_rows(self, e: RunEntry) -> pa.Table | None:
        """The columns the gallery index needs (:data:`QUALITY_INDEX_COLUMNS`: the flags derived
        by :func:`flag_columns`), None without them."""
        path = e.file("quality")
        if not path.is_file():
            return None
        names = set(pq.read_schema(path).names)
        wanted = ["image_id", "label_quality", *[c for c in (*BOOL_FLAGS, "duplicate_group", "image_issues")
                                                  if c in names]]
        t = pq.read_table(path, columns=wanted)
        if not t.num_rows:
            return None
        flags = flag_columns(t)
        return pa.table({"image_id": t.column("image_id"), "label_quality": t.column("label_quality"),
                         **{f: pa.array(flags[f]) for f in QUALITY_FLAGS}}).select(QUALITY_INDEX_COLUMNS)

    def _flags(self, e: RunEntry) -> dict[str, str]:
        return flag_sql(pq.read_schema(e.file("quality")).names)

    @memo_run
    def has_quality(self, run_id: str) -> bool:
        """True when the run has a non-empty quality table."""
        e = self._quality_entry(run_id)
        return e is not None and pq.ParquetFile(e.file("quality")).metadata.num_rows > 0

    @memo_run
    def quality_summary(self, run_id: str) -> dict[str, Any]:
        """Counts of the run's flags, and the accuracy without leaked images ({} without a table).

        Keys: n, mislabelled, leaks, pixel_leaks, outliers, clustered_cells, accuracy,
        accuracy_without_leaks (None when there is no leak or no label); and, 0 for older runs:
        lookalikes, duplicates (val images in a near-duplicate group), duplicate_groups, one count
        per image issue (constants.IMAGE_ISSUES), image_issues (val images with any),
        train_duplicate_groups; outlier_note / lookalike_note: the run's rule in words, or why it
        flagged nothing ("not enough images to judge outliers"), None for older runs.
        """
        e = self._quality_entry(run_id)
        if e is None or not self.has_quality(run_id):
            return {}
        counts = self._class_counts(run_id)
        names = set(pq.read_schema(e.file("quality")).names)
        out: dict[str, Any] = {k: int(counts[k].sum()) for k in (
            "mislabelled", "leaks", "pixel_leaks", "outliers", "lookalikes", "duplicates", *IMAGE_ISSUES,
            "image_issues")}
        out["n"] = int(counts["images"].sum())
        out["duplicate_groups"] = int(self._df(
            "SELECT count(DISTINCT duplicate_group) AS g FROM read_parquet(?)", [str(e.file("quality"))]
        ).iloc[0]["g"]) if "duplicate_group" in names else 0
        labelled, no_leak = int(counts["labelled"].sum()), int(counts["labelled_no_leak"].sum())
        out["accuracy"] = int(counts["correct"].sum()) / labelled if labelled else None
        out["accuracy_without_leaks"] = int(counts["correct_no_leak"].sum()) / no_leak if no_leak else None
        cells = self._df(
            "SELECT count(DISTINCT (true_class, pred_class)) AS c FROM read_parquet(?)",
            [str(e.file("error_clusters"))],
        ) if e.file("error_clusters").is_file() else pd.DataFrame({"c": [0]})
        out["clustered_cells"] = int(cells["c"].iloc[0])
        out["train_duplicate_groups"] = int(self._df(
            "SELECT count(DISTINCT \"group\") AS g FROM read_parquet(?) WHERE split = 'train'",
            [str(e.file("duplicates"))]).iloc[0]["g"]) if e.file("duplicates").is_file() else 0
        rules = self.quality_rules(run_id)
        notes = dict(zip(rules["rule"], rules["note"], strict=True)) if len(rules) else {}
        out["outlier_note"] = notes.get("outlier")
        out["lookalike_note"] = notes.get("lookalike")
        out["outliers_judged"] = bool(len(rules)) and bool(
            rules.loc[rules["rule"] == "outlier", "threshold"].notna().any())
        if not out["leaks"]:
            out["accuracy_without_leaks"] = None
        return out

    @memo_run
    def quality_by_class(self, run_id: str) -> pd.DataFrame:
        """Per true class with any flag: class, class_name, images, mislabelled, leaks, lookalikes,
        outliers, duplicates, image_issues (val images with any issue)."""
        cols = ["class", "class_name", "images", "mislabelled", "leaks", "lookalikes", "outliers",
                "duplicates", "image_issues"]
        e = self._quality_entry(run_id)
        if e is None:
            return pd.DataFrame(columns=cols)
        counts = self._class_counts(run_id)
        df = counts[counts["class"].notna() & (counts["flagged"] > 0)].sort_values("class")
        df = df.astype({"class": "int64"}).reset_index(drop=True)
        return df[cols]

    @memo_run
    def _class_counts(self, run_id: str) -> pd.DataFrame:
        """Per true class (None for unlabelled images): the flag counts, images with any flag, and
        the labelled / correct counts with and without leaks. The overview's counts and its
        per-class table both come from this one join of quality and predictions (at 1M images each
        join is most of the overview's first render)."""
        e = self._quality_entry(run_id)
        assert e is not None
        fl = self._flags(e)
        issues = ", ".join(f"count(*) FILTER (WHERE {fl[k]}) AS {k}" for k in IMAGE_ISSUES)
        return self._lined_up(lambda join: f"""
            SELECT p.label AS "class", any_value(p.label_name) AS class_name, count(*) AS images,
                   count(*) FILTER (WHERE q.mislabelled) AS mislabelled,
                   count(*) FILTER (WHERE q.leak) AS leaks,
                   count(*) FILTER (WHERE q.leak_match = 'pixels') AS pixel_leaks,
                   count(*) FILTER (WHERE q.outlier) AS outliers,
                   count(*) FILTER (WHERE {fl["lookalike"]}) AS lookalikes,
                   count(*) FILTER (WHERE {fl["duplicate"]}) AS duplicates,
                   {issues},
                   count(*) FILTER (WHERE {" OR ".join(fl[k] for k in IMAGE_ISSUES)}) AS image_issues,
                   count(*) FILTER (WHERE {" OR ".join(fl.values())}) AS flagged,
                   count(*) FILTER (WHERE p.correct IS NOT NULL) AS labelled,
                   count(*) FILTER (WHERE p.correct) AS correct,
                   count(*) FILTER (WHERE p.correct IS NOT NULL AND NOT q.leak) AS labelled_no_leak,
                   count(*) FILTER (WHERE p.correct AND NOT q.leak) AS correct_no_leak,
                   count(*) FILTER (WHERE q.image_id IS DISTINCT FROM p.image_id) AS misaligned
            FROM read_parquet(?) q {join}
            GROUP BY p.label
            """, "read_parquet(?) p", "JOIN", [str(e.file("quality")), str(e.file("predictions"))])

    def _lined_up(self, sql: Callable[[str], str], right: str, by_id: str, params: list[str]) -> pd.DataFrame:
        """``sql(join)`` run first with ``POSITIONAL JOIN right``: two files of a run (or of two runs
        over one validation set) are written sorted by image_id over the same images, so row i of
        one is row i of the other, ~8x cheaper than matching 1M ids. The query's ``misaligned``
        column counts the rows where that does not hold; then it runs again with ``by_id right
        USING (image_id)``. The result is without that column."""
        df = self._df(sql(f"POSITIONAL JOIN {right}"), params)
        if int(df["misaligned"].sum()):
            df = self._df(sql(f"{by_id} {right} USING (image_id)"), params)
        return df.drop(columns="misaligned")

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
        # the flag names are allow-listed identifiers (constants.QUALITY_FLAGS), never input; each
        # side's flags are derived from the columns its file has (an older run flags fewer kinds)
        fa, fb = self._flags(ea), self._flags(eb)
        side_a = ", ".join(f"{fa[f]} AS {f}" for f in QUALITY_FLAGS)
        side_b = ", ".join(f"{fb[f]} AS {f}" for f in QUALITY_FLAGS)
        pick = ", ".join(f"a.{f} AS a_{f}, b.{f} AS b_{f}" for f in QUALITY_FLAGS)
        parts = [
            f"SELECT '{f}' AS flag, count(*) FILTER (WHERE a_{f}) AS a, count(*) FILTER (WHERE b_{f}) AS b, "
            f'count(*) FILTER (WHERE a_{f} AND b_{f}) AS "both" FROM j'
            for f in QUALITY_FLAGS
        ]
        df = self._lined_up(
            lambda join: f"WITH a AS (SELECT image_id, {side_a} FROM read_parquet(?) q), "
            f"b AS (SELECT image_id, {side_b} FROM read_parquet(?) q), "
            f"j AS (SELECT {pick}, a.image_id IS DISTINCT FROM b.image_id AS off FROM a {join}) "
            f"SELECT u.*, m.misaligned FROM ({' UNION ALL '.join(parts)}) u, "
            "(SELECT count(*) FILTER (WHERE off) AS misaligned FROM j) m",
            "b", "FULL OUTER JOIN", [str(ea.file("quality")), str(eb.file("quality"))])
        return df[cols].reset_index(drop=True)

    @memo_run
    def quality_rules(self, run_id: str) -> pd.DataFrame:
        """The run's data-quality rules and their numbers (``quality_rules``; empty for older runs)."""
        cols = ["rule", "statistic", "quantile", "threshold", "reference", "needed", "note"]
        e = self._entry(run_id)
        if e is None or not e.file("quality_rules").is_file():
            return pd.DataFrame(columns=cols)
        return self._df(f"SELECT {', '.join(cols)} FROM read_parquet(?) ORDER BY rule",
                        [str(e.file("quality_rules"))])

    def duplicate_group(self, run_id: str, image_id: str) -> list[str]:
        """The other val images in ``image_id``'s near-duplicate group (empty: none, older run)."""
        e = self._entry(run_id)
        if e is None or not isinstance(image_id, str) or not e.file("duplicates").is_file():
            return []
        df = self._df(
            'SELECT d.image_id FROM read_parquet(?) d JOIN (SELECT "group" FROM read_parquet(?) '
            "WHERE split = 'val' AND image_id = ?) g USING (\"group\") "
            "WHERE d.split = 'val' AND d.image_id <> ? ORDER BY d.image_id",
            [str(e.file("duplicates")), str(e.file("duplicates")), image_id, image_id])
        return [str(i) for i in df["image_id"]]


def _isnull(v: object) -> bool:
    if isinstance(v, (list, tuple, np.ndarray)):
        return False
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA
