"""The HTTP boundary in front of Dash: a request-size limit and the shape of callback requests.

Dash trusts the body of ``POST /_dash-update-component``: a JSON ``null``, an array, a missing
``outputs`` or one input too few is a ``KeyError`` or ``TypeError`` deep inside Dash, i.e. a 500.
:func:`install` checks, before Dash reads it, that the body is what the renderer sends for one
of this app's server-side callbacks - its outputs, inputs and states, in the declared order,
and ``changedPropIds`` among its inputs - and answers 400 with the reason otherwise. What the
values *are* is each callback's business (:mod:`xaidash.dashboard.inputs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import dash
from flask import Flask, Response, request

from xaidash.dashboard.pages.explain import MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

#: Flask's ``MAX_CONTENT_LENGTH``: the largest request body. The largest legitimate one is an
#: upload of MAX_UPLOAD_BYTES sent as a base64 data URL (4 bytes per 3) inside the callback's
#: JSON; 256 KiB more covers the data-URL header, the file name, the URL and the JSON around
#: them. Werkzeug compares it with ``Content-Length`` before reading the body (413), and stops
#: a chunked body at the limit, so an oversized POST costs no memory.
MAX_REQUEST_BYTES = (MAX_UPLOAD_BYTES + 2) // 3 * 4 + 256 * 1024

WILDCARDS = ("MATCH", "ALL", "ALLSMALLER")


def _parse_id(dep_id: str) -> str | dict[str, Any]:
    """A declared dependency id: a string, or a pattern-matching dict (``{"k": ["MATCH"], ...}``)."""
    if dep_id.startswith("{"):
        parsed = json.loads(dep_id)
        if isinstance(parsed, dict):
            return parsed
    return dep_id


def _is_wild(value: object) -> bool:
    return isinstance(value, list) and len(value) == 1 and value[0] in WILDCARDS


def _id_matches(declared: str | dict[str, Any], sent: object) -> bool:
    if isinstance(declared, str):
        return sent == declared
    if not isinstance(sent, dict) or set(sent) != set(declared):
        return False
    for key, want in declared.items():
        got = sent[key]
        if _is_wild(want):
            if isinstance(got, bool) or not isinstance(got, str | int | float):
                return False
        elif got != want:
            return False
    return True


def _item_problem(declared: Mapping[str, Any], sent: object, what: str) -> str | None:
    """Why ``sent`` is not the request item for the declared dependency (None when it is)."""
    dep_id, prop = _parse_id(str(declared["id"])), str(declared["property"]).split("@", 1)[0]
    if isinstance(dep_id, dict) and any(_is_wild(v) and v[0] != "MATCH" for v in dep_id.values()):
        # ALL / ALLSMALLER: a list of matching items
        if not isinstance(sent, list):
            return f"{what} must be a list"
        return next((p for s in sent if (p := _item_problem(_single(declared), s, what))), None)
    if not isinstance(sent, dict):
        return f"{what} must be an object"
    sent_prop = sent.get("property")
    if not isinstance(sent_prop, str) or sent_prop.split("@", 1)[0] != prop:
        return f"{what} must be property {prop!r}"
    if not _id_matches(dep_id, sent.get("id")):
        return f"{what} is not component {declared['id']!r}"
    return None


def _single(declared: Mapping[str, Any]) -> dict[str, Any]:
    """An ALL/ALLSMALLER dependency as one of its items (the wildcards as MATCH)."""
    dep_id = _parse_id(str(declared["id"]))
    assert isinstance(dep_id, dict)
    one = {k: (["MATCH"] if _is_wild(v) else v) for k, v in dep_id.items()}
    return {"id": json.dumps(one), "property": declared["property"]}


def _items_problem(declared: list[dict[str, Any]], sent: object, what: str) -> str | None:
    if not isinstance(sent, list):
        return f"{what} must be a list"
    if len(sent) != len(declared):
        return f"{what}: {len(declared)} expected, {len(sent)} sent"
    for i, (dep, item) in enumerate(zip(declared, sent, strict=True)):
        if problem := _item_problem(dep, item, f"{what}[{i}]"):
            return problem
    return None


def _prop_id(item: Mapping[str, Any]) -> str:
    from dash._utils import stringify_id

    return f"{stringify_id(item['id'])}.{item['property']}"


def callback_problem(app: dash.Dash, body: object) -> str | None:
    """Why ``body`` is not a callback request of ``app`` (None when it is one)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    key = body.get("output")
    spec = app.callback_map.get(key) if isinstance(key, str) else None
    if spec is None or "callback" not in spec:  # unknown, or a clientside callback
        return "'output' names no server-side callback of this app"
    if not spec.get("no_output"):
        outs = spec["output"]
        declared = [
            {"id": o.component_id_str(), "property": o.component_property}
            for o in (outs if isinstance(outs, list) else [outs])
        ]
        sent = body.get("outputs")
        problem = (
            _items_problem(declared, sent, "outputs")
            if isinstance(outs, list)
            else _item_problem(declared[0], sent, "outputs")
        )
        if problem:
            return problem
    inputs = body.get("inputs")
    problem = _items_problem(spec["inputs"], inputs, "inputs") or _items_problem(
        spec["state"], body.get("state", []), "state"
    )
    if problem:
        return problem
    assert isinstance(inputs, list)
    changed = body.get("changedPropIds", [])
    flat = [i for item in inputs for i in (item if isinstance(item, list) else [item])]
    known = {_prop_id(i) for i in flat}
    if not isinstance(changed, list) or not all(isinstance(c, str) and c in known for c in changed):
        return "'changedPropIds' must list some of the callback's inputs"
    return None


def install(app: dash.Dash) -> None:
    """Set the request-size limit and check every callback request before Dash reads it."""
    server: Flask = app.server
    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    endpoint = app.config.routes_pathname_prefix + "_dash-update-component"

    @server.before_request
    def check_callback_request() -> Response | None:
        if request.path != endpoint or request.method != "POST":
            return None
        try:
            body = request.get_json(silent=True)  # cached: Dash's own get_json does not parse again
        except RecursionError:  # nested deeper than Python's parser goes
            body = None
        problem = callback_problem(app, body)
        if problem is None:
            return None
        log.info("refused a callback request: %s", problem)
        return Response(
            json.dumps({"error": f"not a callback request of this app: {problem}"}),
            status=400,
            mimetype="application/json",
        )
