"""Figures of the trust checks (pure builders like :mod:`xaidash.dashboard.figures`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from xaidash.constants import ATTRIBUTION_METHODS, METHODS, method_label
from xaidash.dashboard.figures import empty_figure, new_figure
from xaidash.dashboard.theme import figure_template
from xaidash.dashboard.trust_verdicts import PASS_CORRELATION

#: One colour per method, the same in every trust figure.
#: one colour per method in every trust figure (plotly's default cycle would reuse the classic
#: four's colours for the others, making two methods look alike)
METHOD_COLORS = {"cam": "#3498db", "gradcam": "#e67e22", "gradcampp": "#9b59b6", "scorecam": "#18bc9c",
                 "layercam": "#e74c3c", "xgradcam": "#f1c40f", "hirescam": "#34495e", "eigencam": "#95a5a6",
                 "ig_black": "#8e6c4a", "ig_blur": "#d35400", "smoothgrad": "#16a085"}
#: the CAMs, then the pixel attributions (computed on a sample), as the tables list them
ORDER = (*METHODS, *ATTRIBUTION_METHODS)


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
            name=method_label(m), line={"color": METHOD_COLORS.get(m)},
            hovertemplate=f"{method_label(m)}<br>%{{y:.2f}}<extra></extra>",
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
                name=method_label(m), legendgroup=m, showlegend=col == 1,
                line={"color": METHOD_COLORS.get(m)},
                hovertemplate=f"{method_label(m)} {order}<br>%{{x:.0f}} % removed: "
                              "%{y:.3f}<extra></extra>",
                row=1, col=col,
            )
        fig.update_xaxes(title_text="pixels removed (%)", row=1, col=col)
    fig.update_yaxes(title_text="probability of the predicted class", row=1, col=1)
    fig.update_layout(height=330, margin={"t": 50},
                      legend={"orientation": "h", "y": -0.25, "x": 0})
    fig.update_annotations(font_size=12)
    return fig


#: Marker colour of each gate of the method ranking (level 0, 1, 2) and its legend entry.
LEVEL_STYLE = {0: ("#18bc9c", "passes sanity, beats both baselines"),
               1: ("#f39c12", "passes sanity, not both baselines"),
               2: ("#e74c3c", "fails the sanity check")}
RANKING_PANELS = {"road_gap": "ROAD gap: LeRF − MoRF (↑ better)",
                  "ins_del": "Insertion − Deletion AUC (↑ better)"}


def plot_method_ranking(stats: pd.DataFrame, ranking: pd.DataFrame) -> go.Figure:
    """The methods in the ranking rule's order with each one's mean and 95 % bootstrap CI as an
    error bar, one panel per ranking metric (ROAD gap, then Insertion − Deletion AUC, whichever
    the run has), coloured by gate; tiers of indistinguishable methods are labelled under the axis;
    the two baselines' Insertion − Deletion AUC are dotted lines."""
    if ranking is None or ranking.empty:
        return empty_figure("No method ranking in this run")
    single = stats[stats["other"].isna()] if len(stats) else stats
    panels = [m for m in RANKING_PANELS if len(single) and (single["metric"] == m).any()]
    if not panels:
        return empty_figure("No ranking metric in this run")
    order = ranking.sort_values("position")
    names = [f"{method_label(m)}<br><sub>tier {t}</sub>"
             for m, t in zip(order["method"], order["tier"], strict=True)]
    figure_template()
    # one panel above the other: side by side, eleven methods' names and tiers overlap
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[RANKING_PANELS[p] for p in panels],
                        vertical_spacing=0.22 if len(panels) > 1 else 0.1)
    for row, metric in enumerate(panels, start=1):
        vals = single[single["metric"] == metric].set_index("method")
        for level, (color, label) in LEVEL_STYLE.items():
            part = order[order["level"] == level]
            part = part[part["method"].isin(vals.index)]
            if part.empty:
                continue
            v = vals.loc[part["method"]]
            mean, lo, hi = (v[c].astype(float).to_numpy() for c in ("mean", "ci_low", "ci_high"))
            fig.add_scatter(
                x=[names[i] for i in (part["position"] - 1)], y=mean, mode="markers", name=label,
                legendgroup=str(level), showlegend=row == 1, marker={"color": color, "size": 10},
                error_y={"type": "data", "symmetric": False, "array": hi - mean, "arrayminus": mean - lo,
                         "color": color, "thickness": 1.5, "width": 6},
                customdata=list(zip(lo, hi, v["n"], strict=True)),
                hovertemplate="%{x}<br>%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                              "<br>%{customdata[2]} images<extra></extra>",
                row=row, col=1,
            )
        if metric == "ins_del":
            # labels on opposite sides of their lines: the two baselines often lie close together
            for b, dash, where in (("random", "dot", "top right"), ("centre", "dash", "bottom right")):
                level_b = pd.to_numeric(vals["mean"], errors="coerce").get(b)
                if level_b is not None and pd.notna(level_b):
                    fig.add_hline(y=float(level_b), line_dash=dash, line_color="#7b8a8b",
                                  annotation_text=f"{b} map", annotation_position=where,
                                  row=row, col=1)
        fig.update_xaxes(categoryorder="array", categoryarray=names, row=row, col=1)
    fig.update_layout(height=300 * len(panels) + 60, margin={"t": 50, "b": 40},
                      legend={"orientation": "h", "y": 1.0, "x": 1.0, "xanchor": "right",
                              "yanchor": "bottom"})
    fig.update_annotations(font_size=12)
    return fig
