"""The gallery's data-quality parts: the data-quality filter (likely mislabelled, leak, look-alike,
outlier, near-duplicate, image issues; constants.QUALITY_FLAGS) and, on a
confusion cell (true and predicted class set), the cell's error clusters.

Both read the run's ``quality`` and ``error_clusters`` tables (computed in the global phase, see
:mod:`xaidash.compute.pipeline.quality_phase`); a run without them shows neither. The filter
writes ``flag=`` into the URL, like every other gallery control.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import dash
import dash_bootstrap_components as dbc
import numpy as np
import pandas as pd
from dash import dcc, html

from xaidash.constants import QUALITY_FLAGS, method_label
from xaidash.dashboard import inputs
from xaidash.dashboard.components import card, thumb_img
from xaidash.dashboard.overlays import render_heatmap
from xaidash.dashboard.pages.gallery import wire
from xaidash.dashboard.params import (
    FLAG_LABELS,
    GALLERY_KEYS,
    Filters,
    changed_query,
    image_href,
    parse_query,
)
from xaidash.dashboard.state import AppState, PageContext
from xaidash.dashboard.url_sync import controls_to_url
from xaidash.store import RunInfo

PREFIX = "gallery"
MAP_SIZE = 72


def flag_filter(f: Filters, has_quality: bool) -> html.Div:
    """The data-quality dropdown (present but hidden for runs without a quality table, so the
    callback's input always exists)."""
    return html.Div(
        [
            dbc.Label("Data quality", html_for=f"{PREFIX}-flag", className="small mb-0"),
            dcc.Dropdown(
                id=f"{PREFIX}-flag",
                options=[{"label": FLAG_LABELS[q], "value": q} for q in QUALITY_FLAGS],
                value=f.flag,
                placeholder="any",
                className="mb-2",
            ),
        ],
        hidden=not has_quality,
    )


def flag_chip(f: Filters) -> Any:
    """The header badge of an active quality filter."""
    if f.flag is None:
        return None
    return dbc.Badge(FLAG_LABELS.get(f.flag, f.flag), color="warning", className="me-1 xd-flag",
                     id=f"{PREFIX}-flag-badge")


#: what each flag means, as the row badge's tooltip
FLAG_HINTS: dict[str, str] = {
    "mislabelled": "confident learning (cleanlab) suspects the label; the image page suggests a class",
    "leak": "a copy of a training image (same pixels, re-encoded, resized, shifted or cropped); "
            "the image page shows the pair",
    "lookalike": "closer to a training image than almost any training image is to another; not a copy",
    "outlier": "farther from every training image than almost any training image is from its nearest",
    "duplicate": "a copy of another validation image; the image page shows its group",
    "dark": "much darker than the data set's typical image",
    "overexposed": "much brighter than the data set's typical image",
    "blurry": "weak edges for its contrast, compared with the data set",
    "low_information": "few distinct grey levels (near-constant), compared with the data set",
    "odd_size": "more than 10x larger or smaller than the data set's typical image",
    "odd_aspect": "aspect ratio more than 2x off the data set's typical one",
    "grayscale": "no colour in a colour data set",
}


def row_flags(flags: object) -> list[Any]:
    """The data-quality badges of one gallery row (``flags``: the page's comma-separated column)."""
    if not isinstance(flags, str) or not flags:
        return []
    return [wire.badge(FLAG_LABELS[f], color="warning", className="me-1 xd-flag", title=FLAG_HINTS.get(f, ""))
            for f in flags.split(",") if f in FLAG_LABELS]


def _map_src(values: object, h: object, w: object, cmap: str) -> str | None:
    """A mean map as an inline PNG (a few hundred bytes at 72 px), None when malformed."""
    try:
        hh, ww = int(h), int(w)  # type: ignore[call-overload]  # numpy/pandas scalars
        arr = np.asarray(values, dtype=np.float32).reshape(hh, ww)
    except (TypeError, ValueError):
        return None
    png = render_heatmap(arr, cmap, size=MAP_SIZE)
    return "data:image/png;base64," + base64.b64encode(png).decode()


def cluster_panel(ctx: PageContext, info: RunInfo) -> Any:
    """The error clusters of the confusion cell the gallery is filtered to, or None."""
    f = ctx.filters
    if f.true is None or f.pred is None or f.true == f.pred:
        return None
    df = ctx.data.quality.error_clusters(info.run_id, f.true, f.pred)
    if df is None or not len(df):
        return None
    names = info.class_names
    cols = []
    clusters = sorted({int(c) for c in df["cluster"]})
    for c in clusters:
        rows = df[df["cluster"] == c]
        first = rows.iloc[0]
        rep_ids = first["representative_ids"]
        reps = [str(i) for i in (rep_ids if rep_ids is not None else [])]
        thumbs = html.Div(
            [dcc.Link(thumb_img(info.run_id, i, size=72), href=image_href(info.run_id, i, f))
             for i in reps],
            className="d-flex gap-1 mb-2",
        )
        maps = []
        for rec in rows.to_dict("records"):
            if rec.get("method") is None or rec.get("mean_map") is None:
                continue
            src = _map_src(rec["mean_map"], rec["h"], rec["w"], f.cmap)
            if src is not None:
                maps.append(html.Div([html.Img(src=src, className="xd-thumb", alt="mean map"),
                                      html.Div(method_label(str(rec["method"])), className="small")],
                                     className="text-center"))
        cols.append(
            dbc.Col(
                html.Div(
                    [
                        html.Div([html.B(f"Cluster {c + 1}"), f" · {int(first['size'])} errors"],
                                 className="mb-1"),
                        html.Div("closest to the centre", className="small text-muted"),
                        thumbs,
                        html.Div("mean maps (predicted class)", className="small text-muted"),
                        html.Div(maps, className="d-flex gap-1 flex-wrap"),
                    ],
                    className="border rounded p-2 h-100",
                    id={"type": f"{PREFIX}-cluster", "index": c},
                ),
                md=True,
            )
        )
    first = df.iloc[0]
    k = int(first["k"])
    sil = first["silhouette"]
    why = (
        f"k-means chose {k} clusters (silhouette {float(sil):.2f})"
        if k > 1 and sil is not None and not pd.isna(sil)
        else "no clearly separated groups (silhouette < 0.25 for k = 2..4): one cluster"
    )
    true_name = names[f.true] if f.true < len(names) else str(f.true)
    pred_name = names[f.pred] if f.pred < len(names) else str(f.pred)
    return card(
        f"Error clusters: “{true_name}” predicted as “{pred_name}”",
        [dbc.Row(cols, className="g-2"),
         html.P(f"Grouped by embedding; {why}.", className="small text-muted mb-0 mt-2")],
        id=f"{PREFIX}-clusters",
    )


def flag_to_search(flag: str | None, search: str | None) -> str | None:
    """The new query string for a changed quality filter (page 0), None when unchanged."""
    f = parse_query(search)
    return changed_query(f, replace(f, flag=flag, page=0), GALLERY_KEYS)


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """The quality filter writes the URL; the router re-renders from it."""

    def update_flag(search: str | None, _trigger: object, flag: str | None) -> str | None:
        return flag_to_search(flag, search)

    controls_to_url(app, [(f"{PREFIX}-flag", "value", inputs.text())], update_flag)
