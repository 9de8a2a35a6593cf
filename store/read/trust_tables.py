"""Reader queries over the "can I trust these maps?" tables: sanity, baseline_faithfulness, road,
localisation (computed by the compute job's trust step, shown by the dashboard's trust sections).

:class:`TrustQueries` is given what it needs of the reader (the run lookup, a query on the
reader's cursors, the run cache that memoizes its answers), as
:class:`~xaidash.store.read.quality.QualityQueries` is; the reader holds one as
:attr:`StoreReader.trust <xaidash.store.read.reader.StoreReader.trust>`. It reads each run's own
files directly, like the reader's per-run queries. A run without these tables has no file or an
empty one: every query then returns an empty frame, and the dashboard shows nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from xaidash.constants import IMAGE_ID_RE
from xaidash.store.read.cache import RunCache
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.records import Params

SANITY_COLUMNS = ["method", "step", "block", "spearman", "n"]
BASELINE_COLUMNS = ["baseline", "drop", "increase", "deletion_auc", "insertion_auc", "n"]
ROAD_COLUMNS = ["method", "order", "fraction", "probability", "n"]
LOCALISATION_COLUMNS = ["method", "pointing", "energy", "iou", "topk", "n"]


def valid_image_id(image_id: object) -> bool:
    """True for a well-formed image id (anything else is answered with an empty result)."""
    return isinstance(image_id, str) and bool(IMAGE_ID_RE.match(image_id))


class TrustQueries:
    """Per-run aggregates and per-image rows of the trust tables (see the module docstring)."""

    def __init__(
        self,
        entry: Callable[[object], RunEntry | None],
        df: Callable[[str, Params], pd.DataFrame],
        run_cache: RunCache,
    ) -> None:
        self._entry = entry
        self._df = df
        self._run_cache = run_cache

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
