"""Drive Dash callbacks over HTTP exactly as the browser does (dashboard tests, latency bench).

The browser posts to ``/_dash-update-component`` with the callback's output key, the values of
its inputs and states, and which input changed. :func:`callback_payload` builds that payload
from the app's own callback map, so a renamed component breaks the test rather than silently
posting to nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import dash
from flask.testing import FlaskClient


def find_callback(app: dash.Dash, output: str, trigger: str | None = None) -> tuple[str, dict[str, Any]]:
    """The callback-map entry writing ``output`` (e.g. ``"url.search"``) with input ``trigger``.

    Several callbacks may write one property (``allow_duplicate``); ``trigger`` (``"id.prop"``
    of one of its inputs) picks the one a given user action fires.
    """
    matches = [
        (k, v)
        for k, v in app.callback_map.items()
        if output in k and (trigger is None or trigger in {f"{d['id']}.{d['property']}" for d in v["inputs"]})
    ]
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} callbacks output {output!r}: {[k for k, _ in matches]}")
    return matches[0]


def _outputs_spec(key: str) -> list[dict[str, str]] | dict[str, str]:
    """Output key -> the ``outputs`` field (list for multi-output callbacks)."""
    if key.startswith(".."):
        parts = [p for p in key.strip(".").split("...") if p]
        return [dict(zip(("id", "property"), p.rsplit(".", 1), strict=True)) for p in parts]
    bare = key.split("@", 1)[0]
    cid, prop = bare.rsplit(".", 1)
    return {"id": cid, "property": prop}


def callback_payload(
    app: dash.Dash, output: str, values: Mapping[str, Any], changed: str | None = None
) -> dict[str, Any]:
    """Payload for the callback writing ``output``; ``values`` maps ``"id.prop"`` to values."""
    key, spec = find_callback(app, output, changed)

    def items(kind: str) -> list[dict[str, Any]]:
        out = []
        for dep in spec[kind]:
            name = f"{dep['id']}.{dep['property']}"
            out.append({"id": dep["id"], "property": dep["property"], "value": values.get(name)})
        return out

    inputs = items("inputs")
    return {
        "output": key,
        "outputs": _outputs_spec(key),
        "inputs": inputs,
        "state": items("state"),
        "changedPropIds": [changed or f"{inputs[0]['id']}.{inputs[0]['property']}"],
    }


def post_callback(
    client: FlaskClient, app: dash.Dash, output: str, values: Mapping[str, Any], changed: str | None = None
) -> Any:
    """POST one callback through the Flask test client; the JSON reply.

    Returns ``None`` for a 204 (the callback answered ``no_update`` everywhere).
    """
    payload = callback_payload(app, output, values, changed)
    resp = client.post("/_dash-update-component", data=json.dumps(payload), content_type="application/json")
    if resp.status_code == 204:
        return None
    if resp.status_code != 200:
        raise RuntimeError(f"callback {output} answered {resp.status_code}: {resp.data[:500]!r}")
    return json.loads(resp.data)


class CountingStream(io.RawIOBase):
    """A request body of ``n`` bytes that counts how many the server read."""

    def __init__(self, n: int) -> None:
        self.left, self.read_bytes = n, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        k = min(len(buf), self.left)
        buf[:k] = b" " * k
        self.left -= k
        self.read_bytes += k
        return k
