"""The HTTP boundary in front of Dash: a request-size limit, the shape of callback requests and
a 404 for unknown assets.

Dash trusts the body of ``POST /_dash-update-component``: a JSON ``null``, an array, a missing
``outputs`` or one input too few is a ``KeyError`` or ``TypeError`` deep inside Dash, i.e. a 500.
:func:`install` checks, before Dash reads it, that the body is what the renderer sends for one
of this app's server-side callbacks - its outputs, inputs and states, in the declared order,
and ``changedPropIds`` among its inputs - and answers 400 with the reason otherwise. What the
values *are* is each callback's business (:mod:`xaidash.dashboard.inputs`).

Dash answers an unknown file under ``/_dash-component-suites/`` (a package it does not serve, a
path not in the package, ``..``) by raising ``DependencyException``; :func:`install` maps it to
404, the answer for a file that is not there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import dash
from dash.exceptions import DependencyException
from flask import Flask, Response, request

from xaidash.dashboard.pages.explain import MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

#: Flask's ``MAX_CONTENT_LENGTH``: the largest request body. The largest legitimate one is an
#: upload of MAX_UPLOAD_BYTES sent as a base64 data URL (4 bytes per 3) inside the callback's
#: JSON; 256 KiB more covers the data-URL header, the file name, the URL and the JSON around
#: them. Werkzeug compares it with ``Content-Length`` before reading the body (413); a chunked
#: body, which has no length, it cuts at the limit, and :func:`body_over_limit` says whether
#: more was sent. Either way an oversized POST costs no memory.
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


def body_over_limit(data: bytes, limit: int) -> bool:
    """True when the request body went past ``limit``: Werkzeug returns the first ``limit``
    bytes of a body without ``Content-Length`` (chunked) instead of refusing it, so one more
    byte is asked of the server's (de-chunked) input."""
    if request.content_length is not None or len(data) < limit:
        return False
    try:
        return bool(request.environ["wsgi.input"].read(1))
    except (OSError, ValueError):  # the client went away: nothing more was sent
        return False


def error_reply(status: int, message: str, close: bool = False) -> Response:
    """A complete JSON error reply; ``close`` when the rest of the body was not read, so the
    connection cannot carry another request."""
    resp = Response(json.dumps({"error": message}), status=status, mimetype="application/json")
    if close:
        resp.headers["Connection"] = "close"
    return resp


def install(app: dash.Dash) -> None:
    """Set the request-size limit, check every callback request before Dash reads it, and answer
    unknown assets 404."""
    server: Flask = app.server
    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    endpoint = app.config.routes_pathname_prefix + "_dash-update-component"

    @server.errorhandler(DependencyException)
    def unknown_asset(exc: DependencyException) -> Response:
        log.info("no such asset: %s", request.path[:200])
        return Response("Not Found", status=404, mimetype="text/plain")

    @server.before_request
    def check_callback_request() -> Response | None:
        if request.path != endpoint or request.method != "POST":
            return None
        limit = int(server.config["MAX_CONTENT_LENGTH"])
        if body_over_limit(request.get_data(cache=True), limit):
            log.info("refused a chunked callback request over %d bytes", limit)
            return error_reply(413, f"the request body is over the limit of {limit:,} bytes", close=True)
        try:
            body = request.get_json(silent=True)  # cached: Dash's own get_json does not parse again
        except RecursionError:  # nested deeper than Python's parser goes
            body = None
        problem = callback_problem(app, body)
        if problem is None:
            return None
        log.info("refused a callback request: %s", problem)
        return error_reply(400, f"not a callback request of this app: {problem}")
