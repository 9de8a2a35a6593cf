"""Small reusable layout pieces shared by the pages (no callbacks here)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import dcc, html
from dash.development.base_component import Component

from xaidash.constants import CLASSIC_METHODS, METHODS, method_label
from xaidash.dashboard.overlays import COLORMAPS, colormap_css_gradient
from xaidash.dashboard.params import Filters
from xaidash.dashboard.paths import spec_label
from xaidash.dashboard.server.routes import image_url, overlay_url

#: a component's keyword arguments, shared by a Dash class and its wire form (the gallery's rows)
Props = dict[str, Any]

if TYPE_CHECKING:
    from xaidash.dashboard.data import DashData
    from xaidash.store import RunInfo

#: One row of a DataFrame, as ``DataFrame.to_dict("records")`` gives it.
Record = Mapping[Hashable, Any]


def run_methods(info: RunInfo) -> list[str]:
    """The run's explanation methods in display order (all four when the run names none)."""
    return [m for m in METHODS if m in (info.methods or METHODS)]


def canonical_order(methods: Sequence[str]) -> list[str]:
    """``methods`` deduplicated in display order: the canonical methods as
    :data:`xaidash.constants.METHODS` orders them, then any other stored ones by name."""
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(dict.fromkeys(methods), key=lambda m: (rank.get(m, len(rank)), m))


def available_methods(info: RunInfo, stored: Sequence[str]) -> list[str]:
    """What a run can show: its ``methods`` and the other methods its cams table has maps of
    (``stored``, e.g. attributions of a sample of images), in display order."""
    return canonical_order([*run_methods(info), *stored])


def picked_methods(f: Filters, available: Sequence[str]) -> list[str]:
    """The methods a page shows: the URL's pick among ``available``, in display order.

    No pick, or a pick of which no name is one of the run's (a stale or mistyped link), gives the
    default: the classic four the run has (or its first four, for a run with none of them). An
    explicit empty pick (the user cleared the picker) shows none.
    """
    if f.methods is not None:
        chosen = [m for m in available if m in f.methods]
        if chosen or not f.methods:
            return chosen
    classic = [m for m in available if m in CLASSIC_METHODS]
    return classic or list(available[: len(CLASSIC_METHODS)])


def method_picker(prefix: str, available: Sequence[str], picked: Sequence[str]) -> html.Div:
    """The multi-select of the methods a page shows (id ``{prefix}-methods``)."""
    return html.Div(
        [
            dbc.Label("Methods", html_for=f"{prefix}-methods", className="small mb-0"),
            dcc.Dropdown(
                id=f"{prefix}-methods",
                options=[{"label": method_label(m), "value": m} for m in available],
                value=list(picked),
                multi=True,
                placeholder="pick the methods to show",
                className="mb-2 xd-method-picker",
            ),
        ]
    )


def picked_from_control(value: list[str] | None) -> tuple[str, ...]:
    """A picker's value as the URL's ``methods`` (display order; an empty pick stays empty)."""
    return tuple(canonical_order(value or []))


def missing_maps(
    data: DashData, info: RunInfo, image_ids: Sequence[str], methods: Sequence[str]
) -> dict[str, frozenset[str]]:
    """image_id -> which of ``methods`` have no predicted-class map of it in run ``info``.

    A method the run does not have is missing for every image. Of the others, only those outside
    the run's ``methods`` are looked up (computed for a sample of images, e.g. attributions): the
    run's own methods cover every image, and checking them too would cost every page a read of
    the maps file before it is sent.
    """
    stored = data.map_methods(info.run_id)
    available = set(available_methods(info, stored))
    absent = frozenset(m for m in methods if m not in available)
    sampled = [m for m in methods if m in available and m not in run_methods(info)]
    have = data.map_keys(info.run_id, image_ids) if sampled and image_ids else set()
    return {i: absent | {m for m in sampled if (i, m, "pred") not in have} for i in image_ids}


def missing_map(text: str = "not computed for this image", className: str = "xd-cam-missing") -> html.Div:
    """What a grid shows where a method has no map for an image (instead of a broken image)."""
    return html.Div(**missing_map_props(text, className))


def missing_map_props(text: str = "not computed for this image", className: str = "xd-cam-missing") -> Props:
    return {"children": text, "className": f"{className} text-muted small"}


def run_label(rec: Record, show_paths: bool = False) -> str:
    """A human label for a row of the runs table: date, model, dataset, accuracy."""
    created = rec.get("created")
    when = created.strftime("%Y-%m-%d %H:%M") if isinstance(created, datetime) else str(created)[:16]
    acc = rec.get("accuracy")
    acc_s = f" · acc {100 * acc:.1f}%" if acc is not None and acc == acc else ""
    spec = spec_label(str(rec.get("dataset_spec") or ""), show_paths)
    model = spec_label(str(rec.get("arch") or "?"), show_paths)  # python:/abs/net.py:f -> python:net.py:f
    return f"{when} · {model} · {spec}{acc_s}"


def empty_state(title: str, body: str | list[Any], color: str = "info", icon: str = "i") -> dbc.Alert:
    """A friendly explanation of why there is nothing to show, and what to do about it."""
    return dbc.Alert(
        [html.H5(title, className="alert-heading mb-1"), html.Div(body)],
        color=color,
        className="xd-empty",
    )


def no_runs_alert(store_path: str) -> dbc.Alert:
    """Shown on every page when the store has no runs (``store_path`` as the page may show it)."""
    return empty_state(
        "This store has no runs yet",
        [
            html.P(f"The dashboard reads results from {store_path}, which has no published runs."),
            html.P("Compute one (it writes predictions, the four CAMs, twins and metrics), then reload:"),
            html.Pre(
                f"xaidash compute --data imagefolder:DIR --checkpoint model.pt --store {store_path}",
                className="mb-0",
            ),
            html.P("Or try the built-in example: xaidash demo", className="mt-2 mb-0"),
        ],
    )


def warning_alert(text: str | None) -> dbc.Alert | None:
    """A dismissable warning (e.g. unknown run id in the URL) or None."""
    return dbc.Alert(text, color="warning", dismissable=True, className="py-2") if text else None


def card(title: Any, body: Any, className: str = "", header_right: Any = None, **kwargs: Any) -> dbc.Card:
    """A titled card: every block of every page looks the same."""
    header = dbc.CardHeader(
        html.Div(
            [html.Span(title, className="fw-semibold"), html.Div(header_right)], className="xd-card-head"
        )
    )
    return dbc.Card([header, dbc.CardBody(body)], className=f"mb-3 shadow-sm {className}", **kwargs)


def stat(
    label: str, value: str, sub: str | None = None, href: str | None = None, color: str = ""
) -> dbc.Card:
    """A headline number."""
    inner = [html.Div(label, className="xd-stat-label"), html.Div(value, className=f"xd-stat-value {color}")]
    if sub:
        inner.append(html.Div(sub, className="xd-stat-sub"))
    body = dbc.CardBody(inner)
    if href:
        body = dcc.Link(body, href=href, className="text-reset text-decoration-none")
    return dbc.Card(body, className="shadow-sm h-100 xd-stat")


def _number(x: object) -> float | None:
    """``x`` as a float; None for None, NaN and what is not a number."""
    if not isinstance(x, int | float | np.integer | np.floating):
        return None
    v = float(x)
    return None if math.isnan(v) else v


def fmt_pct(x: object, digits: int = 1) -> str:
    """0.8734 -> '87.3%'; None/NaN -> '—'."""
    v = _number(x)
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def fmt_num(x: object, digits: int = 3) -> str:
    """A float with ``digits`` decimals; None/NaN -> '—'."""
    v = _number(x)
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_count(x: object) -> str:
    """12345 -> '12,345'; None/NaN -> '—'."""
    v = _number(x)
    return "—" if v is None else f"{int(v):,}"


def overlay_img(
    run_id: str,
    image_id: str,
    method: str,
    f: Filters,
    target: str = "pred",
    size: int | None = None,
    className: str = "xd-thumb",
    title: str | None = None,
) -> html.Img:
    """An <img> of one overlay (URL, not base64: the browser caches and parallelises them)."""
    return html.Img(**overlay_img_props(run_id, image_id, method, f, target, size, className, title))


def overlay_img_props(run_id: str, image_id: str, method: str, f: Filters, target: str = "pred",
                      size: int | None = None, className: str = "xd-thumb",
                      title: str | None = None) -> Props:
    """:func:`overlay_img`'s props (also for the gallery rows' wire form)."""
    return {"src": overlay_url(run_id, image_id, method, target, f.cmap, f.alpha, size),
            "className": className, "alt": f"{method_label(method)} overlay",
            "title": title or method_label(method)}


def thumb_img(run_id: str, image_id: str, size: int | None = None, className: str = "xd-thumb") -> html.Img:
    """An <img> of the stored thumbnail."""
    return html.Img(**thumb_img_props(run_id, image_id, size, className))


def thumb_img_props(run_id: str, image_id: str, size: int | None = None,
                    className: str = "xd-thumb") -> Props:
    return {"src": image_url(run_id, image_id, size), "className": className, "alt": "image"}


def neighbor_tile(run_id: str, image_id: str, f: Filters, caption: str | list[str | Component]) -> html.Div:
    """A training image (a twin or a counterfactual) beside its own Grad-CAM, with a caption."""
    images = html.Div(
        [
            thumb_img(run_id, image_id, size=96),
            overlay_img(run_id, image_id, "gradcam", f, size=96, title="its Grad-CAM"),
        ],
        className="d-flex gap-1",
    )
    return html.Div(
        [images, html.Div(caption, className="small text-center")],
        className="xd-neighbor",
        title=f"train image {image_id}",
    )


def colorbar(cmap: str) -> html.Div:
    """A small horizontal legend: low -> high attention in the chosen colormap."""
    return html.Div(
        [
            html.Span("low", className="small text-muted me-1"),
            html.Div(className="xd-colorbar", style={"background": colormap_css_gradient(cmap)}),
            html.Span("high attention", className="small text-muted ms-1"),
        ],
        className="d-flex align-items-center",
    )


def display_controls(prefix: str, f: Filters) -> html.Div:
    """Colormap dropdown + opacity slider (ids ``{prefix}-cmap`` / ``{prefix}-alpha``)."""
    return html.Div(
        [
            dbc.Label("Colormap", html_for=f"{prefix}-cmap", className="small mb-0"),
            dcc.Dropdown(
                id=f"{prefix}-cmap",
                options=[{"label": c, "value": c} for c in COLORMAPS],
                value=f.cmap,
                clearable=False,
                className="mb-2",
            ),
            dbc.Label("Heatmap opacity", html_for=f"{prefix}-alpha", className="small mb-0"),
            dcc.Slider(
                id=f"{prefix}-alpha",
                min=0,
                max=1,
                step=0.05,
                value=f.alpha,
                marks={0: "0", 0.5: "0.5", 1: "1"},
                tooltip={"placement": "bottom", "always_visible": False},
            ),
            html.Div(colorbar(f.cmap), className="mt-1"),
        ]
    )


def df_table(
    df: pd.DataFrame,
    columns: Sequence[tuple[str, str]],
    formats: dict[str, Any] | None = None,
    max_rows: int = 500,
    className: str = "",
    id: str | None = None,
) -> html.Div:
    """A compact striped Bootstrap table from a DataFrame (``columns``: (column, header))."""
    formats = formats or {}
    head = html.Thead(html.Tr([html.Th(h) for _, h in columns]))
    rows = []
    for rec in df.head(max_rows).to_dict("records"):
        cells = []
        for col, _ in columns:
            v = rec.get(col)
            fmt = formats.get(col)
            cells.append(html.Td(fmt(v, rec) if fmt else ("—" if v is None else str(v))))
        rows.append(html.Tr(cells))
    table = dbc.Table(
        [head, html.Tbody(rows)], striped=True, hover=True, size="sm", className="mb-0 xd-table"
    )
    if id:
        return html.Div(table, className=f"xd-table-wrap {className}", id=id)
    return html.Div(table, className=f"xd-table-wrap {className}")


def correctness_badge(correct: Any) -> dbc.Badge:
    """Green 'correct' / red 'wrong' / grey 'unlabeled'."""
    return dbc.Badge(**correctness_badge_props(correct))


def correctness_badge_props(correct: Any) -> Props:
    if correct is None or (isinstance(correct, float) and pd.isna(correct)):
        text, color = "unlabeled", "secondary"
    else:
        text, color = ("correct", "success") if bool(correct) else ("wrong", "danger")
    return {"children": text, "color": color, "className": "me-1"}
