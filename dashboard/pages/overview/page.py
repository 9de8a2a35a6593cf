"""Overview page: headline numbers, per-class metrics, confusion matrix, confidence histogram,
faithfulness per method. Clicking a confusion cell opens the gallery on that (true, pred) pair.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, dcc, html, no_update
from dash.development.base_component import Component

from xaidash.constants import method_label
from xaidash.dashboard import figures, inputs
from xaidash.dashboard.components import (
    card,
    df_table,
    empty_state,
    fmt_num,
    fmt_pct,
    stat,
    warning_alert,
)
from xaidash.dashboard.data import most_faithful
from xaidash.dashboard.pages.overview import trust as overview_trust
from xaidash.dashboard.pages.overview.quality import accuracy_without_leaks, quality_card
from xaidash.dashboard.pages.overview.ranking import ranking_section
from xaidash.dashboard.pages.overview.recommendation import ranked_best, recommendation_card
from xaidash.dashboard.params import MAX_CLASS, Filters, changed_query, gallery_href, parse_query
from xaidash.dashboard.paths import spec_label
from xaidash.dashboard.report.buttons import report_button
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url

if TYPE_CHECKING:
    from xaidash.store import RunInfo

PREFIX = "overview"
MAX_CLASS_ROWS = 200


def headline_cards(h: dict[str, Any], f: Filters, labeled: bool, without_leaks: str | None = None) -> dbc.Row:
    """The row of headline numbers (``without_leaks``: the accuracy without leaked images)."""
    errors = h.get("errors")
    failed = h.get("failed") or 0
    cards = [stat("Images", f"{int(h.get('n') or 0):,}", "validation predictions")]
    if labeled:
        cards += [
            stat("Accuracy", fmt_pct(h.get("accuracy")), without_leaks),
            stat("Macro precision", fmt_pct(h.get("macro_precision"))),
            stat("Macro recall", fmt_pct(h.get("macro_recall"))),
            stat("Macro F1", fmt_pct(h.get("macro_f1")), f"weighted {fmt_pct(h.get('weighted_f1'))}"),
            stat(
                "Errors",
                f"{int(errors or 0):,}",
                "open in the gallery →",
                href=gallery_href(f, outcome="wrong", sort="confidence", desc=True),
                color="text-danger" if errors else "",
            ),
        ]
    cards.append(
        stat(
            "Failed images", f"{int(failed):,}", "could not be loaded", color="text-warning" if failed else ""
        )
    )
    return dbc.Row([dbc.Col(c, xs=6, md=4, lg=True, className="mb-3") for c in cards], className="g-3")


def run_summary(info: RunInfo, show_paths: bool = False) -> html.Div:
    """One line describing the run: dataset, model, methods, device, date."""
    parts: list[str | Component] = [
        html.Span(spec_label(info.dataset_spec or "dataset", show_paths), className="fw-semibold"),
        f" · model {spec_label(info.arch or '?', show_paths)}",
        f" · layer {info.target_layer or '?'}",
        f" · methods {', '.join(method_label(m) for m in info.methods)}",
        f" · {info.device or ''}",
        f" · {info.created.strftime('%Y-%m-%d %H:%M UTC')}",
        html.Span(f" · run {info.run_id}", className="text-muted"),
    ]
    return html.Div(parts, className="mb-3 small xd-run-summary")


def faithfulness_block(summary: pd.DataFrame, cost_ms: dict[str, float] | None = None,
                       ranking: pd.DataFrame | None = None) -> list[Any]:
    """Faithfulness table per method plus the sentence naming the most faithful one.

    ``cost_ms`` is each method's measured cost per image when computed alone (the run's
    ``timings_json["method_ms_per_image"]``): seed 004's comparison table, measured. With the run's
    ``method_ranking`` the sentence names the ranking's choice ("Which method should I trust?");
    without it (a run computed before it) the best mean rank over the four metrics, as before.
    """
    if summary is None or len(summary) == 0:
        return [
            empty_state(
                "No faithfulness scores in this run",
                "This run was computed without the faithfulness pass. Re-run xaidash compute with "
                "faithfulness enabled to compare how well each method's map explains the prediction.",
            )
        ]
    best, ranked = most_faithful(summary)
    ranked = ranked.copy()
    ranked["label"] = ranked["method"].map(method_label)
    ranked["cost_ms"] = ranked["method"].map(lambda m: (cost_ms or {}).get(m))
    table = df_table(
        ranked.sort_values("mean_rank") if "mean_rank" in ranked else ranked,
        [
            ("label", "Method"),
            ("drop", "Average Drop % ↓"),
            ("increase", "Increase in Confidence % ↑"),
            ("deletion_auc", "Deletion AUC ↓"),
            ("insertion_auc", "Insertion AUC ↑"),
            ("mean_rank", "Mean rank"),
            ("cost_ms", "Cost ms/image"),
            ("n", "Images"),
        ],
        formats={
            "drop": lambda v, r: fmt_pct(v),
            "increase": lambda v, r: fmt_pct(v),
            "deletion_auc": lambda v, r: fmt_num(v),
            "insertion_auc": lambda v, r: fmt_num(v),
            "mean_rank": lambda v, r: fmt_num(v, 2),
            "cost_ms": lambda v, r: fmt_num(v, 1),
            "label": lambda v, r: html.B(v) if r.get("method") == best else v,
        },
        id=f"{PREFIX}-faithfulness-table",
    )
    sampled_note = ([" Methods scored on a sample of the images (the pixel attributions, Images column) are "
                     "listed without a rank: their means are over other images."]
                    if "mean_rank" in ranked and ranked["mean_rank"].isna().any() else [])
    if ranking is not None and len(ranking):
        chosen = ranked_best(ranking)
        words: list[Any] = [
            "Most faithful for this model: ",
            html.B(method_label(chosen) if chosen else "none passes both gates"),
            ", by the ranking rule of \"Which method should I trust?\" (sanity check, baselines, ROAD, "
            "deletion/insertion, with confidence intervals). On the four metrics of this table alone the "
            f"best mean rank is {method_label(best) if best else '—'}. Cost is each method computed alone "
            "on this run's device; in a run CAM, Grad-CAM and Grad-CAM++ share one forward and one "
            "backward pass.",
            *sampled_note,
        ]
        return [table, html.P(words, className="small mt-2 mb-0", id=f"{PREFIX}-faithful-sentence")]
    sentence = html.P(
        [
            "Most faithful for this model: ",
            html.B(method_label(best) if best else "—"),
            ". Rule: each of the four metrics ranks the methods (lowest Average Drop, highest "
            "Increase in Confidence, lowest Deletion AUC, highest Insertion AUC rank first); the "
            "best mean rank wins, ties broken by Insertion − Deletion AUC. Cost is each method "
            "computed alone on this run's device; in a run CAM, Grad-CAM and Grad-CAM++ share "
            "one forward and one backward pass.",
            *sampled_note,
        ],
        className="small mt-2 mb-0",
        id=f"{PREFIX}-faithful-sentence",
    )
    return [table, sentence]


def _method_cost(info: RunInfo) -> dict[str, float]:
    cost = info.timings.get("method_ms_per_image")
    return {str(k): float(v) for k, v in cost.items()} if isinstance(cost, dict) else {}


def class_table(metrics: pd.DataFrame, f: Filters) -> Any:
    """Per-class P/R/F1/support; the class name links to the gallery of that true class."""
    if metrics is None or len(metrics) == 0:
        return html.P("No per-class metrics.", className="text-muted")
    df = metrics.sort_values("f1") if len(metrics) > MAX_CLASS_ROWS else metrics
    note = (
        html.P(
            f"Showing the {MAX_CLASS_ROWS} classes with the lowest F1 of {len(metrics)}.", className="small"
        )
        if len(metrics) > MAX_CLASS_ROWS
        else None
    )
    table = df_table(
        df,
        [
            ("class_name", "Class"),
            ("precision", "Precision"),
            ("recall", "Recall"),
            ("f1", "F1"),
            ("support", "Support"),
        ],
        formats={
            "class_name": lambda v, r: dcc.Link(
                str(v), href=gallery_href(f, true=int(r["class"]), outcome="all")
            ),
            "precision": lambda v, r: fmt_pct(v),
            "recall": lambda v, r: fmt_pct(v),
            "f1": lambda v, r: fmt_pct(v),
            "support": lambda v, r: f"{int(v):,}",
        },
        max_rows=MAX_CLASS_ROWS,
        className="xd-scroll",
        id=f"{PREFIX}-class-table",
    )
    return [note, table]


def failures_block(failures: pd.DataFrame) -> Any:
    """Images the compute job could not load, with the reason."""
    return df_table(failures, [("source", "Source"), ("split", "Split"), ("reason", "Reason")], max_rows=100)


def layout(ctx: PageContext) -> Any:
    """Render the overview of the run in ``ctx`` (plain function, unit-tested)."""
    data, info, f = ctx.data, ctx.info, ctx.filters
    run_id = info.run_id
    h = data.headline(run_id)
    labeled = info.labeled and h.get("accuracy") is not None
    quality = ctx.data.quality.quality_summary(run_id)
    children: list[Any] = [
        warning_alert(ctx.warning),
        html.Div([run_summary(info, ctx.state.show_paths), report_button()],
                 className="d-flex justify-content-between align-items-start gap-2 flex-wrap"),
        headline_cards(h, f, labeled, accuracy_without_leaks(quality)),
    ]
    if info.scorecam_note:
        children.append(
            dbc.Alert(f"Score-CAM note: {info.scorecam_note}", color="secondary", className="py-2 small")
        )
    if info.precision_note:
        children.append(
            dbc.Alert(f"Precision: {info.precision_note}", color="secondary", className="py-2 small",
                      id="overview-precision")
        )

    if not labeled:
        children.append(
            empty_state(
                "Unlabeled run: no accuracy, confusion matrix or per-class metrics",
                "This dataset has no labels (e.g. a folder: dataset), so correctness cannot be measured. "
                "The gallery, the embedding map and each image page still show predictions, confidence "
                "and the four class-activation maps.",
            )
        )
    else:
        conf_fig = figures.plot_confusion(data.confusion(run_id), info.class_names, normalize=f.norm)
        toggle = dbc.RadioItems(
            id=f"{PREFIX}-norm",
            options=[{"label": "counts", "value": "counts"}, {"label": "row-normalized", "value": "norm"}],
            value="norm" if f.norm else "counts",
            inline=True,
            className="small",
        )
        conf_card = card(
            "Confusion matrix",
            [
                dcc.Graph(id=f"{PREFIX}-confusion", figure=conf_fig, config={"displayModeBar": False}),
                html.P(
                    "Click a cell to open those images in the gallery"
                    + (" (with their error clusters, when the cell has enough errors)." if quality else "."),
                    className="small text-muted mb-0",
                ),
            ],
            header_right=toggle,
        )
        hist_card = card(
            "Confidence: correct vs wrong",
            dcc.Graph(
                id=f"{PREFIX}-confidence",
                figure=figures.plot_confidence_histogram(data.confidence_histogram(run_id)),
                config={"displayModeBar": False},
            ),
        )
        children.append(
            dbc.Row(
                [
                    dbc.Col(conf_card, lg=7),
                    dbc.Col(
                        [hist_card, card("Per-class metrics", class_table(data.class_metrics(run_id), f))],
                        lg=5,
                    ),
                ]
            )
        )
        # built once per run (runs are immutable): three figures of up to 10 curves cost ~100 ms
        children.append(ctx.state.derived.get(
            ("overview-ranking", run_id),
            lambda: ranking_section(data.reader.ranking, run_id, info.class_names)))
    children.append(quality_card(ctx, info, f, quality))
    summary = data.faithfulness_summary(run_id)
    method_ranking = data.reader.ranking.method_ranking(run_id)
    # built once per run (runs are immutable): the figure and the table cost tens of ms
    children.append(ctx.state.derived.get(
        ("overview-recommend", run_id),
        lambda: recommendation_card(data.reader.ranking.method_stats(run_id), method_ranking,
                                    len(summary) > 0)))
    children.append(
        card(
            "Faithfulness and cost of each explanation method",
            [*faithfulness_block(summary, _method_cost(info), method_ranking),
             overview_trust.trust_cost(info)],
        )
    )
    children.extend(overview_trust.trust_sections(ctx))
    failed = int(h.get("failed") or 0)
    if failed:
        children.append(card(f"Images that failed to load ({failed})", failures_block(data.failures(run_id))))
    return html.Div([c for c in children if c is not None], id=f"{PREFIX}-page")


def confusion_click_target(
    click: object, search: object, class_names: list[str] | None = None
) -> str | None:
    """The gallery URL (path + query) for a click on a confusion cell, or None.

    Plotly's heatmap click events carry the cell's x/y labels (not its customdata), so the
    class names of the run map them back to indices; customdata is used when present. Anything
    that is not a cell of this run's matrix gives None.
    """
    point = inputs.first_point(click)
    if point is None:
        return None
    names = [str(n) for n in (class_names or [])]
    cd = point.get("customdata")
    if isinstance(cd, dict):  # a typed array serialised as {"0": .., "1": ..}
        cd = [cd.get("0"), cd.get("1")]
    if isinstance(cd, list) and len(cd) >= 2:
        true, pred = _class_index(cd[0], len(names)), _class_index(cd[1], len(names))
    else:
        x, y = point.get("x"), point.get("y")
        true = names.index(y) if isinstance(y, str) and y in names else None
        pred = names.index(x) if isinstance(x, str) and x in names else None
    if true is None or pred is None:
        return None
    f = parse_query(search)
    return gallery_href(f, true=true, pred=pred, outcome="all", sort="confidence", desc=True)


def _class_index(value: object, n_classes: int) -> int | None:
    """A class index from a click's customdata: an integral number in [0, n_classes) (any when unknown)."""
    f = inputs.finite(value)
    if f is None or not f.is_integer() or f < 0 or (n_classes and f >= n_classes) or f > MAX_CLASS:
        return None
    return int(f)


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Thin wrappers: confusion click -> gallery URL; normalize toggle -> URL."""

    @app.callback(
        Output("url", "href", allow_duplicate=True),
        Input(f"{PREFIX}-confusion", "clickData"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.record(), inputs.URL_PART)
    def open_cell(click: dict[str, Any] | None, search: str | None) -> Any:
        info = state.data.resolve_run(parse_query(search).run).info
        target = confusion_click_target(click, search, info.class_names if info else [])
        return no_update if target is None else target

    def toggle_norm(search: str | None, _trigger: object, value: str | None) -> str | None:
        f = parse_query(search)
        return changed_query(f, replace(f, norm=value == "norm"))

    controls_to_url(app, [(f"{PREFIX}-norm", "value", inputs.text())], toggle_norm)
