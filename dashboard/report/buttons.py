"""The download buttons the overview and the gallery place (layout only: the callbacks and the
files are in :mod:`xaidash.dashboard.report.downloads`, which imports the pages)."""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import dcc, html

REPORT_BUTTON = "overview-report-button"
REPORT_DOWNLOAD = "overview-report-download"
GALLERY_BUTTON = "gallery-download-button"
GALLERY_DOWNLOAD = "gallery-download"


def report_button() -> Any:
    """The overview's button (and its download target)."""
    return html.Div(
        [
            dbc.Button(
                "Download report",
                id=REPORT_BUTTON,
                color="primary",
                outline=True,
                size="sm",
                title="one self-contained HTML file of this run: opens offline, makes no request",
            ),
            dcc.Loading(dcc.Download(id=REPORT_DOWNLOAD), type="dot"),
        ],
        className="d-flex gap-2 align-items-center",
    )


def gallery_button(total: int) -> Any:
    """The gallery's button (and its download target): CSV of the ``total`` rows the filter shows."""
    return html.Div(
        [
            dbc.Button(
                f"Download {total:,} rows (CSV)",
                id=GALLERY_BUTTON,
                color="secondary",
                outline=True,
                size="sm",
                disabled=total == 0,
                title="the rows of the current filter, all pages: source, labels, prediction, "
                "confidence, flags",
            ),
            dcc.Download(id=GALLERY_DOWNLOAD),
        ],
        className="mb-2",
    )
