"""The "controls -> URL" callback every page registers: controls write the query string, and the
router re-renders the page from it, so a page's state is always a shareable link."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dash
from dash import Input, Output, State, ctx, no_update

from xaidash.dashboard import inputs

#: one control: its component id, the property the callback reads, and that value's coercion
Control = tuple[str, str, inputs.Coercer]

#: ``(search, triggering component id, *control values)`` -> the new query string, None if unchanged
ToSearch = Callable[..., str | None]


def controls_to_url(app: dash.Dash, controls: Sequence[Control], to_search: ToSearch) -> None:
    """Register the callback writing ``controls`` into the URL's query string.

    The values arrive typed (see :func:`xaidash.dashboard.inputs.typed`); a None from
    ``to_search`` answers "no update", so an unchanged URL does not re-render the page.
    """

    @app.callback(
        Output("url", "search", allow_duplicate=True),
        *[Input(cid, prop) for cid, prop, _ in controls],
        State("url", "search"),
        prevent_initial_call=True,
    )
    @inputs.typed(*[coerce for _, _, coerce in controls], inputs.URL_PART)
    def write_url(*args: object) -> object:
        *values, search = args
        new = to_search(search, ctx.triggered_id, *values)
        return no_update if new is None else new
