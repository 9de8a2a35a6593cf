"""Hostile requests for the dashboard: raw callback bodies, JSON values of every type, error capture.

:func:`callback_body` builds the body the browser would post for any server-side callback of an
app - pattern-matching ones included - from a list of values, one per Input and State, so a
test can put any JSON value where the browser puts a component's value. :func:`json_values` is
the Hypothesis strategy of such values (with the ``NaN``/``Infinity`` a script can send: Python's
JSON parser accepts them). :class:`ErrorLog` records the errors the dashboard logs, so a test can
tell an answer the code meant from one its last-resort handler made.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dash
from flask.testing import FlaskClient
from hypothesis import strategies as st
from werkzeug.test import TestResponse

ENDPOINT = "/_dash-update-component"


def post_json(client: FlaskClient, body: Any) -> TestResponse:
    """POST ``body`` (any JSON value, NaN allowed; bytes/str as is) to the callback endpoint."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    if isinstance(data, str):
        # a lone surrogate cannot be UTF-8 encoded by the test client: send it as a browser would
        # send broken text, with the bytes it has (the server must still answer, not crash)
        data = data.encode("utf-8", "surrogatepass")
    return client.post(ENDPOINT, data=data, content_type="application/json")


def is_no_update(resp: TestResponse) -> bool:
    """True when a callback answered "no update": 204, or (Dash 4) 200 with an empty response."""
    if resp.status_code == 204:
        return True
    return resp.status_code == 200 and json.loads(resp.data).get("response") == {}


def server_callbacks(app: dash.Dash) -> list[str]:
    """Callback-map keys of the callbacks that run on the server (clientside ones have no function)."""
    return [k for k, v in app.callback_map.items() if "callback" in v]


def _concrete(dep_id: str) -> Any:
    """A concrete component id for a dependency id (wildcards MATCH/ALLSMALLER -> "fuzz")."""
    if not dep_id.startswith("{"):
        return dep_id
    parsed = json.loads(dep_id)
    return {k: ("fuzz" if isinstance(v, list) else v) for k, v in parsed.items()}


def _dep_key(component_id: Any, prop: str) -> str:
    from dash._utils import stringify_id

    return f"{stringify_id(component_id)}.{prop}"


def dependency_names(app: dash.Dash, key: str) -> list[str]:
    """``"id.prop"`` of each Input then each State of the callback ``key``, in order."""
    spec = app.callback_map[key]
    return [f"{d['id']}.{d['property']}" for d in (*spec["inputs"], *spec["state"])]


def callback_body(app: dash.Dash, key: str, values: Sequence[Any], changed: int = 0) -> dict[str, Any]:
    """The request body for the callback ``key`` with ``values`` for its Inputs then States.

    ``changed`` is the index of the Input that fired (``changedPropIds``).
    """
    spec = app.callback_map[key]
    deps = [*spec["inputs"], *spec["state"]]
    if len(values) != len(deps):
        raise ValueError(f"{key}: {len(deps)} inputs and states, {len(values)} values")
    items = [
        {"id": _concrete(d["id"]), "property": d["property"], "value": v}
        for d, v in zip(deps, values, strict=True)
    ]
    outs = spec["output"]
    out_items = [
        {"id": _concrete(o.component_id_str()), "property": o.component_property}
        for o in (outs if isinstance(outs, list) else [outs])
    ]
    n_in = len(spec["inputs"])
    trigger = items[min(changed, n_in - 1)]
    return {
        "output": key,
        "outputs": out_items if isinstance(outs, list) else out_items[0],
        "inputs": items[:n_in],
        "state": items[n_in:],
        "changedPropIds": [_dep_key(trigger["id"], trigger["property"])],
    }


def post_values(
    client: FlaskClient, app: dash.Dash, key: str, values: Sequence[Any], changed: int = 0
) -> TestResponse:
    """POST the callback ``key`` with ``values`` (see :func:`callback_body`)."""
    return post_json(client, callback_body(app, key, values, changed))


def find_key(app: dash.Dash, output: str, trigger: str | None = None) -> str:
    """The callback-map key of the one callback writing ``output`` and, if given, fired by ``trigger``."""
    keys = [
        k
        for k in server_callbacks(app)
        if output in k and (trigger is None or trigger in dependency_names(app, k))
    ]
    if len(keys) != 1:
        raise KeyError(f"{len(keys)} callbacks write {output!r} from {trigger!r}")
    return keys[0]


class ErrorLog(logging.Handler):
    """Collects the ERROR records of the ``xaidash`` loggers while installed (see :func:`errors_logged`)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [self.format(r) for r in self.records]


@contextmanager
def errors_logged() -> Iterator[ErrorLog]:
    """Record what the dashboard logs at ERROR (a swallowed exception) inside the block."""
    handler = ErrorLog()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("xaidash")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# ---------------------------------------------------------------- Hypothesis strategies

#: characters of fuzzed strings: printable ASCII, the few that break naive parsers, some non-ASCII
_chars = st.sampled_from(string.printable + "\x00\u00e9\u20ac\u2028\ud7ff\ud800\U0001f600")
_text = st.text(_chars, max_size=16)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and +-Infinity included: json.dumps writes them, Flask parses them
    | _text
)
_shallow = st.lists(_scalars, max_size=3) | st.dictionaries(_text, _scalars, max_size=3)

#: any JSON value a script could put where a component's value goes, nested up to two levels
#: (a flat one_of rather than st.recursive: as varied for these callbacks, and cheaper to draw)
json_values = st.one_of(_scalars, _shallow, st.dictionaries(_text, _shallow, max_size=2))
