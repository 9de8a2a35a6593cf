"""Overview section "Can the confidence be believed? How well does it rank?": the reliability
diagram with ECE / MCE, top-k accuracy, and per-class one-vs-rest ROC and precision-recall curves
with their AUC and average precision.

From the run's calibration and ranking tables (:mod:`xaidash.store.read.ranking`); a run without
them (computed before they existed, or unlabeled) shows no section. The figure builders are pure
(DataFrame in, Figure out) and shared with the offline report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import dcc, html

from xaidash.dashboard.components import card, df_table, fmt_num, fmt_pct, stat
from xaidash.dashboard.figures import new_figure
from xaidash.dashboard.theme import COLOR_PRIMARY, COLOR_WRONG
from xaidash.store.read.ranking import RankingQueries

PREFIX = "overview-ranking"
#: Curves drawn per figure; with more classes the ones ranking worst are drawn (all are in the table).
MAX_CURVES = 10
MAX_TABLE_ROWS = 200
CURVE_TITLES = {"roc": ("false positive rate", "true positive rate"), "pr": ("recall", "precision")}


def plot_reliability(bins: pd.DataFrame) -> go.Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration; bar width = bin."""
    fig = new_figure()
    filled = bins[bins["count"] > 0]
    centre = (filled["lower"].to_numpy(float) + filled["upper"].to_numpy(float)) / 2
    width = filled["upper"].to_numpy(float) - filled["lower"].to_numpy(float)
    fig.add_bar(
        x=centre,
        y=filled["accuracy"],
        width=width,
        name="accuracy",
        marker_color=COLOR_PRIMARY,
        opacity=0.8,
        customdata=np.stack([filled["count"], filled["confidence"]], 1),
        hovertemplate="confidence %{customdata[1]:.3f}<br>accuracy %{y:.3f}<br>"
        "%{customdata[0]} images<extra></extra>",
    )
    fig.add_bar(
        x=centre,
        y=(filled["confidence"] - filled["accuracy"]).clip(lower=0),
        base=filled["accuracy"],
        width=width,
        name="overconfidence",
        marker_color=COLOR_WRONG,
        opacity=0.35,
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        name="perfect calibration",
        line={"dash": "dash", "color": "#7b8a8b"},
        hoverinfo="skip",
    )
    fig.update_layout(
                height=320,
        barmode="overlay",
        margin={"t": 30},
        xaxis={"title": "confidence (top-1 probability)", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1]},
        legend={"orientation": "h", "y": 1.15, "x": 0},
    )
    return fig


def worst_classes(per_class: pd.DataFrame, key: str, n: int = MAX_CURVES) -> list[int]:
    """The ``n`` classes with the lowest ``key`` (undefined last), in class order."""
    ranked = per_class.assign(_k=per_class[key].astype(float).fillna(np.inf)).sort_values(["_k", "class"])
    return sorted(int(c) for c in ranked["class"].head(n))


def plot_curves(
    curves: pd.DataFrame, per_class: pd.DataFrame, class_names: Sequence[str], curve: str
) -> go.Figure:
    """One ROC (``curve="roc"``) or PR (``"pr"``) line per class, its AUC / AP in the legend; with
    more than :data:`MAX_CURVES` classes, those with the lowest AUC / AP."""
    key = "roc_auc" if curve == "roc" else "average_precision"
    score_of = dict(zip(per_class["class"].astype(int), per_class[key], strict=True))
    show = worst_classes(per_class, key)
    fig = new_figure()
    part = curves[curves["curve"] == curve]
    for c in show:
        g = part[part["class"] == c].sort_values("point")
        name = class_names[c] if c < len(class_names) else str(c)
        fig.add_scatter(
            x=g["x"],
            y=g["y"],
            mode="lines",
            name=f"{name} ({fmt_num(score_of.get(c))})",
            line={"shape": "hv" if curve == "pr" else "linear"},
            hovertemplate=f"{name}<br>%{{x:.3f}}, %{{y:.3f}}<extra></extra>",
        )
    if curve == "roc":
        fig.add_scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="chance",
            hoverinfo="skip",
            line={"dash": "dash", "color": "#7b8a8b"},
        )
    x_title, y_title = CURVE_TITLES[curve]
    fig.update_layout(
                height=340,
        margin={"t": 30},
        xaxis={"title": x_title, "range": [0, 1]},
        yaxis={"title": y_title, "range": [0, 1.02]},
        legend={"font": {"size": 10}},
    )
    return fig


def score_cards(scores: dict[str, float | None]) -> dbc.Row:
    """ECE, MCE, top-k and the macro AUC / AP as headline numbers."""
    cards = [
        stat("ECE", fmt_pct(scores.get("ece"), 2), "expected calibration error ↓"),
        stat("MCE", fmt_pct(scores.get("mce"), 2), "worst bin's gap ↓"),
        *(
            stat(f"Top-{k} accuracy", fmt_pct(scores.get(f"top{k}_accuracy")))
            for k in (1, 3, 5)
            if scores.get(f"top{k}_accuracy") is not None
        ),
        stat("Macro ROC AUC", fmt_num(scores.get("macro_roc_auc")), "one-vs-rest, mean over classes"),
        stat("Macro AP", fmt_num(scores.get("macro_average_precision")), "average precision"),
    ]
    return dbc.Row(
        [dbc.Col(c, xs=6, md=3, lg=True, className="mb-3") for c in cards],
        className="g-3",
        id=f"{PREFIX}-scores",
    )


def class_ranking_table(per_class: pd.DataFrame) -> Any:
    """Per class: positives, ROC AUC and AP (the lowest AUC first when there are many classes)."""
    df = per_class.sort_values("roc_auc") if len(per_class) > MAX_TABLE_ROWS else per_class
    return df_table(
        df,
        [
            ("class_name", "Class"),
            ("positives", "Images"),
            ("roc_auc", "ROC AUC"),
            ("average_precision", "Average precision"),
        ],
        formats={
            "roc_auc": lambda v, r: fmt_num(v),
            "average_precision": lambda v, r: fmt_num(v),
            "positives": lambda v, r: f"{int(v):,}",
        },
        max_rows=MAX_TABLE_ROWS,
        className="xd-scroll",
        id=f"{PREFIX}-class-table",
    )


def ranking_section(ranking: RankingQueries, run_id: str, class_names: Sequence[str]) -> Any:
    """The section, or None for a run without the tables."""
    scores = ranking.scores(run_id)
    if not scores:
        return None
    bins = ranking.calibration(run_id)
    per_class = ranking.class_ranking(run_id)
    curves = ranking.curves(run_id)
    n_bins = int(bins["bins"].iloc[0]) if len(bins) else 0
    many = len(per_class) > MAX_CURVES
    return card(
        "Calibration and ranking: can the confidence be believed?",
        [
            score_cards(scores),
            dbc.Row(
                [
                    dbc.Col(
                        [
                            dcc.Graph(
                                id=f"{PREFIX}-reliability",
                                figure=plot_reliability(bins),
                                config={"displayModeBar": False},
                            ),
                            html.P(
                                f"Reliability diagram over {n_bins} equal-width confidence bins. ECE = Σ "
                                "(images in bin / all) × |accuracy − mean confidence|, MCE = the largest "
                                "gap (Guo et al. 2017). Red: the model is more confident than right.",
                                className="small text-muted",
                            ),
                        ],
                        lg=4,
                    ),
                    dbc.Col(
                        dcc.Graph(
                            id=f"{PREFIX}-roc",
                            figure=plot_curves(curves, per_class, class_names, "roc"),
                            config={"displayModeBar": False},
                        ),
                        lg=4,
                    ),
                    dbc.Col(
                        dcc.Graph(
                            id=f"{PREFIX}-pr",
                            figure=plot_curves(curves, per_class, class_names, "pr"),
                            config={"displayModeBar": False},
                        ),
                        lg=4,
                    ),
                ],
                className="g-3",
            ),
            html.P(
                "One-vs-rest ROC and precision-recall curves of each class's probability, its ROC AUC / "
                "average precision in the legend"
                + (
                    f"; the {MAX_CURVES} classes ranking worst are drawn, all are in the table."
                    if many
                    else "."
                ),
                className="small text-muted",
            ),
            class_ranking_table(per_class),
        ],
        id=PREFIX,
    )
