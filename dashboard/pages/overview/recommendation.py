"""Overview card "Which method should I trust?": the methods in the order of the ranking rule, each
one's mean with its 95 % bootstrap CI as error bars, and one plain sentence naming the most
faithful method and the ones that cannot be told apart.

From the run's ``method_stats`` and ``method_ranking`` tables (:mod:`xaidash.store.read.ranking`),
computed by the job (:mod:`xaidash.compute.analysis.method_ranking`; the rule is in
docs/METHODS.md). A run computed before them shows the card with a note to recompute; a run without
faithfulness scores shows no card. Shared with the offline report.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import dcc, html

from xaidash.constants import method_label
from xaidash.dashboard import figures_trust
from xaidash.dashboard.components import card, df_table, empty_state

PREFIX = "overview-recommend"
METRIC_NAMES = {"road_gap": "ROAD gap", "ins_del": "Insertion − Deletion AUC"}


def _names(methods: list[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    labels = [method_label(m) for m in methods]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def _missing(v: object) -> bool:
    """None, NaN or pandas' NA (what a nullable column holds where it has no value)."""
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA


def _p(p: float | None) -> str:
    if p is None or p != p:  # None or NaN
        return "p n/a"
    v = float(p)
    return "p < 0.001" if v < 0.001 else f"p = {v:.2f}" if v >= 0.01 else f"p = {v:.3f}"


def _with_ci(single: pd.DataFrame, method: str, metric: str) -> str:
    """'0.44 ± 0.03' (mean ± half the 95 % CI's width), or the mean alone without a CI."""
    row = single[(single["method"] == method) & (single["metric"] == metric)]
    if row.empty or pd.isna(row["mean"].iloc[0]):
        return "—"
    mean, lo, hi = (row[c].iloc[0] for c in ("mean", "ci_low", "ci_high"))
    if pd.isna(lo) or pd.isna(hi):
        return f"{float(mean):.2f}"
    half = (float(hi) - float(lo)) / 2
    digits = 2 if half >= 0.005 else 3  # a narrow interval is not shown as "± 0.00"
    return f"{float(mean):.{digits}f} ± {half:.{digits}f}"


def _tie_p(tier: pd.DataFrame) -> str:
    """The p-value of a tier's members against its top: the smallest, which is the closest call,
    named by its metric where that is not the ranking's primary one."""
    tested = tier.dropna(subset=["tie_p"])
    if not len(tested):
        return "no paired test"
    row = tested.sort_values("tie_p").iloc[0]
    metric = row["tie_metric"]
    same = _missing(metric) or str(metric) == str(row["primary"])
    named = "" if same else f"{METRIC_NAMES.get(str(metric), str(metric))} "
    return named + _p(float(row["tie_p"]))


def recommendation_sentence(stats: pd.DataFrame, ranking: pd.DataFrame) -> str:
    """The card's plain sentence, e.g. "Score-CAM is the most faithful for this model (ROAD gap
    0.44 ± 0.03); Grad-CAM and Grad-CAM++ are indistinguishable (p = 0.41)."; '' without a ranking."""
    if ranking is None or ranking.empty:
        return ""
    single = stats[stats["other"].isna()] if len(stats) else stats
    order = ranking.sort_values("position")
    primary = str(order["primary"].iloc[0])
    metric = METRIC_NAMES.get(primary, primary)
    tiers = [g for _, g in order.groupby("tier", sort=True)]
    top = tiers[0]
    top_methods = [str(m) for m in top["method"]]
    values = ", ".join(_with_ci(single, m, primary) for m in top_methods)
    if int(top["level"].iloc[0]) == 0:
        if len(top_methods) == 1:
            best = method_label(top_methods[0])
            parts = [f"{best} is the most faithful for this model ({metric} {values})"]
        else:
            parts = [f"{_names(top_methods)} are the most faithful for this model and indistinguishable "
                     f"({metric} {values}; {_tie_p(top)})"]
    else:
        parts = [f"No method passes the sanity check and beats both baselines; {_names(top_methods)} "
                 f"{'comes' if len(top_methods) == 1 else 'come'} first of the rest ({metric} {values})"]
    for t in tiers[1:]:
        if len(t) > 1:
            parts.append(f"{_names([str(m) for m in t['method']])} are indistinguishable ({_tie_p(t)})")
    failed = [str(m) for m in order[order["level"] == 2]["method"]]
    below = [str(m) for m in order[order["level"] == 1]["method"]]
    if below and int(top["level"].iloc[0]) == 0:
        parts.append(f"{_names(below)} {'does' if len(below) == 1 else 'do'} not beat both baselines")
    if failed:
        parts.append(f"{_names(failed)} {'fails' if len(failed) == 1 else 'fail'} the sanity check")
    return "; ".join(parts) + "."


def _ranking_table(stats: pd.DataFrame, ranking: pd.DataFrame) -> Any:
    single = stats[stats["other"].isna()] if len(stats) else stats
    df = ranking.sort_values("position").copy()
    df["label"] = df["method"].map(lambda m: method_label(str(m)))
    for metric in ("road_gap", "ins_del"):
        df[metric] = [_with_ci(single, str(m), metric) for m in df["method"]]

    def flag(v: object) -> str:
        return "not checked" if _missing(v) else "yes" if bool(v) else "no"

    df["sanity"] = df["passes_sanity"].map(flag)
    df["baselines"] = [f"random {flag(r)}, centre {flag(c)}"
                       for r, c in zip(df["beats_random"], df["beats_centre"], strict=True)]
    cols = [("position", "#"), ("label", "Method"), ("tier", "Tier"), ("sanity", "Passes sanity"),
            ("baselines", "Beats baseline"), ("road_gap", "ROAD gap ± CI ↑"),
            ("ins_del", "Ins − Del AUC ± CI ↑"), ("reason", "Why here")]
    if not len(single) or not (single["metric"] == "road_gap").any():  # a run without ROAD
        cols = [c for c in cols if c[0] != "road_gap"]
    # the reasons are sentences: let them wrap instead of widening the table past the card
    wrap = {"whiteSpace": "normal", "minWidth": "22rem"}
    return df_table(df, cols, formats={"label": lambda v, r: html.B(v) if r.get("position") == 1 else v,
                                       "reason": lambda v, r: html.Span(str(v), style=wrap)},
                    id=f"{PREFIX}-table")


def recommendation_card(stats: pd.DataFrame, ranking: pd.DataFrame, has_faithfulness: bool = True) -> Any:
    """The card (None for a run without faithfulness scores: nothing to rank)."""
    if ranking is None or ranking.empty:
        if not has_faithfulness:
            return None
        return card("Which method should I trust?", empty_state(
            "Recompute to get the ranking",
            "This run was computed before xaidash ranked the methods with confidence intervals. Run "
            "xaidash compute again to get the methods ordered by the sanity check, the baselines, ROAD "
            "and deletion/insertion, with bootstrap confidence intervals and paired tests. Until then "
            "the faithfulness table below names the best mean rank over the four faithfulness metrics."),
            id=PREFIX)
    first = stats.iloc[0] if len(stats) else None
    resamples = int(first["resamples"]) if first is not None else 0
    seed = int(first["seed"]) if first is not None else 0
    alpha = float(ranking["alpha"].iloc[0])
    return card(
        "Which method should I trust?",
        [
            html.P(recommendation_sentence(stats, ranking), className="fs-6 fw-semibold mb-2",
                   id=f"{PREFIX}-sentence"),
            dcc.Graph(id=f"{PREFIX}-figure", figure=figures_trust.plot_method_ranking(stats, ranking),
                      config={"displayModeBar": False}),
            _ranking_table(stats, ranking),
            html.P(
                "Rule: a method must first pass the sanity check (its map changes once the model's "
                "blocks are randomised), then beat both trivial baselines (random and centre maps, on "
                "more faithfulness metrics than not); within those gates methods are ordered by the ROAD "
                "gap (LeRF − MoRF), then by Insertion − Deletion AUC. Methods whose paired test against "
                f"the best of their tier gives p ≥ {alpha:g} share the tier: they are indistinguishable, "
                f"not ordered by noise. Error bars: 95 % percentile bootstrap over images ({resamples} "
                f"resamples, seed {seed}); pairs are tested on the images both methods have "
                "(docs/METHODS.md, \"Which method should I trust?\").",
                className="small text-muted mt-2 mb-0",
            ),
        ],
        id=PREFIX,
    )


def ranked_best(ranking: pd.DataFrame) -> str | None:
    """The first method of the ranking when it passes both gates (None otherwise or without one)."""
    if ranking is None or ranking.empty:
        return None
    top = ranking.sort_values("position").iloc[0]
    return str(top["method"]) if int(top["level"]) == 0 else None
