"""Latency of the pages issue 21 changed, through Dash's HTTP endpoint (Flask test client): the
overview with its calibration section, the row-normalized toggle, the gallery with its Download
button, and the Download itself; first call and p50 / p95 of 20.

    python bench/overview_latency.py STORE

``bench/dashboard_latency.py`` times every interaction but needs a store with two runs; this one
needs one.
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
