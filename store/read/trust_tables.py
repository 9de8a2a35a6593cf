"""Reader queries over the "can I trust these maps?" tables: sanity, baseline_faithfulness, road,
localisation (computed by the compute job's trust step, shown by the dashboard's trust sections).

:class:`TrustQueries` is given what it needs of the reader (the run lookup, a query on the
reader's cursors, the run cache that memoizes its answers), as
:class:`~xaidash.store.read.quality.QualityQueries` is; the reader holds one as
:attr:`StoreReader.trust <xaidash.store.read.reader.StoreReader.trust>`. It reads each run's own
files directly, like the reader's per-run queries. A run without these tables has no file or an
empty one: every query then returns an empty frame, and the dashboard shows nothing.

It also holds the two trust rules that both the dashboard's verdicts and the compute job's method
ranking apply, so that the overview's sanity and baseline cards and the ranking cannot disagree:
:func:`sanity_pass_block` and :func:`beats_baseline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pandas as pd

from xaidash.constants import FAITHFULNESS_SCORES, IMAGE_ID_RE, SANITY_PASS_CORRELATION
from xaidash.store.read.memo import RunQueries

SANITY_COLUMNS = ["method", "step", "block", "spearman", "n"]
BASELINE_COLUMNS = ["baseline", *FAITHFULNESS_SCORES, "n"]
ROAD_COLUMNS = ["method", "order", "fraction", "probability", "n"]
LOCALISATION_COLUMNS = ["method", "pointing", "energy", "iou", "topk", "n"]


def sanity_pass_block(steps: pd.DataFrame) -> str | None:
    """The sanity rule, for one method: the ``block`` of the first ``step`` at which the mean
    Spearman correlation (``spearman``, over the sampled images) falls below
    :data:`~xaidash.constants.SANITY_PASS_CORRELATION`, or None when it never does (the map
    survives randomisation: flagged). Null correlations are skipped."""
    g = steps.sort_values("step")
    rho = pd.to_numeric(g["spearman"], errors="coerce")
    below = g[rho.notna() & (rho < SANITY_PASS_CORRELATION)]
    return None if below.empty else str(below["block"].iloc[0])


def beats_baseline(margins: Iterable[float | None]) -> bool:
    """The baseline rule: a method beats a baseline when it is better on more faithfulness
    metrics than it is worse. ``margins`` are signed (positive = better, see
    :data:`~xaidash.constants.FAITHFULNESS_DIRECTIONS`); missing ones count neither way."""
    known = [float(m) for m in margins if m is not None and not math.isnan(float(m))]
    return sum(m > 0 for m in known) > sum(m < 0 for m in known)


def valid_image_id(image_id: object) -> bool:
    """True for a well-formed image id (anything else is answered with an empty result)."""
    return isinstance(image_id, str) and bool(IMAGE_ID_RE.match(image_id))


class TrustQueries(RunQueries):
    """Per-run aggregates and per-image rows of the trust tables (see the module docstring)."""

    def _query(self, run_id: str, table: str, name: str, sql: str, columns: list[str],
               params: list[object] | None = None) -> pd.DataFrame:
        """``sql`` with ``?`` = the run's ``table`` file first (then ``params``), memoized per run."""
        e = self._entry(run_id)
        if e is None or not e.file(table).is_file():
            return pd.DataFrame(columns=columns)
        path = str(e.file(table))
        run: Callable[[], pd.DataFrame] = lambda: self._df(sql, [path, *(params or [])])  # noqa: E731
        if params:  # per-image queries are not memoized (one per page view, cheap)
            return run()
        return self._run_cache.memoized((f"trust_{name}", run_id), run)

    def sanity_curves(self, run_id: str) -> pd.DataFrame:
        """Per method and step: mean Spearman correlation over the sampled images (nulls skipped)."""
        return self._query(run_id, "sanity", "sanity", """
            SELECT method, step, any_value(block) AS block, avg(spearman) AS spearman,
                   count(spearman) AS n
            FROM read_parquet(?) GROUP BY method, step ORDER BY method, step""", SANITY_COLUMNS)

    def baseline_summary(self, run_id: str) -> pd.DataFrame:
        """Per baseline: the mean of each faithfulness metric (as ``faithfulness_summary``)."""
        return self._query(run_id, "baseline_faithfulness", "baselines", """
            SELECT baseline, avg("drop") AS "drop", avg(increase) AS increase,
                   avg(deletion_auc) AS deletion_auc, avg(insertion_auc) AS insertion_auc, count(*) AS n
            FROM read_parquet(?) GROUP BY baseline ORDER BY baseline""", BASELINE_COLUMNS)

    def road_summary(self, run_id: str) -> pd.DataFrame:
        """Per method, order and fraction: the mean probability after ROAD removal."""
        return self._query(run_id, "road", "road", """
            SELECT method, "order", fraction, avg(probability) AS probability, count(*) AS n
            FROM read_parquet(?) GROUP BY method, "order", fraction ORDER BY method, "order", fraction""",
            ROAD_COLUMNS)

    def localisation_summary(self, run_id: str) -> pd.DataFrame:
        """Per method: pointing-game hit rate, mean energy share, mean top-k IoU, images."""
        return self._query(run_id, "localisation", "localisation", """
            SELECT method, avg(pointing) AS pointing, avg(energy) AS energy, avg(iou) AS iou,
                   any_value(topk) AS topk, count(*) AS n
            FROM read_parquet(?) GROUP BY method ORDER BY method""", LOCALISATION_COLUMNS)

    def image_road(self, run_id: str, image_id: str) -> pd.DataFrame:
        """One image's ROAD rows: method, order, fraction, probability."""
        if not valid_image_id(image_id):
            return pd.DataFrame(columns=ROAD_COLUMNS[:-1])
        return self._query(run_id, "road", "", """
            SELECT method, "order", fraction, probability FROM read_parquet(?)
            WHERE image_id = ? ORDER BY method, "order", fraction""", ROAD_COLUMNS[:-1], [image_id])

    def image_localisation(self, run_id: str, image_id: str) -> pd.DataFrame:
        """One image's localisation rows: method, pointing, energy, iou, topk."""
        if not valid_image_id(image_id):
            return pd.DataFrame(columns=LOCALISATION_COLUMNS[:-1])
        return self._query(run_id, "localisation", "", """
            SELECT method, pointing, energy, iou, topk FROM read_parquet(?)
            WHERE image_id = ? ORDER BY method""", LOCALISATION_COLUMNS[:-1], [image_id])
