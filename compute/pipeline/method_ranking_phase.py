"""The global phase's method ranking step: the ``method_stats`` and ``method_ranking`` tables, from
the staged per-image trust tables (faithfulness, baseline_faithfulness, road, sanity).

The statistics and the rule are :mod:`xaidash.compute.analysis.method_ranking`'s; the sanity verdict
is the store's one rule (:func:`~xaidash.store.read.trust_tables.sanity_pass_block`), the same the
dashboard's sanity card applies. A run without faithfulness scores gets neither table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from xaidash.compute.analysis.method_ranking import (
    ALPHA,
    RESAMPLES,
    SEED,
    method_stats,
    per_image_scores,
    rank_methods,
)
from xaidash.constants import BASELINES, FAITHFULNESS_SCORES
from xaidash.store import Staging
from xaidash.store.builder import table
from xaidash.store.read.trust_tables import sanity_pass_block

log = logging.getLogger(__name__)


def _staged(staging: Staging, name: str, columns: list[str]) -> pd.DataFrame:
    batches = list(staging.iter_table(name, columns=columns))
    if not batches:
        return pd.DataFrame(columns=columns)
    df: pd.DataFrame = pa.Table.from_batches(batches).to_pandas()
    return df


def sanity_blocks(sanity: pd.DataFrame) -> dict[str, str | None]:
    """Per method in the sanity table: the block at which it passes (None: flagged), by the mean
    Spearman correlation per step over the sampled images (nulls skipped, as the reader's
    ``sanity_curves`` averages them)."""
    if sanity.empty:
        return {}
    steps = (sanity.groupby(["method", "step"], sort=False)
             .agg(block=("block", "first"), spearman=("spearman", "mean")).reset_index())
    return {str(m): sanity_pass_block(g) for m, g in steps.groupby("method", sort=False)}


def ranking_frames(faithfulness: pd.DataFrame, baselines: pd.DataFrame, road: pd.DataFrame,
                   sanity: pd.DataFrame, methods: Sequence[str], resamples: int = RESAMPLES,
                   seed: int = SEED, alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(method_stats, method_ranking) of the per-image tables, for the ``methods`` (in that order
    first, then any other method the tables hold, by name; those without any score are left out)."""
    scores = per_image_scores(faithfulness, baselines, road)
    present = set(scores["method"])
    bs = [b for b in BASELINES if b in present]
    ms = [m for m in methods if m in present] + sorted(present - set(methods) - set(bs))
    st = method_stats(scores, ms, bs, resamples, seed)
    return st, rank_methods(st, ms, sanity_blocks(sanity), alpha)


def method_ranking_tables(staging: Staging, methods: Sequence[str],
                          resamples: int = RESAMPLES) -> dict[str, pa.Table]:
    """The two tables of the staged run (staged schema: without run_id); {} without faithfulness."""
    faith = _staged(staging, "faithfulness", ["image_id", "method", *FAITHFULNESS_SCORES])
    if faith.empty:
        return {}
    st, ranking = ranking_frames(
        faith,
        _staged(staging, "baseline_faithfulness", ["image_id", "baseline", *FAITHFULNESS_SCORES]),
        _staged(staging, "road", ["image_id", "method", "order", "fraction", "probability"]),
        _staged(staging, "sanity", ["image_id", "method", "step", "block", "spearman"]),
        methods, resamples)
    log.info("method ranking: %s (%d stats rows, %d resamples, seed %d)",
             " > ".join(f"{r.method}[{r.tier}]" for r in ranking.itertuples()), len(st), resamples, SEED)
    return {"method_stats": table("method_stats", _columns(st)),
            "method_ranking": table("method_ranking", _columns(ranking))}


def _columns(df: pd.DataFrame) -> dict[str, list[object]]:
    """Columns of ``df`` as Python lists, NaN and pandas' missing values as None (Arrow nulls)."""
    return {c: [None if pd.isna(v) else v for v in df[c].tolist()] for c in df.columns}
