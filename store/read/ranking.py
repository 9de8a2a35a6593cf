"""Reader queries over the calibration and ranking tables: calibration, class_ranking,
ranking_curves, scores, and the method comparison tables method_stats and method_ranking
(computed by the global phase, shown by the overview and the report).

:class:`RankingQueries` is a :class:`~xaidash.store.read.memo.RunQueries` (given the run lookup, a
query on the reader's cursors and the run cache that memoizes its answers), as the trust and quality
queries are; the reader holds one as
:attr:`StoreReader.ranking <xaidash.store.read.reader.StoreReader.ranking>`. A run without these
tables (unlabeled, or computed before they existed) has no file or an empty one: every query then
returns an empty frame (or dict), and the overview and the report show nothing in their place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from xaidash.store.read.memo import RunQueries

CALIBRATION_COLUMNS = ["bins", "bin", "lower", "upper", "count", "confidence", "accuracy"]
CLASS_RANKING_COLUMNS = ["class", "class_name", "positives", "roc_auc", "average_precision"]
CURVE_COLUMNS = ["class", "curve", "point", "x", "y", "threshold"]
METHOD_STATS_COLUMNS = ["method", "other", "metric", "n", "mean", "ci_low", "ci_high", "p_value", "resamples",
                        "seed"]
METHOD_RANKING_COLUMNS = ["method", "position", "tier", "level", "passes_sanity", "sanity_block",
                          "beats_random", "beats_centre", "primary", "tie_metric", "tie_p", "alpha", "reason"]


class RankingQueries(RunQueries):
    """The reliability bins, per-class AUC / AP, the curves and the run-level scores of a run."""

    def _query(self, run_id: str, table: str, sql: str, columns: list[str]) -> pd.DataFrame:
        """``sql`` with ``?`` = the run's ``table`` file, memoized per run (files are immutable)."""
        e = self._entry(run_id)
        if e is None or not e.file(table).is_file():
            return pd.DataFrame(columns=columns)
        path = str(e.file(table))
        run: Callable[[], pd.DataFrame] = lambda: self._df(sql, [path])  # noqa: E731
        return self._run_cache.memoized((f"ranking_{table}", run_id), run)

    def calibration(self, run_id: str) -> pd.DataFrame:
        """The reliability diagram's bins in order (empty bins included, with null means)."""
        return self._query(
            run_id,
            "calibration",
            f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM read_parquet(?) ORDER BY bin",
            CALIBRATION_COLUMNS,
        )

    def class_ranking(self, run_id: str) -> pd.DataFrame:
        """Per class: positives, one-vs-rest ROC AUC and average precision."""
        return self._query(
            run_id,
            "class_ranking",
            'SELECT "class", class_name, positives, roc_auc, '
            'average_precision FROM read_parquet(?) ORDER BY "class"',
            CLASS_RANKING_COLUMNS,
        )

    def curves(self, run_id: str) -> pd.DataFrame:
        """Every class's ROC and PR points, in curve order."""
        return self._query(
            run_id,
            "ranking_curves",
            'SELECT "class", curve, point, x, y, threshold '
            'FROM read_parquet(?) ORDER BY "class", curve, point',
            CURVE_COLUMNS,
        )

    def scores(self, run_id: str) -> dict[str, float | None]:
        """metric -> value (ece, mce, macro_roc_auc, macro_average_precision, topK_accuracy); {} for a
        run without them."""
        df = self._query(
            run_id, "scores", "SELECT metric, value FROM read_parquet(?) ORDER BY metric", ["metric", "value"]
        )
        out: dict[str, float | None] = {}
        for m, v in zip(df["metric"], df["value"], strict=True):
            out[str(m)] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        return out

    def has_ranking(self, run_id: str) -> bool:
        """Whether the run has calibration and ranking scores (a labeled run computed with them)."""
        return bool(self.scores(run_id))

    def method_stats(self, run_id: str) -> pd.DataFrame:
        """Every method's (and baseline's) mean and bootstrap CI per metric (``other`` null), and
        every tested pair's paired difference, CI and p-value (``other`` set)."""
        cols = ", ".join(f'"{c}"' for c in METHOD_STATS_COLUMNS)
        return self._query(run_id, "method_stats",
                           f"SELECT {cols} FROM read_parquet(?) ORDER BY metric, method, other NULLS FIRST",
                           METHOD_STATS_COLUMNS)

    def method_ranking(self, run_id: str) -> pd.DataFrame:
        """The methods in the ranking rule's order (position), with tier, gates and reason; empty
        for a run computed before the ranking existed."""
        cols = ", ".join(f'"{c}"' for c in METHOD_RANKING_COLUMNS)
        return self._query(run_id, "method_ranking", f"SELECT {cols} FROM read_parquet(?) ORDER BY position",
                           METHOD_RANKING_COLUMNS)
