"""Property-based fuzzing (Hypothesis): no callback input and no route parameter gives a 500.

Every server-side callback of the app is posted with values drawn, per Input and State, from
what its component really sends (ids of this store, class indices, plotly events, query
strings) mixed with any JSON value at all (NaN and infinities included). The callback request
itself is mutated too (keys dropped or replaced), and the image and theme routes get random
path segments and query values. Each example must answer below 500 and log no error (an error
logged is an exception some last-resort handler swallowed).

Reproducible (``derandomize=True``, no example database). Examples per target: :data:`EXAMPLES`
(2,000 per callback), except the few in :data:`FEWER` that cost more per example or are not
ours; ``XAIDASH_FUZZ_EXAMPLES=N`` runs N for every target. Timings: docs/DASHBOARD.md ("Fuzzing").
"""

from __future__ import annotations

import base64
import os
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzzing import (
    callback_body,
    dependency_names,
    errors_logged,
    json_values,
    post_json,
    server_callbacks,
)
from xaidash.constants import METHODS, OUTCOMES, QUALITY_FLAGS, SORTS, TARGET_KINDS
from xaidash.dashboard.overlays import COLORMAPS
from xaidash.dashboard.params import CHANGES, COLOR_BY, PAGE_SIZES
from xaidash.dashboard.theme import THEMES

EXAMPLES = 2000
#: targets run with fewer examples by default, and why
FEWER: dict[str, int] = {
    # dash-bootstrap-templates' one-line toggle, not our code
    "theme-toggle": 500,
    # not callbacks: the request envelope and the image routes
    "request-shape": 1000,
    "routes": 1000,
    # each example with a click builds the whole run report (seconds on 2 cores)
    "overview-report-download.data": 20,
    # each example with a click writes the CSV of every matching row
    "gallery-download.data": 300,
}
_FORCED = os.environ.get("XAIDASH_FUZZ_EXAMPLES")


def fuzz(target: str) -> settings:
    """Hypothesis settings for one target: its example count, reproducible, no deadline."""
    n = int(_FORCED) if _FORCED else FEWER.get(target, EXAMPLES)
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


Strategy = st.SearchStrategy[Any]


class Ids:
    """What a plausible value refers to: the store's runs, images and classes."""

    def __init__(self, state: Any) -> None:
        self.runs = list(state.data.run_ids())
        run = self.runs[0]
        pts = state.data.embedding_points(run, True)
        self.images = [str(i) for i in pts["image_id"].head(40)]
        self.classes = list(state.data.run(run).class_names)


def _maybe(s: Strategy) -> Strategy:
    """``s``, or any JSON value in its place (one draw in four)."""
    return st.one_of(s, s, s, json_values)


def _finite() -> Strategy:
    return st.floats(-10, 10, allow_nan=False)


#: every key a page reads from the query string, and one no page reads
QUERY_KEYS = (
    *("run", "true", "pred", "outcome", "cmin", "cmax", "sort", "desc", "method", "sel", "ids", "page"),
    *("size", "cmap", "alpha", "id", "color", "train", "norm", "a", "b", "change", "flag", "x"),
    "methods",
)


def search_strategy(ids: Ids) -> Strategy:
    """Query strings over the keys the pages read, with plausible and garbage values."""
    value = st.one_of(
        st.sampled_from(
            [*ids.runs, *ids.images, *OUTCOMES, *SORTS, *METHODS, *COLORMAPS, *COLOR_BY, *CHANGES,
             *QUALITY_FLAGS, "-", "gradcam,scorecam", "scorecam,nope,cam", ",,", "ig_black"]
        ),
        st.integers(-5, 200).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(max_size=12),
    )
    keys = st.sampled_from(QUERY_KEYS)
    query = st.dictionaries(keys, value, max_size=6).map(lambda d: "?" + urlencode(d))
    return _maybe(st.one_of(query, st.text(max_size=40)))


def _event(point: Strategy) -> Strategy:
    return st.fixed_dictionaries({"points": st.lists(point, min_size=0, max_size=3)})


def strategies(ids: Ids) -> dict[str, Strategy]:
    """A strategy per ``"component.property"`` the callbacks read."""
    image = st.sampled_from(ids.images)
    cls = st.integers(-2, len(ids.classes) + 2)
    run = st.sampled_from(ids.runs)
    pathname = st.one_of(
        st.sampled_from(["/", "/gallery", "/embedding", "/compare", "/explain", "/image", "/nope"]),
        st.text(max_size=20),
    )
    point = st.fixed_dictionaries(
        {},
        optional={
            "customdata": st.one_of(image, st.lists(image, max_size=2), json_values),
            "x": st.one_of(st.sampled_from(ids.classes), json_values),
            "y": st.one_of(st.sampled_from(ids.classes), json_values),
        },
    )
    confusion_point = st.fixed_dictionaries(
        {},
        optional={
            "customdata": st.one_of(st.lists(cls, min_size=2, max_size=3), json_values),
            "x": st.one_of(st.sampled_from(ids.classes), json_values),
            "y": st.one_of(st.sampled_from(ids.classes), json_values),
        },
    )
    coords = st.lists(_finite(), min_size=0, max_size=6)
    selection = st.one_of(
        st.fixed_dictionaries(
            {"range": st.fixed_dictionaries({"x": coords, "y": coords}), "points": st.just([])}
        ),
        st.fixed_dictionaries({"lassoPoints": st.fixed_dictionaries({"x": coords, "y": coords})}),
        _event(point),
    )
    data_url = st.one_of(
        st.binary(max_size=64).map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()),
        st.text(max_size=40).map(lambda t: "data:image/png;base64," + t),
        st.text(max_size=40),
    )
    page = st.integers(-3, 100_002)
    # the method pickers' values: lists of methods, and of any text (a script can send any)
    picks = st.lists(st.one_of(st.sampled_from(METHODS), st.text(max_size=8)), max_size=6)
    plain: dict[str, Strategy] = {
        "url.pathname": pathname,
        "url.search": search_strategy(ids),
        "rendered.data": st.one_of(
            st.none(),
            st.fixed_dictionaries({"path": pathname, "search": search_strategy(ids)}),
        ),
        "nav-run.value": run,
        "nav-toggler.n_clicks": st.integers(0, 5),
        "nav-collapse.is_open": st.booleans(),
        "overview-confusion.clickData": _event(confusion_point),
        "overview-norm.value": st.sampled_from(["norm", "count"]),
        "overview-report-button.n_clicks": st.integers(0, 5),
        "gallery-download-button.n_clicks": st.integers(0, 5),
        "gallery-true.value": cls,
        "gallery-pred.value": cls,
        "gallery-outcome.value": st.sampled_from(OUTCOMES),
        "gallery-conf.value": st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=2),
        "gallery-sort.value": st.sampled_from(SORTS),
        "gallery-desc.value": st.sampled_from([[], ["desc"]]),
        "gallery-method.value": st.sampled_from(METHODS),
        "gallery-methods.value": picks,
        "gallery-size.value": st.one_of(st.sampled_from(PAGE_SIZES), st.integers(-5, 10**6)),
        "gallery-cmap.value": st.sampled_from(COLORMAPS),
        "gallery-alpha.value": st.floats(-1, 2),
        "gallery-pagination.active_page": page,
        "gallery-flag.value": st.sampled_from(QUALITY_FLAGS),
        "embedding-graph.hoverData": _event(point),
        "embedding-graph.clickData": _event(point),
        "embedding-graph.selectedData": selection,
        "embedding-color.value": st.sampled_from(COLOR_BY),
        "embedding-train.value": st.sampled_from([[], ["train"]]),
        "compare-a.value": run,
        "compare-b.value": run,
        "compare-methods.value": picks,
        "compare-change.value": st.sampled_from(CHANGES),
        "compare-pagination.active_page": page,
        "explain-upload.contents": data_url,
        "explain-upload.filename": st.text(max_size=20),
        "image-methods.value": picks,
        "image-cmap.value": st.sampled_from(COLORMAPS),
        "image-alpha.value": st.floats(-1, 2),
    }
    return {k: _maybe(v) for k, v in plain.items()}


# The callbacks, by the output they write and the input that fires them; a callback missing
# here fails test_every_callback_is_fuzzed.
TARGETS: list[tuple[str, str]] = [
    ("page-content.children", "url.pathname"),
    ("url.search", "nav-run.value"),
    ("nav-collapse.is_open", "nav-toggler.n_clicks"),
    ("url.href", "overview-confusion.clickData"),
    ("url.search", "overview-norm.value"),
    ("url.search", "gallery-true.value"),
    ("url.search", "gallery-flag.value"),
    ("embedding-hover.children", "embedding-graph.hoverData"),
    ("embedding-pinned.children", "embedding-graph.clickData"),
    ("embedding-selection.children", "embedding-graph.selectedData"),
    ("url.search", "embedding-color.value"),
    ("url.search", "compare-a.value"),
    ("explain-result.children", "explain-upload.contents"),
    ("url.search", "image-cmap.value"),
    ("overview-report-download.data", "overview-report-button.n_clicks"),
    ("gallery-download.data", "gallery-download-button.n_clicks"),
]
#: dash-bootstrap-templates' theme-changer toggle (server side, pattern-matching); Dash gives
#: the global callbacks to the first app of a process only, so it is fuzzed when present
AIO_TOGGLE = "ThemeChangerAIO"


def _key(app: Any, output: str, trigger: str) -> str:
    keys = [k for k in server_callbacks(app) if output in k and trigger in dependency_names(app, k)]
    assert len(keys) == 1, (output, trigger, keys)
    return keys[0]


@pytest.fixture(scope="module")
def ids(state: Any) -> Ids:
    return Ids(state)


def test_every_callback_is_fuzzed(app: Any, client: Any) -> None:
    covered = {_key(app, out, trig) for out, trig in TARGETS}
    rest = [k for k in server_callbacks(app) if k not in covered and AIO_TOGGLE not in k]
    assert not rest, f"add these callbacks to TARGETS: {rest}"


def _check(resp: Any, log: Any, what: Any) -> None:
    assert resp.status_code < 500, (resp.status_code, what, resp.data[:300])
    assert not log.records, (log.messages(), what)


def _fuzz_callback(client: Any, app: Any, key: str, per_dep: list[Strategy], target: str) -> None:
    n_in = len(app.callback_map[key]["inputs"])

    @fuzz(target)
    @given(values=st.tuples(*per_dep), changed=st.integers(0, n_in - 1))
    def run(values: tuple[Any, ...], changed: int) -> None:
        with errors_logged() as log:
            resp = post_json(client, callback_body(app, key, list(values), changed))
        _check(resp, log, values)

    run()


@pytest.mark.parametrize(("output", "trigger"), TARGETS, ids=[f"{o}<-{t}" for o, t in TARGETS])
def test_fuzz_callback(client: Any, app: Any, ids: Ids, output: str, trigger: str) -> None:
    key = _key(app, output, trigger)
    strats = strategies(ids)
    per_dep = [strats.get(name, json_values) for name in dependency_names(app, key)]
    missing = [n for n in dependency_names(app, key) if n not in strats]
    assert not missing, f"no strategy for {missing}"
    _fuzz_callback(client, app, key, per_dep, "router" if output == "page-content.children" else key)


def test_fuzz_theme_toggle(client: Any, app: Any) -> None:
    keys = [k for k in server_callbacks(app) if AIO_TOGGLE in k]
    if not keys:
        pytest.skip("dash-bootstrap-templates' callbacks went to another app of this process")
    (key,) = keys
    _fuzz_callback(client, app, key, [json_values] * len(dependency_names(app, key)), "theme-toggle")


def test_fuzz_callback_request_shape(client: Any, app: Any, ids: Ids) -> None:
    """Valid bodies with keys dropped, replaced by any JSON or renamed; and bodies of any JSON."""
    keys = [_key(app, o, t) for o, t in TARGETS]
    fields = ["output", "outputs", "inputs", "state", "changedPropIds"]

    @st.composite
    def bodies(draw: Callable[[Strategy], Any]) -> Any:
        if draw(st.integers(0, 9)) == 0:
            return draw(json_values)
        key = draw(st.sampled_from(keys))
        n = len(dependency_names(app, key))
        body = callback_body(app, key, draw(st.lists(json_values, min_size=n, max_size=n)))
        for field in draw(st.lists(st.sampled_from(fields), max_size=3)):
            action = draw(st.sampled_from(["drop", "replace", "swap"]))
            if action == "drop":
                body.pop(field, None)
            elif action == "replace":
                body[field] = draw(json_values)
            else:  # the field of another callback's request
                other = draw(st.sampled_from(keys))
                body[field] = callback_body(app, other, [None] * len(dependency_names(app, other)))[field]
        return body

    @fuzz("request-shape")
    @given(body=bodies())
    def run(body: Any) -> None:
        with errors_logged() as log:
            resp = post_json(client, body)
        _check(resp, log, body)

    run()


def _segment(choices: list[str]) -> Strategy:
    """A path segment: a real value or any text, percent-encoded."""
    return st.one_of(st.sampled_from(choices), st.text(max_size=20)).map(lambda s: quote(s, safe=""))


def _query(params: dict[str, list[str]]) -> Strategy:
    value = {
        k: st.one_of(
            st.sampled_from(v), st.text(string.printable, max_size=10), st.integers(-5, 600).map(str)
        )
        for k, v in params.items()
    }
    return st.fixed_dictionaries({}, optional=value).map(lambda d: "?" + urlencode(d) if d else "")


def test_fuzz_routes(client: Any, ids: Ids) -> None:
    """The thumbnail, overlay and theme routes, and the page URLs (the router's index)."""
    runs, images = _segment(ids.runs), _segment(ids.images)
    sizes = ["16", "96", "512", "0", "-1", "513", "1e3", ""]
    img = st.tuples(runs, images, _query({"size": sizes})).map(lambda t: f"/img/{t[0]}/{t[1]}.png{t[2]}")
    ov_query = _query(
        {
            "target": list(TARGET_KINDS),
            "cmap": list(COLORMAPS),
            "alpha": ["0", "0.5", "1", "2", "nan"],
            "size": sizes,
        }
    )
    ov = st.tuples(runs, images, _segment(list(METHODS)), ov_query).map(
        lambda t: f"/overlay/{t[0]}/{t[1]}/{t[2]}.png{t[3]}"
    )
    css = _segment([*THEMES, "bootstrap", "../../etc/passwd"]).map(lambda n: f"/_xaidash/theme/{n}.css")
    pages = st.tuples(
        st.sampled_from(["/", "/gallery", "/embedding", "/compare", "/explain", "/image", "/x/y"]),
        st.text(max_size=30).map(lambda t: "?" + quote(t, safe="=&")),
    ).map("".join)

    @fuzz("routes")
    @given(url=st.one_of(img, ov, css, pages), etag=st.booleans())
    def run(url: str, etag: bool) -> None:
        headers = {"If-None-Match": '"abc"'} if etag else {}
        with errors_logged() as log:
            resp = client.get(url, headers=headers)
        _check(resp, log, url)
        assert resp.status_code in (200, 304, 308, 404), (url, resp.status_code)

    run()
