"""Latency of the pages issue 21 changed, through Dash's HTTP endpoint (Flask test client): the
overview with its calibration section, the row-normalized toggle, the gallery with its Download
button, and the Download itself; first call and p50 / p95 of 20.

    python bench/overview_latency.py STORE

``bench/dashboard_latency.py`` times every interaction but needs a store with two runs; this one
needs one. Last, the overview with and without the "Which method should I trust?" card (issue 22).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from collections.abc import Callable
from typing import Any


def main(store: str) -> int:
    from tests.support.dash_testing import post_callback
    from xaidash.dashboard.app import create_app

    app = create_app(store)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    run = app.server.config["XAIDASH_STATE"].data.run_ids()[0]

    def route(path: str, search: Callable[[int], str]) -> Callable[[int], None]:
        def call(i: int) -> None:
            r = post_callback(
                client, app, "page-content.children", {"url.pathname": path, "url.search": search(i)}
            )
            assert "could not be rendered" not in json.dumps(r)[:100000]

        return call

    def download(i: int) -> None:
        search = f"?run={run}&outcome=wrong&true={i % 10}"
        post_callback(
            client,
            app,
            "gallery-download.data",
            {"gallery-download-button.n_clicks": 1, "url.search": search},
        )

    cases: list[tuple[str, Callable[[int], Any]]] = [
        ("overview: open", route("/", lambda i: f"?run={run}")),
        ("overview: row-normalized toggle", route("/", lambda i: f"?run={run}&norm={i % 2}")),
        (
            "gallery: open (with the Download button)",
            route("/gallery", lambda i: f"?run={run}&outcome=wrong&page={i}"),
        ),
        ("gallery: Download (the errors of one class)", download),
    ]
    for name, fn in cases:
        t = time.perf_counter()
        fn(0)
        first = (time.perf_counter() - t) * 1000
        ts = []
        for i in range(1, 21):
            t = time.perf_counter()
            fn(i)
            ts.append((time.perf_counter() - t) * 1000)
        ts.sort()
        p50, p95 = statistics.median(ts), ts[int(0.95 * len(ts)) - 1]
        print(f"{name:45s} first {first:7.0f} ms   p50 {p50:6.0f} ms   p95 {p95:6.0f} ms")
    card_share(store)
    return 0


def card_share(store: str) -> None:
    """The overview with and without the "Which method should I trust?" card, interleaved in this
    one process (the card swapped for None in the second app): first render and warm p50 of 20."""
    from tests.support.dash_testing import post_callback
    from xaidash.dashboard.app import create_app
    from xaidash.dashboard.pages.overview import page

    real = page.recommendation_card

    def none(*args: object, **kwargs: object) -> None:
        return None

    apps = {name: create_app(store) for name in ("with card", "without card")}
    ts: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(21):
        for name, app in apps.items():
            page.recommendation_card = real if name == "with card" else none  # type: ignore[assignment]
            run = app.server.config["XAIDASH_STATE"].data.run_ids()[0]
            t = time.perf_counter()
            post_callback(app.server.test_client(), app, "page-content.children",
                          {"url.pathname": "/", "url.search": f"?run={run}"})
            ts[name].append((time.perf_counter() - t) * 1000)
    page.recommendation_card = real
    for name, v in ts.items():
        print(f"overview {name:13s} first {v[0]:6.0f} ms   warm p50 of 20 {statistics.median(v[1:]):6.0f} ms")
    w, wo = (statistics.median(ts[k][1:]) for k in apps)
    first = ts["with card"][0] / ts["without card"][0]
    print(f"with/without the card: warm {w / wo:.2f}x, first render {first:.2f}x")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
