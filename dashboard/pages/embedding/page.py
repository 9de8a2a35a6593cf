"""Embedding map: the 2-D projection of the embeddings as a WebGL scatter.

Coloured by true or predicted class, errors drawn as ``x``. Hover shows the thumbnail in the
side panel; a click pins the point, draws lines to its twins and offers its image page; a
lasso/box selection is resolved over *all* points (not only the displayed sample) and opened
in the gallery as a server-side selection.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dash
import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import Input, Output, Patch, State, dcc, html, no_update

from xaidash.dashboard import figures, inputs
from xaidash.dashboard.components import (
    card,
    correctness_badge,
    empty_state,
    fmt_num,
    thumb_img,
    warning_alert,
)
from xaidash.dashboard.pages.embedding.points import PointIndex
from xaidash.dashboard.params import (
    Filters,
    changed_query,
    gallery_href,
    image_href,
    parse_query,
    to_query,
    valid_image_id,
)
from xaidash.dashboard.routes import overlay_url
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url

if TYPE_CHECKING:
    from xaidash.store import RunInfo

PREFIX = "embedding"
#: what this page keeps in the URL (a pinned point is shareable)
URL_KEYS = ("run", "color", "train", "id", "cmap", "alpha")
MAX_INLINE = 20


def embedding_figure(
    state: AppState, info: RunInfo, f: Filters, selected: str | None = None, twins: pd.DataFrame | None = None
) -> Any:
    """The map as a figure dict, with lines from ``selected`` to its ``twins`` when given.

    The 20,000-point base figure is built once per (run, colouring, train) - runs are immutable
    - and a selection only swaps the two small leading traces.
    """
    run_id = info.run_id

    def build() -> dict[str, Any]:
        points = state.data.embedding_points(run_id, f.train)
        fig = figures.plot_embedding(points, info.class_names, color_by=f.color)
        plain: dict[str, Any] = fig.to_plotly_json()  # plotly has no types: a plain dict
        return plain

    base = state.derived.get(("embedding-figure", run_id, f.color, f.train), build)
    if selected is None or twins is None:
        return base
    xs, ys, sx, sy = twin_update(state, run_id, selected, twins)
    fig = dict(base)
    fig["data"] = [
        {**base["data"][0], "x": xs, "y": ys},
        {**base["data"][1], "x": sx, "y": sy},
        *base["data"][2:],
    ]
    return fig


def point_index(state: AppState, run_id: str, train: bool = True) -> PointIndex:
    """The map's points (val and, with ``train``, train) by id and by position, cached per run.

    Numpy, not a dict of ids: a million-entry dict cost ~1 s on the first hover or click.
    """
    return state.derived.get(
        ("embedding-index", run_id, bool(train)),
        lambda: PointIndex.build(state.data.embedding_points(run_id, train)),
    )


def twins_of(state: AppState, run_id: str, image_id: str) -> pd.DataFrame:
    """The stored twins of ``image_id`` (neighbors rows of kind "twin", nearest first)."""
    nb = state.data.neighbors(run_id, image_id)
    return nb[nb["kind"] == "twin"] if len(nb) else nb


def twin_update(
    state: AppState, run_id: str, image_id: str, twins: pd.DataFrame
) -> tuple[list[Any], list[Any], list[float], list[float]]:
    """Coordinates of the lines to ``twins`` and of the star for ``image_id``."""
    index = point_index(state, run_id)
    here = index.position(image_id)
    if here is None:
        return [], [], [], []
    there = [p for n in twins["neighbor_id"] if (p := index.position(str(n))) is not None]
    xy = pd.DataFrame({"x": [p[0] for p in there], "y": [p[1] for p in there]})
    x0, y0 = here
    me = pd.DataFrame({"image_id": [image_id], "x": [x0], "y": [y0]})
    return figures.twin_line_coords(me, image_id, xy)


def layout(ctx: PageContext) -> Any:
    """Render the embedding map page (plain function, unit-tested)."""
    info, f = ctx.info, ctx.filters
    run_id = info.run_id
    labeled = info.labeled
    points = ctx.data.embedding_points(run_id, f.train)
    if len(points) == 0:
        return empty_state(
            "No embeddings in this run",
            "This run has no 2-D projection. Re-run xaidash compute (its global phase writes the map).",
        )
    controls = html.Div(
        [
            html.Span("Colour by", className="small me-2"),
            dbc.RadioItems(
                id=f"{PREFIX}-color",
                options=[
                    {"label": "true class", "value": "true", "disabled": not labeled},
                    {"label": "predicted class", "value": "pred"},
                ],
                value=f.color if labeled else "pred",
                inline=True,
                className="small me-4",
            ),
            dbc.Checklist(
                id=f"{PREFIX}-train",
                options=[{"label": "show train (reference) points", "value": "train"}],
                value=["train"] if f.train else [],
                switch=True,
                className="small",
            ),
        ],
        className="d-flex align-items-center flex-wrap",
    )
    twins = twins_of(ctx.state, run_id, f.id) if f.id else None
    graph = dcc.Graph(
        id=f"{PREFIX}-graph",
        figure=embedding_figure(ctx.state, info, f, f.id, twins),
        config={"displaylogo": False, "modeBarButtonsToRemove": ["toImage"], "scrollZoom": True},
        clear_on_unhover=False,
    )
    side = html.Div(
        [
            card(
                "Hovered",
                html.Div(
                    html.P("Hover a point to see the image.", className="text-muted small mb-0"),
                    id=f"{PREFIX}-hover",
                ),
            ),
            card(
                "Selected point",
                html.Div(selected_panel(ctx.state, run_id, f.id, f, twins), id=f"{PREFIX}-pinned"),
            ),
            card(
                "Lasso / box selection",
                html.Div(
                    html.P(
                        "Drag a lasso or box on the map to select images.", className="text-muted small mb-0"
                    ),
                    id=f"{PREFIX}-selection",
                ),
            ),
        ]
    )
    legend = html.P(
        [
            "● correct  ✕ wrong  ○ train reference. Click a point to pin it and draw lines to its twins; "
            "use the lasso or box tool to open a region in the gallery."
        ],
        className="small text-muted mb-0",
    )
    return html.Div(
        [
            warning_alert(ctx.warning),
            dbc.Row(
                [
                    dbc.Col(card("Embedding map", [graph, legend], header_right=controls), lg=9),
                    dbc.Col(side, lg=3),
                ]
            ),
        ],
        id=f"{PREFIX}-page",
    )


def point_summary(state: AppState, run_id: str, image_id: str, train: bool = True) -> dict[str, Any] | None:
    """Label/prediction of one point (from the cached point index of the map as shown: with
    ``train`` False a val-only map needs no index of the train points)."""
    for flag in dict.fromkeys([bool(train), True]):  # the shown map's index first, built lazily
        index = point_index(state, run_id, flag)
        row = index.row(image_id)
        if row is not None:
            return index.record(row)
    return None


def hover_panel(state: AppState, run_id: str, image_id: str | None, train: bool = True) -> Any:
    """Thumbnail + label/prediction for the hovered point."""
    if image_id is None:
        return no_update
    rec = point_summary(state, run_id, image_id, train)
    if rec is None:
        return html.P("Unknown point.", className="text-muted small mb-0")
    lines = [
        html.Div(
            [
                correctness_badge(rec.get("correct"))
                if rec.get("split") == "val"
                else dbc.Badge("train", color="secondary")
            ]
        ),
        html.Div(["true ", html.B(str(rec.get("label_name") or "—"))], className="small"),
    ]
    if rec.get("split") == "val":
        lines.append(html.Div(["pred ", html.B(str(rec.get("pred_name") or "—"))], className="small"))
    return html.Div(
        [
            html.Div(
                [
                    thumb_img(run_id, image_id, size=160, className="xd-hover-thumb"),
                    html.Img(
                        src=overlay_url(run_id, image_id, "gradcam", size=160), className="xd-hover-thumb"
                    ),
                ],
                className="d-flex gap-2 mb-2",
            ),
            *lines,
        ]
    )


def selected_panel(
    state: AppState, run_id: str, image_id: str | None, f: Filters, twins: pd.DataFrame | None
) -> Any:
    """The pinned point: its image page link and its ``twins``."""
    if image_id is None or twins is None:
        return html.P(
            "Click a point to pin it and draw lines to its twins.", className="text-muted small mb-0"
        )
    rec = point_summary(state, run_id, image_id)
    if rec is None:
        return html.P("That image is not in this run.", className="text-muted small mb-0")
    return html.Div(
        [
            html.Div(thumb_img(run_id, image_id, size=96), className="mb-1"),
            html.Div(
                [
                    html.B(str(rec.get("pred_name") or rec.get("label_name") or "")),
                    f" (true {rec.get('label_name') or '—'})",
                ],
                className="small mb-1",
            ),
            dbc.Button(
                "Open image page →",
                href=image_href(run_id, image_id, f),
                size="sm",
                color="primary",
                className="mb-2",
                id=f"{PREFIX}-open-image",
                external_link=False,
            ),
            html.Div(
                [
                    html.Div(
                        [
                            thumb_img(run_id, str(r["neighbor_id"]), className="xd-thumb"),
                            html.Div(f"{fmt_num(r['similarity'], 2)}", className="small text-center"),
                        ],
                        style={"width": "64px"},
                    )
                    for r in twins.head(5).to_dict("records")
                ],
                className="d-flex flex-wrap gap-1 xd-neighbor",
            )
            if len(twins)
            else html.P("No twins stored.", className="text-muted small mb-0"),
        ]
    )


def select_ids(points: pd.DataFrame, selected: dict[str, Any] | None) -> list[str]:
    """Image ids inside a lasso polygon or box, over *all* points (val and, if shown, train).

    The figure shows a sample on large runs, so the ids plotly reports are incomplete; the
    lasso polygon / box range it also reports is applied to the full table instead. A polygon
    or range that is not numbers of matching lengths falls back to the points plotly listed.
    """
    if not selected or points is None or len(points) == 0:
        return []
    xy = points[["x", "y"]].to_numpy(dtype=float)
    lasso, box = selected.get("lassoPoints"), selected.get("range")
    lx = inputs.numbers(lasso.get("x"), 3) if isinstance(lasso, dict) else None
    ly = inputs.numbers(lasso.get("y"), 3) if isinstance(lasso, dict) else None
    bx = inputs.numbers(box.get("x"), 2, 2) if isinstance(box, dict) else None
    by = inputs.numbers(box.get("y"), 2, 2) if isinstance(box, dict) else None
    if lx is not None and ly is not None and len(lx) == len(ly):
        from matplotlib.path import Path as MplPath  # lazy: only needed for lasso selections

        mask = MplPath(np.column_stack([lx, ly])).contains_points(xy)
    elif bx is not None and by is not None:
        (x0, x1), (y0, y1) = sorted(bx), sorted(by)
        mask = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    else:
        ids = {cd for p in inputs.point_dicts(selected) if (cd := _customdata_id(p)) is not None}
        mask = points["image_id"].isin(ids).to_numpy()
    # The gallery lists validation images (predictions); train points cannot be opened there.
    val = points["split"].eq("val").to_numpy() if "split" in points else np.ones(len(points), bool)
    return [str(i) for i in points.loc[mask & val, "image_id"]]


def selection_href(state: AppState, f: Filters, ids: list[str]) -> str:
    """Gallery link for a selection: ids inline when few, else a server-side key."""
    base = Filters(run=f.run, cmap=f.cmap, alpha=f.alpha)
    if len(ids) <= MAX_INLINE:
        return gallery_href(base, ids=tuple(ids))
    return gallery_href(base, sel=state.selections.put(ids))


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """Hover -> side panel; click -> pin + twin lines; selection -> gallery link; controls -> URL."""

    @app.callback(
        Output(f"{PREFIX}-hover", "children"),
        Input(f"{PREFIX}-graph", "hoverData"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.record(), inputs.URL_PART)
    def on_hover(hover: dict[str, Any] | None, search: str | None) -> Any:
        f = parse_query(search)
        run = state.data.resolve_run(f.run).run_id
        pid = None if run is None else event_point(state, run, hover, f.train)
        if run is None or pid is None:
            return no_update
        return hover_panel(state, run, pid, f.train)

    @app.callback(
        Output(f"{PREFIX}-pinned", "children"),
        Output(f"{PREFIX}-graph", "figure"),
        Output("url", "search", allow_duplicate=True),
        Input(f"{PREFIX}-graph", "clickData"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.record(), inputs.URL_PART)
    def on_click(click: dict[str, Any] | None, search: str | None) -> Any:
        f = parse_query(search)
        run = state.data.resolve_run(f.run).run_id
        pid = None if run is None else event_point(state, run, click, f.train)
        if run is None or pid is None:
            return no_update, no_update, no_update
        f = replace(f, run=run, id=pid)
        # Only the two leading traces change: a Patch sends ~100 bytes instead of the map.
        twins = twins_of(state, run, pid)
        xs, ys, sx, sy = twin_update(state, run, pid, twins)
        patch = Patch()
        patch["data"][0]["x"] = xs
        patch["data"][0]["y"] = ys
        patch["data"][1]["x"] = sx
        patch["data"][1]["y"] = sy
        # The URL keeps the pinned point (shareable), written without a re-render of the page:
        # the router ignores changes that only touch "id" on this page (see app.SOFT_KEYS).
        return selected_panel(state, run, pid, f, twins), patch, to_query(f, URL_KEYS)

    @app.callback(
        Output(f"{PREFIX}-selection", "children"),
        Input(f"{PREFIX}-graph", "selectedData"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.record(), inputs.URL_PART)
    def on_select(selected: dict[str, Any] | None, search: str | None) -> Any:
        f = parse_query(search)
        run = state.data.resolve_run(f.run).run_id
        if run is None or not selected:
            return no_update
        ids = select_ids(state.data.embedding_points(run, f.train), selected)
        if not ids:
            return html.P("No validation images in that region.", className="text-muted small mb-0")
        href = selection_href(state, replace(f, run=run), ids)
        return html.Div(
            [
                html.P(
                    f"{len(ids):,} validation images selected.",
                    className="small mb-2",
                    id=f"{PREFIX}-selection-count",
                ),
                dbc.Button(
                    "Open selection in the gallery →",
                    href=href,
                    color="primary",
                    size="sm",
                    id=f"{PREFIX}-open-gallery",
                    external_link=False,
                ),
            ]
        )

    def on_controls(
        search: str | None, _trigger: object, color: str | None, train: list[str] | None
    ) -> str | None:
        f = parse_query(search)
        return changed_query(f, replace(f, color=color or "true", train=bool(train)), URL_KEYS)

    controls = [(f"{PREFIX}-color", "value", inputs.text()), (f"{PREFIX}-train", "value", inputs.str_list())]
    controls_to_url(app, controls, on_controls)


def _customdata_id(point: dict[str, Any]) -> str | None:
    """The image id a plotly point carries in ``customdata`` (a string, or a list led by one)."""
    cd = point.get("customdata")
    if isinstance(cd, list):
        cd = cd[0] if cd else None
    return valid_image_id(cd)


def event_point(state: AppState, run_id: str, event: dict[str, Any] | None, train: bool) -> str | None:
    """The image a hover/click event is about: the point's ``customdata`` (a marker), else the
    point nearest to the event's x/y (a cell of the density layer of a large map)."""
    pid = _point_id(event)
    if pid is not None:
        return pid
    point = inputs.first_point(event)
    if point is None or point.get("customdata") is not None:
        return None
    x, y = inputs.finite(point.get("x")), inputs.finite(point.get("y"))
    if x is None or y is None:
        return None
    index = point_index(state, run_id, train)
    row = index.nearest(x, y)
    return None if row is None else index.image_id(row)


def _point_id(event: dict[str, Any] | None) -> str | None:
    """The image id carried in ``customdata`` of the first point of a plotly event."""
    point = inputs.first_point(event)
    return None if point is None else _customdata_id(point)
