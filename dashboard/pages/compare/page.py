"""Compare runs: two runs of the same dataset, image by image.

Metric deltas, per-class F1, the confusion-matrix delta, and the images that went
right -> wrong ("broke") and wrong -> right ("fixed") with both runs' maps of each picked method
side by side.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html

from xaidash.constants import method_label
from xaidash.dashboard import figures, inputs
from xaidash.dashboard.components import (
    available_methods,
    canonical_order,
    card,
    empty_state,
    fmt_count,
    fmt_pct,
    method_picker,
    missing_map,
    missing_maps,
    overlay_img,
    picked_from_control,
    picked_methods,
    run_label,
    thumb_img,
    warning_alert,
)
from xaidash.dashboard.pages.compare.quality import overlap_card
from xaidash.dashboard.params import CHANGES, MAX_PAGE, Filters, changed_query, image_href, parse_query
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url

if TYPE_CHECKING:
    from xaidash.store import RunInfo

PREFIX = "compare"
FLIPS_PER_PAGE = 12
KEYS = ("run", "a", "b", "change", "methods", "page", "cmap", "alpha")
METRIC_LABELS = {
    "n": ("Images", False),
    "accuracy": ("Accuracy", True),
    "macro_precision": ("Macro precision", True),
    "macro_recall": ("Macro recall", True),
    "macro_f1": ("Macro F1", True),
    "weighted_f1": ("Weighted F1", True),
    "errors": ("Errors", False),
    "failed": ("Failed images", False),
}
LOWER_IS_BETTER = {"errors", "failed"}


def pick_pair(ctx: PageContext) -> tuple[str | None, RunInfo, pd.DataFrame, str | None]:
    """Runs A (before) and B (after): from the URL when valid, else the two newest comparable.

    B is the page's run when the URL names no (existing) run B.
    """
    f = ctx.filters
    info_b = (ctx.data.run(f.b) if f.b else None) or ctx.info
    run_b = info_b.run_id
    comparable = ctx.data.comparable_runs(info_b)
    ids = [str(r) for r in comparable["run_id"]] if len(comparable) else []
    warning = None
    if f.a and f.a in ids and f.a != run_b:
        run_a: str | None = f.a
    else:
        if f.a and f.a not in ids:
            warning = f"Run {f.a!r} is not a run of the same dataset as {run_b}; picked the previous one."
        older = [r for r in ids if r != run_b]
        run_a = older[0] if older else None
    return run_a, info_b, comparable, warning


def metrics_table(metrics: pd.DataFrame) -> Any:
    """metric, a, b, delta with the direction made explicit (green = better)."""
    rows = []
    for rec in metrics.to_dict("records"):
        key = str(rec["metric"])
        label, pct = METRIC_LABELS.get(key, (key, False))
        d = rec.get("delta")
        fmt = fmt_pct if pct else fmt_count
        if d is None or pd.isna(d) or d == 0:
            delta_cell: Any = html.Span("±0" if d == 0 else "—", className="text-muted")
        else:
            better = (d < 0) if key in LOWER_IS_BETTER else (d > 0)
            text = f"{100 * d:+.1f} pp" if pct else f"{int(d):+,}"
            delta_cell = html.Span(
                text, className="text-success fw-semibold" if better else "text-danger fw-semibold"
            )
        rows.append(
            html.Tr(
                [html.Td(label), html.Td(fmt(rec.get("a"))), html.Td(fmt(rec.get("b"))), html.Td(delta_cell)]
            )
        )
    return dbc.Table(
        [
            html.Thead(html.Tr([html.Th("Metric"), html.Th("Run A"), html.Th("Run B"), html.Th("B − A")])),
            html.Tbody(rows),
        ],
        size="sm",
        striped=True,
        className="xd-table mb-0",
        id=f"{PREFIX}-metrics",
    )


def flip_rows(
    runs: tuple[RunInfo, RunInfo],
    flips: pd.DataFrame,
    f: Filters,
    class_names: list[str],
    methods: list[str],
    missing: tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]],
) -> Any:
    """Each flipped image: thumbnail, then run A's and run B's map of each picked method
    (``missing``: per run, image_id -> the methods with no map of it there)."""
    run_b = runs[1].run_id
    items = []
    for rec in flips.to_dict("records"):
        iid = str(rec["image_id"])

        def name(c: Any) -> str:
            return (
                class_names[int(c)]
                if c is not None and not pd.isna(c) and 0 <= int(c) < len(class_names)
                else "—"
            )

        def cell(ab: str, run: str, gone: frozenset[str], m: str, iid: str = iid) -> html.Div:
            if m in gone:
                return html.Div(missing_map(f"not computed in run {ab}", "xd-cell-missing"),
                                className="xd-cell")
            img = overlay_img(run, iid, m, f, title=f"run {ab} {method_label(m)}")
            return html.Div(dcc.Link(img, href=image_href(run, iid, f)), className="xd-cell")

        maps = [
            cell(ab, info.run_id, gone.get(iid, frozenset()), m)
            for m in methods
            for ab, info, gone in (("A", runs[0], missing[0]), ("B", runs[1], missing[1]))
        ]
        items.append(
            html.Div(
                [
                    html.Div(
                        [
                            html.Div(["true ", html.B(str(rec.get("label_name") or "—"))], className="small"),
                            html.Div(
                                f"A: {name(rec['pred_a'])} ({fmt_pct(rec.get('conf_a'))})", className="small"
                            ),
                            html.Div(
                                f"B: {name(rec['pred_b'])} ({fmt_pct(rec.get('conf_b'))})", className="small"
                            ),
                        ],
                        className="xd-row-meta",
                    ),
                    html.Div(
                        [
                            html.Div(
                                dcc.Link(thumb_img(run_b, iid), href=image_href(run_b, iid, f)),
                                className="xd-cell",
                            ),
                            *maps,
                        ],
                        className="xd-row-images",
                    ),
                ],
                className="xd-row xd-flip " + ("xd-row-wrong" if rec.get("change") == "broke" else ""),
            )
        )
    heads = html.Div(
        [
            html.Div("", className="xd-row-meta"),
            html.Div(
                [
                    html.Div("image", className="xd-cell-head"),
                    *(
                        html.Div(f"{ab} · {method_label(m)}", className="xd-cell-head")
                        for m in methods
                        for ab in ("A", "B")
                    ),
                ],
                className="xd-row-images",
            ),
        ],
        className="xd-row xd-row-head",
    )
    note = [] if methods else [
        html.P("No method picked: pick some under Methods to see both runs' maps.",
               className="text-muted small")
    ]
    return html.Div([*note, heads, *items], id=f"{PREFIX}-flips")


def layout(ctx: PageContext) -> Any:
    """Render the comparison (plain function, unit-tested)."""
    run_a, info_b, comparable, warning = pick_pair(ctx)
    run_b = info_b.run_id
    f = replace(ctx.filters, a=run_a, b=run_b)
    info_a = ctx.data.run(run_a) if run_a is not None else None
    # the methods of either run (a retrain may have computed more); each run shows what it has
    available = canonical_order([
        m for info in (info_a, info_b) if info is not None
        for m in available_methods(info, ctx.data.map_methods(info.run_id))
    ])
    methods = picked_methods(f, available)
    options = [
        {"label": run_label(rec, ctx.state.show_paths), "value": str(rec["run_id"])}
        for rec in comparable.to_dict("records")
    ]
    pickers = dbc.Row(
        [
            dbc.Col(
                [
                    dbc.Label("Run A (before)", className="small mb-0"),
                    dcc.Dropdown(id=f"{PREFIX}-a", options=options, value=run_a, clearable=False),
                ],
                md=4,
            ),
            dbc.Col(
                [
                    dbc.Label("Run B (after)", className="small mb-0"),
                    dcc.Dropdown(id=f"{PREFIX}-b", options=options, value=run_b, clearable=False),
                ],
                md=4,
            ),
            dbc.Col(
                [
                    method_picker(PREFIX, available, methods),
                ],
                md=4,
            ),
        ],
        className="mb-3",
    )
    head: list[Any] = [warning_alert(ctx.warning), warning_alert(warning), card("Runs", pickers)]
    if run_a is None or info_a is None:
        return html.Div(
            [
                *head,
                empty_state(
                    "Only one run of this dataset",
                    "Comparing needs two runs over the same data. Retrain (or change the model) and run "
                    "xaidash compute again with the same --data; the new run appears here.",
                ),
            ],
            id=f"{PREFIX}-page",
        )
    diff = ctx.data.diff(run_a, run_b)
    names = info_b.class_names
    flips = diff.flips
    counts = flips["change"].value_counts().to_dict() if len(flips) else {}
    # Unless the link chose a group, open the first one that has images: after a retrain that
    # only fixed errors, "right -> wrong (0)" is not what the reviewer came to see.
    change = f.change or next((c for c in CHANGES if counts.get(c)), CHANGES[0])
    part = flips[flips["change"] == change] if len(flips) else flips
    pages = max(1, math.ceil(len(part) / FLIPS_PER_PAGE))
    page = min(f.page, pages - 1)
    shown = part.iloc[page * FLIPS_PER_PAGE : (page + 1) * FLIPS_PER_PAGE]
    ids_shown = [str(i) for i in shown["image_id"]] if len(shown) else []
    change_tabs = dbc.RadioItems(
        id=f"{PREFIX}-change",
        options=[
            {"label": f"right → wrong ({counts.get('broke', 0):,})", "value": "broke"},
            {"label": f"wrong → right ({counts.get('fixed', 0):,})", "value": "fixed"},
            {"label": f"other changes ({counts.get('changed', 0):,})", "value": "changed"},
        ],
        value=change,
        inline=True,
        className="small",
    )
    flips_body: Any
    if len(shown):
        flips_body = [
            dbc.Pagination(
                id=f"{PREFIX}-pagination",
                max_value=pages,
                active_page=page + 1,
                fully_expanded=False,
                size="sm",
                className="mb-2",
                first_last=True,
                previous_next=True,
            ),
            flip_rows((info_a, info_b), shown, f, names, methods, (
                missing_maps(ctx.data, info_a, ids_shown, methods),
                missing_maps(ctx.data, info_b, ids_shown, methods),
            )),
        ]
    else:
        flips_body = [
            html.Div(dbc.Pagination(id=f"{PREFIX}-pagination", max_value=1, active_page=1), hidden=True),
            html.P("No images in this group.", className="text-muted small mb-0"),
        ]
    body: list[Any] = [*head]
    if info_b.labeled:
        body.append(
            dbc.Row(
                [
                    dbc.Col(card("Metrics", metrics_table(diff.metrics)), lg=4),
                    dbc.Col(
                        card(
                            "Per-class F1",
                            dcc.Graph(
                                figure=figures.plot_class_f1_delta(
                                    ctx.data.class_metrics(run_a), ctx.data.class_metrics(run_b)
                                ),
                                config={"displayModeBar": False},
                            ),
                        ),
                        lg=8,
                    ),
                ]
            )
        )
        body.append(
            dbc.Row(
                [
                    dbc.Col(
                        card(
                            "Confusion matrix change (B − A)",
                            [
                                dcc.Graph(
                                    id=f"{PREFIX}-confusion-delta",
                                    figure=figures.plot_confusion_delta(diff.confusion_delta, names),
                                    config={"displayModeBar": False},
                                ),
                                html.P(
                                    "B − A counts; blue got better (more correct on the diagonal, "
                                    "fewer confusions off it), red got worse.",
                                    className="small text-muted mb-0",
                                ),
                            ],
                        ),
                        lg=5,
                    ),
                    dbc.Col(
                        card("Images whose prediction changed", flips_body, header_right=change_tabs), lg=7
                    ),
                ]
            )
        )
    else:
        body.append(
            empty_state(
                "Unlabeled runs", "No accuracy to compare; the list shows images whose prediction changed."
            )
        )
        body.append(card("Images whose prediction changed", flips_body, header_right=change_tabs))
    body.append(overlap_card(ctx, run_a, run_b, f))
    return html.Div([b for b in body if b is not None], id=f"{PREFIX}-page")


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Pickers, group and pagination -> URL."""

    def update(
        search: str | None,
        trigger: object,
        a: str | None,
        b: str | None,
        change: str | None,
        picked: list[str] | None,
        active: int | None,
    ) -> str | None:
        f = parse_query(search)
        page = active - 1 if trigger == f"{PREFIX}-pagination" and active else 0
        candidate = replace(
            f,
            a=a,
            b=b,
            methods=picked_from_control(picked) if trigger == f"{PREFIX}-methods" else f.methods,
            change=change or f.change,
            page=min(max(0, page), MAX_PAGE),
        )
        if trigger == f"{PREFIX}-methods":
            candidate = replace(candidate, page=f.page)  # the methods shown keep the page
        return changed_query(f, candidate, KEYS)

    controls = [(f"{PREFIX}-{name}", "value", inputs.text()) for name in ("a", "b", "change")]
    controls.append((f"{PREFIX}-methods", "value", inputs.str_list()))
    controls.append((f"{PREFIX}-pagination", "active_page", inputs.integer()))
    controls_to_url(app, controls, update)
