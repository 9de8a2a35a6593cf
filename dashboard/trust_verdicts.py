"""Derived numbers of the trust checks (pure pandas, unit-tested): the sanity verdict per
method, each method's margin over the trivial baselines, the ROAD scores.

The rules, in words (the overview prints them next to the numbers):

* **Sanity verdict**: a method *passes* the cascading randomisation test when its mean Spearman
  correlation with the trained model's map falls below :data:`PASS_CORRELATION` at some step (the rule is
  :func:`~xaidash.store.read.trust_tables.sanity_pass_block`, shared with the job's method ranking);
  the sentence names the first block at which it does ("changes completely once layer4 is
  random"). A method whose correlation stays at or above it at every step *survives
  randomisation* and is flagged: its map does not depend on what the model learned.
* **Margin over a baseline**, per faithfulness metric: how much better the method's mean is than
  the baseline's, signed so that a positive margin is better (Average Drop and Deletion AUC are
  lower-is-better, Increase in Confidence and Insertion AUC higher-is-better). A method *beats*
  a baseline when it is better on more metrics than it is worse; a method that does not beat the
  centre baseline is flagged.
* **ROAD**: the mean over the removal fractions of the MoRF curve (lower is better) and of the
  LeRF curve (higher is better), and their gap LeRF − MoRF (higher is better).
"""

from __future__ import annotations

import pandas as pd

from xaidash.constants import ATTRIBUTION_METHODS, FAITHFULNESS_DIRECTIONS, METHODS, SANITY_PASS_CORRELATION
from xaidash.store.read.trust_tables import beats_baseline, sanity_pass_block

#: the sanity check's pass line (one definition, in constants; the rule is the store's)
PASS_CORRELATION = SANITY_PASS_CORRELATION


def in_method_order(df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s rows sorted by their ``method`` column in :data:`METHODS` order, then the pixel
    attributions (unknown ones last), so that every trust table lists the methods as the CAM grid does."""
    order = {m: i for i, m in enumerate((*METHODS, *ATTRIBUTION_METHODS))}
    rank = df["method"].map(lambda m: order.get(m, len(order)))
    return df.assign(_o=rank).sort_values("_o").drop(columns="_o")


def sanity_verdicts(curves: pd.DataFrame) -> pd.DataFrame:
    """Per method: ``passes`` (bool), ``verdict`` (sentence), ``first_block`` (or None) and
    ``last`` (mean correlation at the last step), from ``TrustQueries.sanity_curves``."""
    rows = []
    for method, g in curves.groupby("method", sort=False):
        g = g.sort_values("step")
        first = sanity_pass_block(g)
        verdict = (f"changes completely once {first} is random: passes" if first is not None
                   else "survives randomisation: flagged")
        last = g["spearman"].dropna()
        rows.append({"method": method, "passes": first is not None, "verdict": verdict, "first_block": first,
                     "last": float(last.iloc[-1]) if len(last) else None})
    return pd.DataFrame(rows, columns=["method", "passes", "verdict", "first_block", "last"])


def baseline_margins(methods: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, baseline): the signed margin on each metric, ``better`` / ``worse``
    counts and ``beats``; from ``faithfulness_summary`` and ``TrustQueries.baseline_summary``."""
    cols = ["method", "baseline", *FAITHFULNESS_DIRECTIONS, "better", "worse", "beats"]
    rows = []
    for _, m in methods.iterrows():
        for _, b in baselines.iterrows():
            row: dict[str, object] = {"method": m["method"], "baseline": b["baseline"]}
            margins: list[float] = []
            for col, direction in FAITHFULNESS_DIRECTIONS.items():
                mv, bv = m.get(col), b.get(col)
                if pd.isna(mv) or pd.isna(bv):
                    row[col] = None
                    continue
                row[col] = direction * (float(mv) - float(bv))
                margins.append(direction * (float(mv) - float(bv)))
            row.update(better=sum(v > 0 for v in margins), worse=sum(v < 0 for v in margins),
                       beats=beats_baseline(margins))
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def road_scores(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method: ``morf`` and ``lerf`` (mean over fractions of the mean probability) and
    ``gap`` = lerf - morf, from ``TrustQueries.road_summary``."""
    if summary.empty:
        return pd.DataFrame(columns=["method", "morf", "lerf", "gap"])
    wide = summary.pivot_table(index="method", columns="order", values="probability", aggfunc="mean",
                               sort=False)
    out = pd.DataFrame({"method": wide.index,
                        "morf": wide["morf"].to_numpy() if "morf" in wide else None,
                        "lerf": wide["lerf"].to_numpy() if "lerf" in wide else None})
    out["gap"] = out["lerf"] - out["morf"]
    return out.reset_index(drop=True)
