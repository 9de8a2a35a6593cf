"""Dash component trees -> static HTML, so the offline report is built from the very blocks the
overview renders (headline cards, tables, trust sections) instead of a second copy of them.

Covers what the pages use: every ``dash.html`` element, the Bootstrap layout components (Card,
Row/Col, Alert, Badge, Table) as the classes they render to, ``dcc.Graph`` as a Plotly div drawn
by the one inline plotly.js, and ``dcc.Link`` as its text (a link into a running dashboard means
nothing in a file). Interactive controls (radio items, dropdowns, sliders) are left out: the
report is a snapshot.
"""

from __future__ import annotations

import html as html_lib
import json
import re
from collections.abc import Callable
from itertools import count
from typing import Any

import plotly.io as pio
from dash.development.base_component import Component

#: dash_bootstrap_components that are controls, not content
_DROPPED = {
    "RadioItems",
    "Checklist",
    "Dropdown",
    "Slider",
    "RangeSlider",
    "Input",
    "Button",
    "Download",
    "Store",
    "Interval",
    "Location",
    "Tooltip",
    "Popover",
    "Collapse",
    "Switch",
    "Select",
}
_VOID = {"img", "br", "hr", "meta", "input"}
_ATTRS = {
    "id": "id",
    "src": "src",
    "href": "href",
    "title": "title",
    "alt": "alt",
    "colSpan": "colspan",
    "rowSpan": "rowspan",
    "width": "width",
    "height": "height",
    "target": "target",
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _style(style: dict[str, Any]) -> str:
    return ";".join(f"{_CAMEL.sub('-', k).lower()}:{v}" for k, v in style.items())


def _tag(name: str, props: dict[str, Any], classes: list[str], inner: str) -> str:
    attrs = []
    cls = " ".join(c for c in [*classes, str(props.get("className") or "")] if c).strip()
    if cls:
        attrs.append(f'class="{html_lib.escape(cls)}"')
    for prop, attr in _ATTRS.items():
        v = props.get(prop)
        if v is not None and not (name == "img" and prop in ("width", "height") and isinstance(v, str)):
            attrs.append(f'{attr}="{html_lib.escape(str(v))}"')
    if isinstance(props.get("style"), dict):
        attrs.append(f'style="{html_lib.escape(_style(props["style"]))}"')
    open_tag = f"<{name}{' ' if attrs else ''}{' '.join(attrs)}>"
    return open_tag if name in _VOID else f"{open_tag}{inner}</{name}>"


def _col_classes(props: dict[str, Any]) -> list[str]:
    out = []
    for bp in ("xs", "sm", "md", "lg", "xl", "width"):
        v = props.get(bp)
        prefix = "col" if bp in ("xs", "width") else f"col-{bp}"
        if v is True:
            out.append(prefix)
        elif isinstance(v, int):
            out.append(f"{prefix}-{v}")
    return out or ["col"]


class Renderer:
    """One report's serializer: numbers the Plotly divs and lets ``graph`` draw each figure."""

    def __init__(self, graph: Callable[[Any, str], str] | None = None) -> None:
        self._ids = count()
        self.graph = graph or self.plotly_div

    def plotly_div(self, figure: Any, div_id: str) -> str:
        """The figure as a div plus the script that draws it with the page's plotly.js."""
        fig = pio.from_json(json.dumps(figure, cls=_PlotlyEncoder)) if isinstance(figure, dict) else figure
        return str(
            pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,
                div_id=div_id,
                config={"displayModeBar": False, "responsive": True},
            )
        )

    def render(self, node: Any) -> str:
        """HTML of a component, a string, a number or a list of them (None renders as nothing)."""
        if node is None or node is False:
            return ""
        if isinstance(node, (list, tuple)):
            return "".join(self.render(n) for n in node)
        if isinstance(node, Component):
            return self._component(node)
        return html_lib.escape(str(node))

    def _component(self, c: Component) -> str:
        kind, ns = type(c).__name__, getattr(c, "_namespace", "")
        props: dict[str, Any] = {k: getattr(c, k) for k in c._prop_names if getattr(c, k, None) is not None}
        inner = self.render(props.get("children"))
        if ns == "dash_html_components":
            return _tag(kind.lower(), props, [], inner)
        if ns == "dash_core_components":
            if kind == "Graph":
                div_id = f"xd-fig-{next(self._ids)}"
                return f'<div class="xd-graph">{self.graph(props.get("figure") or {}, div_id)}</div>'
            if kind == "Link":
                return _tag("span", {"className": props.get("className")}, [], inner)
            if kind == "Markdown":
                return _tag("div", props, [], html_lib.escape(str(props.get("children") or "")))
            return ""
        if kind in _DROPPED:
            return ""
        classes = {
            "Card": ["card"],
            "CardHeader": ["card-header"],
            "CardBody": ["card-body"],
            "CardFooter": ["card-footer"],
            "Row": ["row"],
            "Container": ["container-fluid"],
            "ListGroup": ["list-group"],
            "ListGroupItem": ["list-group-item"],
            "Label": ["form-label"],
        }
        if kind == "Col":
            return _tag("div", props, _col_classes(props), inner)
        if kind == "Alert":
            return _tag("div", props, ["alert", f"alert-{props.get('color') or 'primary'}"], inner)
        if kind == "Badge":
            return _tag("span", props, ["badge", f"text-bg-{props.get('color') or 'secondary'}"], inner)
        if kind == "Table":
            flags = [f"table-{f}" for f in ("striped", "bordered", "hover") if props.get(f)]
            size = ["table-sm"] if props.get("size") == "sm" else []
            return _tag("table", props, ["table", *flags, *size], inner)
        return _tag("div", props, classes.get(kind, []), inner)


class _PlotlyEncoder(json.JSONEncoder):
    """Figures stored as dicts may hold numpy values."""

    def default(self, o: Any) -> Any:
        import plotly.utils

        return json.loads(json.dumps(o, cls=plotly.utils.PlotlyJSONEncoder))
