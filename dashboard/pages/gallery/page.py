"""Gallery page: filtered, sorted, paginated rows of image + one overlay per picked method.

Filters, sort, page, colormap and opacity live in the query string; a lasso selection from the
embedding map arrives as ``sel=<key>`` (server-side, see :class:`dashboard.data.SelectionStore`)
or, when small, as ``ids=a,b,c``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html

from xaidash.constants import OUTCOMES, SORTS, method_label
from xaidash.dashboard import inputs
from xaidash.dashboard.components import (
    Record,
    available_methods,
    card,
    correctness_badge_props,
    display_controls,
    empty_state,
    fmt_num,
    fmt_pct,
    method_picker,
    missing_map_props,
    missing_maps,
    overlay_img_props,
    picked_from_control,
    picked_methods,
    run_methods,
    thumb_img_props,
    warning_alert,
)
from xaidash.dashboard.pages.gallery import wire
from xaidash.dashboard.pages.gallery.quality import cluster_panel, flag_chip, flag_filter, row_flags
from xaidash.dashboard.params import (
    GALLERY_KEYS,
    MAX_PAGE,
    PAGE_SIZES,
    SORT_LABELS,
    Filters,
    changed_query,
    image_href,
    parse_query,
    to_query,
)
from xaidash.dashboard.report.buttons import gallery_button
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url
from xaidash.store import GalleryQuery

if TYPE_CHECKING:
    from xaidash.store import RunInfo

PREFIX = "gallery"


def gallery_query(f: Filters, selection: tuple[str, ...] | None) -> GalleryQuery:
    """Filters -> the reader's GalleryQuery (typed values only; the reader binds them)."""
    return GalleryQuery(
        true_class=f.true,
        pred_class=f.pred,
        outcome=f.outcome,
        conf_min=f.cmin,
        conf_max=f.cmax,
        sort=f.sort,
        descending=f.desc,
        method=f.method,
        image_ids=selection,
        page=f.page,
        page_size=f.size,
        flag=f.flag,
    )


def resolve_selection(ctx: PageContext) -> tuple[tuple[str, ...] | None, str | None]:
    """The image-id restriction from the URL and a warning when a selection key is unknown."""
    f = ctx.filters
    if f.sel:
        ids = ctx.state.selections.get(f.sel)
        if ids is None:
            return None, "That selection is no longer available on this server; showing all images."
        return ids, None
    return f.ids, None


def class_options(names: list[str]) -> list[dict[str, Any]]:
    return [{"label": f"{i}: {n}", "value": i} for i, n in enumerate(names)]


def filter_panel(
    f: Filters,
    names: list[str],
    labeled: bool,
    methods: list[str],
    has_quality: bool = False,
    available: list[str] | None = None,
) -> Any:
    """Left column: filters, sort, display."""

    def class_filter(label: str, key: str, value: int | None) -> list[Any]:
        return [
            dbc.Label(label, html_for=f"{PREFIX}-{key}", className="small mb-0"),
            dcc.Dropdown(
                id=f"{PREFIX}-{key}",
                options=class_options(names),
                value=value,
                placeholder="any",
                className="mb-2",
            ),
        ]

    items: list[Any] = []
    if labeled:
        items += class_filter("True class", "true", f.true)
    else:
        items.append(html.Div(dcc.Dropdown(id=f"{PREFIX}-true", options=[], value=None), hidden=True))
    items += class_filter("Predicted class", "pred", f.pred)
    outcome = dbc.RadioItems(
        id=f"{PREFIX}-outcome",
        options=[{"label": o, "value": o} for o in OUTCOMES],
        value=f.outcome,
        inline=True,
        className="mb-2 small",
    )
    items.append(
        html.Div([dbc.Label("Outcome", className="small mb-0 d-block"), outcome], hidden=not labeled)
    )
    items.append(flag_filter(f, has_quality))
    items += [
        dbc.Label("Confidence", className="small mb-0"),
        dcc.RangeSlider(
            id=f"{PREFIX}-conf",
            min=0,
            max=1,
            step=0.05,
            value=[f.cmin, f.cmax],
            marks={0: "0", 0.5: "0.5", 1: "1"},
            allowCross=False,
            tooltip={"placement": "bottom"},
        ),
        dbc.Label("Sort by", html_for=f"{PREFIX}-sort", className="small mb-0 mt-2"),
        dcc.Dropdown(
            id=f"{PREFIX}-sort",
            options=[{"label": SORT_LABELS[s], "value": s} for s in SORTS
                     if (labeled or s != "loss") and (has_quality or s != "label_quality")],
            value=f.sort,
            clearable=False,
            className="mb-1",
        ),
        dbc.Checklist(
            id=f"{PREFIX}-desc",
            options=[{"label": "descending", "value": "desc"}],
            value=["desc"] if f.desc else [],
            switch=True,
            className="small mb-2",
        ),
        html.Div(
            [
                dbc.Label("Faithfulness of", html_for=f"{PREFIX}-method", className="small mb-0"),
                dcc.Dropdown(
                    id=f"{PREFIX}-method",
                    options=[{"label": method_label(m), "value": m} for m in methods],
                    value=f.method,
                    clearable=False,
                    className="mb-2",
                ),
            ],
            hidden=f.sort != "faithfulness",
        ),
        dbc.Label("Rows per page", html_for=f"{PREFIX}-size", className="small mb-0"),
        dcc.Dropdown(
            id=f"{PREFIX}-size",
            options=[{"label": str(n), "value": n} for n in PAGE_SIZES],
            value=f.size,
            clearable=False,
            className="mb-3",
        ),
        html.Hr(),
        method_picker(PREFIX, available or methods, picked_methods(f, available or methods)),
        display_controls(PREFIX, f),
        html.Hr(),
        dcc.Link("Reset filters", href="/gallery" + to_query(Filters(run=f.run)), className="small"),
    ]
    return card("Filters", items, className="xd-sticky")


def gallery_row(
    run_id: str, rec: Record, f: Filters, methods: list[str], missing: frozenset[str] = frozenset()
) -> wire.Node:
    """One image: metadata, the image, and one overlay per method (all linking to the image page);
    a method in ``missing`` has no map of this image and shows a placeholder. Built in Dash's wire
    form (:mod:`~xaidash.dashboard.pages.gallery.wire`): a page repeats it for every row."""
    href = image_href(run_id, rec["image_id"], f)
    wrong = rec.get("correct") is False or rec.get("correct") == False  # noqa: E712 - numpy bool
    loss = rec.get("loss")
    meta = wire.div(
        [
            wire.badge(**correctness_badge_props(rec.get("correct"))),
            *row_flags(rec.get("flags")),
            wire.div([wire.span("pred ", className="text-muted"), wire.b(str(rec.get("pred_name")))],
                     className="small"),
            wire.div([wire.span("true ", className="text-muted"), str(rec.get("label_name") or "—")],
                     className="small"),
            wire.div(f"conf {fmt_pct(rec.get('confidence'))}", className="small"),
            wire.div(f"loss {fmt_num(loss, 2)}", className="small text-muted")
            if loss is not None and not pd.isna(loss)
            else None,
            wire.div(f"disagree {fmt_num(rec.get('cam_disagreement'), 2)}", className="small text-muted"),
        ],
        className="xd-row-meta",
    )
    cells = [wire.div(wire.img(**thumb_img_props(run_id, rec["image_id"])), className="xd-cell")]
    cells += [
        wire.div(wire.div(**missing_map_props(className="xd-cell-missing")) if m in missing
                 else wire.img(**overlay_img_props(run_id, rec["image_id"], m, f)), className="xd-cell")
        for m in methods
    ]
    return wire.div(
        [meta, wire.link(wire.div(cells, className="xd-row-images"), href=href, className="xd-row-link")],
        className="xd-row" + (" xd-row-wrong" if wrong else ""),
        id={"type": f"{PREFIX}-row", "index": rec["image_id"]},
    )


def results(ctx: PageContext, info: RunInfo, selection: tuple[str, ...] | None) -> list[Any]:
    """Header (count, active filters, pagination) and the rows."""
    f, run_id = ctx.filters, info.run_id
    methods = picked_methods(f, available_methods(info, ctx.data.map_methods(run_id)))
    q = gallery_query(f, selection)
    rows, total = ctx.data.gallery(run_id, q)
    pages = max(1, math.ceil(total / f.size))
    if f.page >= pages and total:
        # A stale link past the end: show the last page rather than nothing.
        f = replace(f, page=pages - 1)
        rows, total = ctx.data.gallery(run_id, gallery_query(f, selection))
    ids = list(rows["image_id"])
    ctx.effect(lambda: ctx.data.prefetch_async(run_id, ids, methods))
    names = info.class_names
    chips = []
    if selection is not None:
        chips.append(
            dbc.Badge(
                [
                    f"selection of {len(selection):,} images ",
                    dcc.Link(
                        "✕",
                        href="/gallery" + to_query(replace(f, sel=None, ids=None, page=0), GALLERY_KEYS),
                        className="text-white ms-1",
                    ),
                ],
                color="info",
                className="me-1",
                id=f"{PREFIX}-selection-badge",
            )
        )
    if f.true is not None:
        chips.append(
            dbc.Badge(
                f"true = {names[f.true] if f.true < len(names) else f.true}",
                color="secondary",
                className="me-1",
            )
        )
    if f.pred is not None:
        chips.append(
            dbc.Badge(
                f"pred = {names[f.pred] if f.pred < len(names) else f.pred}",
                color="secondary",
                className="me-1",
            )
        )
    if f.outcome != "all":
        chips.append(
            dbc.Badge(f.outcome, color="danger" if f.outcome == "wrong" else "success", className="me-1")
        )
    chips.append(flag_chip(f))
    header = html.Div(
        [
            html.Div(
                [html.Span(f"{total:,} images", className="fw-semibold me-2", id=f"{PREFIX}-count"), *chips],
                className="d-flex flex-wrap align-items-center",
            ),
            gallery_button(total),
            dbc.Pagination(
                id=f"{PREFIX}-pagination",
                max_value=pages,
                active_page=f.page + 1,
                fully_expanded=False,
                first_last=True,
                previous_next=True,
                size="sm",
                className="mb-0",
            ),
        ],
        className="d-flex justify-content-between align-items-center flex-wrap gap-2 mb-2",
    )
    if total == 0:
        return [
            header,
            empty_state(
                "No images match these filters",
                "Widen the confidence range, clear the class filters or the selection, or reset the filters.",
            ),
        ]
    heads = [html.Div("image", className="xd-cell-head")]
    heads += [html.Div(method_label(m), className="xd-cell-head") for m in methods]
    col_heads = html.Div(
        [html.Div("", className="xd-row-meta"), html.Div(heads, className="xd-row-images")],
        className="xd-row xd-row-head",
    )
    missing = missing_maps(ctx.data, info, list(rows["image_id"]), methods)
    body: list[Any] = [
        gallery_row(run_id, rec, f, methods, missing.get(rec["image_id"], frozenset()))
        for rec in rows.to_dict("records")
    ]
    if not methods:
        body.insert(0, html.P("No method picked: pick some under Methods to see their maps.",
                              className="text-muted small", id=f"{PREFIX}-no-methods"))
    return [cluster_panel(ctx, info), header, col_heads, html.Div(body, id=f"{PREFIX}-rows")]


def layout(ctx: PageContext) -> Any:
    """Render the gallery (plain function, unit-tested)."""
    info, f = ctx.info, ctx.filters
    selection, sel_warning = resolve_selection(ctx)
    methods = run_methods(info)
    available = available_methods(info, ctx.data.map_methods(info.run_id))
    return html.Div(
        [
            warning_alert(ctx.warning),
            warning_alert(sel_warning),
            dbc.Row(
                [
                    dbc.Col(
                        filter_panel(f, info.class_names, info.labeled, methods,
                                     ctx.data.quality.has_quality(info.run_id), available),
                        md=4, lg=3, xl=2,
                    ),
                    dbc.Col(
                        html.Div(results(ctx, info, selection), id=f"{PREFIX}-results"),
                        md=8,
                        lg=9,
                        xl=10,
                    ),
                ]
            ),
        ],
        id=f"{PREFIX}-page",
    )


def controls_to_search(
    search: str | None,
    trigger: str | None,
    true: int | None,
    pred: int | None,
    outcome: str | None,
    conf: tuple[float, float] | None,
    sort: str | None,
    desc: list[str] | None,
    method: str | None,
    picked: list[str] | None,
    size: int | None,
    cmap: str | None,
    alpha: float | None,
    active_page: int | None,
) -> str | None:
    """New query string from the control values (None when nothing changed).

    The values are typed (see :data:`CONTROLS`); changing any filter resets to the first page;
    only the pagination changes the page. The result is re-parsed so that control values go
    through the same validation (ranges, allow-lists) as a typed URL.
    """
    f = parse_query(search)
    cmin, cmax = conf if conf is not None else (0.0, 1.0)
    page = active_page - 1 if (trigger == f"{PREFIX}-pagination" and active_page) else 0
    candidate = replace(
        f,
        true=true,
        pred=pred,
        outcome=outcome or "all",
        cmin=cmin,
        cmax=cmax,
        sort=sort or "confidence",
        desc=bool(desc),
        method=method or "gradcam",
        methods=picked_from_control(picked) if trigger == f"{PREFIX}-methods" else f.methods,
        size=size or 24,
        cmap=cmap or f.cmap,
        alpha=alpha if alpha is not None else f.alpha,
        page=min(max(0, page), MAX_PAGE),
    )
    if trigger in (f"{PREFIX}-cmap", f"{PREFIX}-alpha", f"{PREFIX}-methods"):
        candidate = replace(candidate, page=f.page)  # display changes (and the methods) keep the page
    return changed_query(f, candidate, GALLERY_KEYS)


#: each control of the panel, in the order of :func:`controls_to_search`'s values
CONTROLS = (
    (f"{PREFIX}-true", "value", inputs.integer()),
    (f"{PREFIX}-pred", "value", inputs.integer()),
    (f"{PREFIX}-outcome", "value", inputs.text()),
    (f"{PREFIX}-conf", "value", inputs.number_pair()),
    (f"{PREFIX}-sort", "value", inputs.text()),
    (f"{PREFIX}-desc", "value", inputs.str_list()),  # the "descending" checklist
    (f"{PREFIX}-method", "value", inputs.text()),
    (f"{PREFIX}-methods", "value", inputs.str_list()),  # the method picker
    (f"{PREFIX}-size", "value", inputs.integer()),  # rows per page
    (f"{PREFIX}-cmap", "value", inputs.text()),
    (f"{PREFIX}-alpha", "value", inputs.number()),
    (f"{PREFIX}-pagination", "active_page", inputs.integer()),
)


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Every control writes the URL; the router re-renders from it."""

    controls_to_url(app, CONTROLS, controls_to_search)
