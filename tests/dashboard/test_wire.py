"""The wire form of a component is exactly what Dash's own class serialises to."""

from __future__ import annotations

import json
from typing import Any

import dash_bootstrap_components as dbc
import plotly
import pytest
from dash import dcc, html

from xaidash.dashboard.components import (
    correctness_badge,
    correctness_badge_props,
    missing_map,
    missing_map_props,
    overlay_img,
    overlay_img_props,
    thumb_img,
    thumb_img_props,
)
from xaidash.dashboard.pages.gallery import wire
from xaidash.dashboard.params import Filters


def dash_json(c: Any) -> Any:
    return json.loads(json.dumps(c, cls=plotly.utils.PlotlyJSONEncoder))


@pytest.mark.parametrize(("built", "expected"), [
    (wire.div(["a", None, wire.b("x")], className="s", id={"type": "r", "index": "1"}),
     html.Div(["a", None, html.B("x")], className="s", id={"type": "r", "index": "1"})),
    (wire.span("t", className="text-muted"), html.Span("t", className="text-muted")),
    (wire.img(src="/x", alt="a", title="t", className="c"),
     html.Img(src="/x", alt="a", title="t", className="c")),
    (wire.link(wire.div("x"), href="/h", className="l"), dcc.Link(html.Div("x"), href="/h", className="l")),
    (wire.badge("w", color="danger", className="me-1", title=""),
     dbc.Badge("w", color="danger", className="me-1", title="")),
    (wire.div(None), html.Div()),
])
def test_wire_nodes_equal_dash_serialisation(built: wire.Node, expected: Any) -> None:
    assert dash_json(built) == dash_json(expected)


@pytest.mark.parametrize("correct", [True, False, None, float("nan")])
def test_the_shared_props_give_the_same_badge_both_ways(correct: object) -> None:
    assert dash_json(wire.badge(**correctness_badge_props(correct))) == dash_json(correctness_badge(correct))


def test_the_shared_props_give_the_same_images_both_ways() -> None:
    f = Filters(run="r1")
    assert dash_json(wire.img(**thumb_img_props("r1", "0" * 16))) == dash_json(thumb_img("r1", "0" * 16))
    assert dash_json(wire.img(**overlay_img_props("r1", "0" * 16, "gradcampp", f))) == dash_json(
        overlay_img("r1", "0" * 16, "gradcampp", f))
    assert dash_json(wire.div(**missing_map_props(className="c"))) == dash_json(missing_map(className="c"))
