"""The dashboard's two download buttons: "Download report" on the overview (the file
``xaidash report`` writes) and "Download" on the gallery (CSV of exactly the rows the gallery's
current filter shows, every page of them, in its order).

Each button is a plain component placed by its page (:mod:`xaidash.dashboard.report.buttons`, which
imports no page) plus a ``dcc.Download``; the callbacks here read the
page's URL, the single source of the page's state, so the file matches what the page shows. The
file builders are plain functions of (app state, URL query), unit-tested without a browser.
"""

from __future__ import annotations

import re
from typing import Any

import dash
from dash import Input, Output, State, no_update

from xaidash.dashboard import inputs
from xaidash.dashboard.pages.gallery.page import gallery_query
from xaidash.dashboard.params import parse_query
from xaidash.dashboard.report.build import build_report
from xaidash.dashboard.report.buttons import GALLERY_BUTTON, GALLERY_DOWNLOAD, REPORT_BUTTON, REPORT_DOWNLOAD
from xaidash.dashboard.state import AppState
from xaidash.store.export import gallery_rows

_SAFE = re.compile(r"[^0-9A-Za-z_.-]+")


def report_file(state: AppState, search: str | None) -> dict[str, Any] | None:
    """``dcc.Download`` data of the report of the run in the URL (None for a store without runs)."""
    resolved = state.data.resolve_run(parse_query(search).run)
    if resolved.info is None:
        return None
    report = build_report(state.data.reader, resolved.info.run_id, show_paths=state.show_paths)
    return {
        "content": report.html,
        "filename": f"xaidash-report-{_SAFE.sub('_', report.run_id)}.html",
        "type": "text/html",
        "base64": False,
    }


def gallery_file(state: AppState, search: str | None) -> dict[str, Any] | None:
    """``dcc.Download`` data of the CSV of the gallery's rows for the URL's filters."""
    f = parse_query(search)
    resolved = state.data.resolve_run(f.run)
    if resolved.info is None:
        return None
    selection = state.selections.get(f.sel) if f.sel else f.ids
    rows = gallery_rows(state.data.reader, resolved.info.run_id, gallery_query(f, selection))
    name = f"xaidash-gallery-{_SAFE.sub('_', resolved.info.run_id)}.csv"
    return {"content": rows.to_csv(index=False), "filename": name, "type": "text/csv", "base64": False}


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    """One click, one file."""

    @app.callback(
        Output(REPORT_DOWNLOAD, "data"),
        Input(REPORT_BUTTON, "n_clicks"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.integer(), inputs.URL_PART)
    def download_report(clicks: int | None, search: str | None) -> Any:
        return (report_file(state, search) if clicks else None) or no_update

    @app.callback(
        Output(GALLERY_DOWNLOAD, "data"),
        Input(GALLERY_BUTTON, "n_clicks"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(inputs.integer(), inputs.URL_PART)
    def download_gallery(clicks: int | None, search: str | None) -> Any:
        return (gallery_file(state, search) if clicks else None) or no_update
