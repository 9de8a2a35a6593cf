"""Placeholder."""

from __future__ import annotations

from typing import Any

import dash
from dash import html

from dashboard.state import AppState, PageContext


def layout(ctx: PageContext) -> Any:
    return html.Div("todo")


def register_callbacks(app: dash.Dash, state: AppState) -> None:
    return None
