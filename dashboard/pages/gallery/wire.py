"""Dash components in their JSON wire form, for the page parts that repeat one small subtree many times.

The browser's renderer only ever sees a component as ``{"type", "namespace", "props"}``. A Dash
component object costs tens of microseconds to build (argument checks, prop bookkeeping in
``dash.development.base_component``) and as much again to serialise; a gallery page holds ~600 of
them, about half of its first render's CPU (``bench/serve_cost.py``; cProfile of the load mix). The
gallery's rows are built with these functions, everything else with Dash's classes. Each function
gives exactly what Dash's own class serialises to (``tests/dashboard/test_wire.py``); Dash checks no
prop of these at run time in production either, so nothing is lost but the objects.
"""

from __future__ import annotations

from typing import Any

#: A component as Dash sends it: {"type": ..., "namespace": ..., "props": {...}}.
Node = dict[str, Any]

HTML = "dash_html_components"
DCC = "dash_core_components"
DBC = "dash_bootstrap_components"


def node(namespace: str, type_: str, children: Any = None, **props: Any) -> Node:
    """Any component: ``props`` whose value is None are left out, as Dash leaves out unset props."""
    out = {k: v for k, v in props.items() if v is not None}
    out["children"] = children
    return {"props": out, "type": type_, "namespace": namespace}


def div(children: Any = None, **props: Any) -> Node:
    return node(HTML, "Div", children, **props)


def span(children: Any = None, **props: Any) -> Node:
    return node(HTML, "Span", children, **props)


def b(children: Any = None, **props: Any) -> Node:
    return node(HTML, "B", children, **props)


def img(**props: Any) -> Node:
    return node(HTML, "Img", None, **props)


def link(children: Any = None, **props: Any) -> Node:
    """``dcc.Link``: navigation inside the app without a page load."""
    return node(DCC, "Link", children, **props)


def badge(children: Any = None, **props: Any) -> Node:
    """``dbc.Badge``."""
    return node(DBC, "Badge", children, **props)
