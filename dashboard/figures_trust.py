"""Figures of the trust checks (pure builders like :mod:`xaidash.dashboard.figures`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from xaidash.constants import ATTRIBUTION_LABELS, ATTRIBUTION_METHODS, METHOD_LABELS, METHODS
from xaidash.dashboard.figures import empty_figure, new_figure
from xaidash.dashboard.theme import figure_template
from xaidash.dashboard.trust_verdicts import PASS_CORRELATION

#: One colour per method, the same in every trust figure.
METHOD_COLORS = {"cam": "#3498db", "gradcam": "#e67e22", "gradcampp": "#9b59b6", "scorecam": "#18bc9c",
                 "ig_black": "#34495e", "ig_blur": "#95a5a6", "smoothgrad": "#c0392b"}
#: the CAMs, then the pixel attributions (computed on a sample), as the tables list them
ORDER = (*METHODS, *ATTRIBUTION_METHODS)


def _label(m: str) -> str:
    return METHOD_LABELS.get(m) or ATTRIBUTION_LABELS.get(m, m)


def _ordered(methods: object) -> list[str]:
    present = [str(m) for m in pd.unique(pd.Series(methods))]
    return [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]


def plot_sanity_curves(curves: pd.DataFrame) -> go.Figure:
    """Mean Spearman correlation against randomised depth, one line per method; the pass line dashed."""
    if curves is None or curves.empty:
        return empty_figure("No sanity check in this run")
    steps = curves.drop_duplicates("step").sort_values("step")
    ticks = ["trained", *[f"+{b}" for b in steps["block"]]]
    fig = new_figure()
    for m in _ordered(curves["method"]):
        g = curves[curves["method"] == m].sort_values("step")
        fig.add_scatter(
            x=[0, *g["step"].tolist()], y=[1.0, *g["spearman"].tolist()], mode="lines+markers",
            name=_label(m), line={"color": METHOD_COLORS.get(m)},
            hovertemplate=f"{_label(m)}<br>%{{y:.2f}}<extra></extra>",
        )
    fig.add_hline(y=PASS_CORRELATION, line_dash="dash", line_color="#7b8a8b",
                  annotation_text=f"pass below {PASS_CORRELATION}", annotation_position="top right")
    fig.update_layout(
        height=320, margin={"t": 30},
        xaxis={"title": "blocks re-initialised (cumulative, from the head down)",
               "tickvals": list(range(len(ticks))), "ticktext": ticks},
        yaxis={"title": "mean Spearman ρ with the trained map", "range": [-1.05, 1.05]},
        legend={"orientation": "h", "y": 1.15, "x": 0},
    )
    return fig


def plot_road(summary: pd.DataFrame) -> go.Figure:
    """ROAD curves: probability of the predicted class against the removed fraction, MoRF and LeRF."""
    if summary is None or summary.empty:
        return empty_figure("No ROAD scores in this run")
    # short: the two titles share a half-width card (the caption under it spells them out)
    titles = ("MoRF, most relevant first (↓ better)", "LeRF, least relevant first (↑ better)")
    figure_template()  # the default template of the subplots figure
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, shared_yaxes=True)  # one scale for both
    for col, order in ((1, "morf"), (2, "lerf")):
        part = summary[summary["order"] == order]
        for m in _ordered(part["method"]):
            g = part[part["method"] == m].sort_values("fraction")
            fig.add_scatter(
                x=(100 * g["fraction"]).tolist(), y=g["probability"].tolist(), mode="lines+markers",
                name=_label(m), legendgroup=m, showlegend=col == 1,
                line={"color": METHOD_COLORS.get(m)},
                hovertemplate=f"{_label(m)} {order}<br>%{{x:.0f}} % removed: "
                              "%{y:.3f}<extra></extra>",
                row=1, col=col,
            )
        fig.update_xaxes(title_text="pixels removed (%)", row=1, col=col)
    fig.update_yaxes(title_text="probability of the predicted class", row=1, col=1)
    fig.update_layout(height=330, margin={"t": 50},
                      legend={"orientation": "h", "y": -0.25, "x": 0})
    fig.update_annotations(font_size=12)
    return fig
