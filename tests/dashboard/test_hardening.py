"""Every request a browser (or a script) can send gets a clear answer.

- wrongly typed callback values answer "no update" (Dash 4: 200 with an empty response), or a
  visible message, never 500, and not by way of the last-resort error handler (item 5);
- a body that is not a callback request of this app answers 400, never 500 (item 5);
- an oversized request is refused with 413 before its body is read (item 6).

Uploads decoded like compute decodes them (items 7, 8): test_explain_upload.py; the same
properties over thousands of generated inputs: test_fuzz.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import create_environ, run_wsgi_app

from tests.support.dash_testing import CountingStream
from tests.support.fuzzing import (
    ENDPOINT,
    callback_body,
    dependency_names,
    errors_logged,
    find_key,
    is_no_update,
    post_json,
    post_values,
)
from xaidash.dashboard.pages import explain

IID = "0123456789abcdef"  # shaped like an image id (not in the store)

HOVER, CLICK, SELECT = (
    "embedding-graph.hoverData",
    "embedding-graph.clickData",
    "embedding-graph.selectedData",
)
CONFUSION, UPLOAD, PATH = "overview-confusion.clickData", "explain-upload.contents", "url.pathname"

# (output, trigger, values): each value one no component sends; unnamed inputs are None, the URL "".
TYPE_PROBES: list[tuple[str, str, dict[str, Any]]] = [
    # the embedding map's hover, click and selection handlers, and its controls
    ("embedding-hover.children", HOVER, {HOVER: 3.5}),
    ("embedding-hover.children", HOVER, {HOVER: {"points": 1}}),
    ("embedding-hover.children", HOVER, {HOVER: {"points": [1]}}),
    ("embedding-hover.children", HOVER, {HOVER: {"points": [{"customdata": IID}]}, "url.search": [1]}),
    ("embedding-pinned.children", CLICK, {CLICK: {"points": "ab"}}),
    ("embedding-pinned.children", CLICK, {CLICK: {"points": [{"customdata": IID}]}, "url.search": {}}),
    ("embedding-selection.children", SELECT, {SELECT: [1]}),
    ("url.search", "embedding-color.value", {"embedding-color.value": ["true"]}),
    # the overview's confusion-matrix click and normalisation toggle
    ("url.href", CONFUSION, {CONFUSION: 3.5}),
    ("url.href", CONFUSION, {CONFUSION: {"points": "ab"}}),
    ("url.href", CONFUSION, {CONFUSION: {"points": [{"customdata": [float("inf"), 1]}]}}),
    ("url.search", "overview-norm.value", {"overview-norm.value": "norm", "url.search": 7}),
    # the gallery's size, opacity, confidence and page values
    *(
        ("url.search", "gallery-size.value", {"gallery-size.value": v})
        for v in ("abc", [24], {"n": 24}, 12.5)
    ),
    *(("url.search", "gallery-alpha.value", {"gallery-alpha.value": v}) for v in ("x", [], float("nan"))),
    *(
        ("url.search", "gallery-conf.value", {"gallery-conf.value": v})
        for v in ([0.1], "ab", {"a": 1}, [0.1, "x"])
    ),
    *(
        ("url.search", "gallery-pagination.active_page", {"gallery-pagination.active_page": v})
        for v in ("x", [2], float("inf"))
    ),
    # the compare page's page number and the image page's display controls
    *(
        ("url.search", "compare-pagination.active_page", {"compare-pagination.active_page": v})
        for v in ("x", [3])
    ),
    ("url.search", "image-alpha.value", {"image-alpha.value": "x"}),
    # upload contents that are not a string
    *(
        ("explain-result.children", UPLOAD, {UPLOAD: v})
        for v in (5, {"a": 1}, ["data:image/png;base64,AAAA"])
    ),
    # the router's pathname, search and rendered state; the run picker
    ("page-content.children", PATH, {PATH: 5}),
    ("page-content.children", PATH, {PATH: "/gallery", "url.search": 5}),
    ("page-content.children", PATH, {PATH: "/gallery", "rendered.data": [1]}),
    ("url.search", "nav-run.value", {"nav-run.value": 3.5, "url.search": {"path": 1}}),
    # strings JSON can carry but UTF-8 cannot: a lone surrogate (found by test_fuzz)
    ("url.search", "embedding-color.value", {"embedding-color.value": "\ud800"}),
    ("url.search", "embedding-train.value", {"embedding-train.value": ["train", "\udfff"]}),
    ("url.search", "gallery-sort.value", {"gallery-sort.value": "a\ud800"}),
    ("url.search", "compare-a.value", {"compare-a.value": "\ud800"}),
    ("url.search", "image-cmap.value", {"image-cmap.value": "\ud800"}),
    ("page-content.children", PATH, {PATH: "/gallery", "url.search": "?outcome=\ud800"}),
]


@pytest.mark.parametrize(("output", "trigger", "given"), TYPE_PROBES)
def test_wrongly_typed_callback_values_answer_no_update(
    client: Any, app: Any, output: str, trigger: str, given: dict[str, Any]
) -> None:
    key = find_key(app, output, trigger)
    names = dependency_names(app, key)
    values = [given.get(n, "" if n == "url.search" else None) for n in names]
    with errors_logged() as log:
        resp = post_values(client, app, key, values, names.index(trigger))
    assert is_no_update(resp), (resp.status_code, resp.data[:300])
    assert not log.records, log.messages()  # answered on purpose, not by the last-resort handler


@pytest.mark.parametrize(
    "selected",
    [
        {"lassoPoints": {"x": [1, 2, 3]}},
        {"lassoPoints": {"x": [1, 2, "a"], "y": [1, 2, 3]}},
        {"lassoPoints": {"x": [1, 2, 3], "y": [1, 2]}},
        {"range": {"x": [1], "y": [1, 2]}},
        {"range": {"x": [0, float("nan")], "y": [1, 2]}},
        {"points": [1, None, {"customdata": {"a": 1}}]},
    ],
)
def test_malformed_selection_says_nothing_is_selected(client: Any, app: Any, selected: Any) -> None:
    key = find_key(app, "embedding-selection.children")
    with errors_logged() as log:
        resp = post_values(client, app, key, [selected, ""])
    assert resp.status_code == 200 and "No validation images in that region" in resp.get_data(as_text=True)
    assert not log.records, log.messages()


def test_router_renders_over_a_garbled_rendered_state(client: Any, app: Any) -> None:
    key = find_key(app, "page-content.children")
    with errors_logged() as log:
        resp = post_values(client, app, key, ["/embedding", "?train=1", {"path": "/embedding", "search": 5}])
    assert resp.status_code == 200 and "embedding-page" in resp.get_data(as_text=True)
    assert not log.records, log.messages()


def test_right_type_out_of_range_values_are_defaulted_like_the_url(client: Any, app: Any) -> None:
    key = find_key(app, "url.search", "gallery-size.value")
    values = [10**6, -1, "nope", [-5, 9], "nope", ["desc", "x"], "lime", ["nope", "../x"], 13, "nocmap", 7.0,
              3, "?size=48"]
    resp = post_values(client, app, key, values, 8)
    assert resp.status_code == 200
    # every bad value fell back to its default; only "desc" (a real option) survived
    assert json.loads(resp.data)["response"]["url"] == {"search": "?desc=1"}


def _bodies(app: Any) -> list[Any]:
    hover = find_key(app, "embedding-hover.children")
    good = callback_body(app, hover, [{"points": [{"customdata": IID}]}, ""])
    # Dash hands the global (dash.callback) ones, e.g. dash-bootstrap-templates', to the first app only
    clientside = [k for k, v in app.callback_map.items() if "callback" not in v]
    return [
        b"null",
        b"[]",
        b"1",
        b'"x"',
        b"{}",
        b"not json",
        b"[" * 100_000,  # deeper than Python's JSON parser recurses
        {"output": 1},
        {"output": "nope.children", "outputs": {"id": "nope", "property": "children"}, "inputs": []},
        {k: v for k, v in good.items() if k != "outputs"},
        {**good, "outputs": [good["outputs"]]},
        {**good, "outputs": {"id": "embedding-hover", "property": "style"}},
        {**good, "inputs": good["inputs"] + good["inputs"]},
        {**good, "inputs": []},
        {**good, "inputs": {"id": "embedding-graph"}},
        {**good, "inputs": [{"id": "embedding-graph", "property": "clickData", "value": None}]},
        {**good, "state": [1]},
        {**good, "state": None},
        {**good, "changedPropIds": "embedding-graph.hoverData"},
        {**good, "changedPropIds": ["{bad json.value"]},
        {**good, "changedPropIds": [7]},
        *({"output": k, "outputs": {"id": "x", "property": "id"}, "inputs": []} for k in clientside),
    ]


def test_malformed_callback_bodies_answer_400(client: Any, app: Any) -> None:
    with errors_logged() as log:
        answers = [(body if isinstance(body, bytes) else json.dumps(body))[:80] for body in _bodies(app)]
        codes = [post_json(client, body).status_code for body in _bodies(app)]
    assert codes == [400] * len(codes), list(zip(answers, codes, strict=True))
    assert not log.records, log.messages()
    # and a well-formed one still works
    hover = find_key(app, "embedding-hover.children")
    assert is_no_update(post_json(client, callback_body(app, hover, [None, ""])))


def test_the_400_names_what_is_wrong(client: Any) -> None:
    resp = post_json(client, b"null")
    assert resp.status_code == 400 and b"JSON object" in resp.data


# ---------------------------------------------------------------- request size (item 6)


def test_request_size_limit_sits_just_above_the_upload_limit(app: Any) -> None:
    limit = app.server.config.get("MAX_CONTENT_LENGTH")
    b64 = (explain.MAX_UPLOAD_BYTES + 2) // 3 * 4  # a 10 MB file as a data URL
    assert limit is not None and b64 < limit < b64 + 1024 * 1024


def test_oversized_request_is_refused_before_it_is_read(client: Any, app: Any) -> None:
    n = 400 * 1024 * 1024  # the issue's 419 MB POST
    body = CountingStream(n)
    environ = create_environ(ENDPOINT, method="POST", content_type="application/json")
    environ.update({"wsgi.input": body, "CONTENT_LENGTH": str(n)})
    _, status, _ = run_wsgi_app(app.server, environ, buffered=True)
    assert status.startswith("413")
    assert body.read_bytes == 0


def test_largest_upload_passes_the_size_limit(client: Any, app: Any) -> None:
    key = find_key(app, "explain-result.children")
    contents = "data:image/png;base64," + "A" * (explain.MAX_UPLOAD_BYTES // 3 * 4)  # just under 10 MB
    resp = post_values(client, app, key, [contents, "big.png", ""])
    assert resp.status_code == 200
    assert "not an image Pillow can read" in resp.get_data(as_text=True)  # 10 MB of zeros
