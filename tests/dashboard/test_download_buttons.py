"""The download buttons on the overview and the gallery, through the app's own callbacks."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

from tests.dashboard.test_downloads import _shown


def test_buttons_on_the_pages_and_their_callbacks(client: Any, app: Any, state: Any) -> None:
    from tests.support.dash_testing import post_callback
    from xaidash.dashboard.app import render

    overview = json.dumps(render(state, "/", "").to_plotly_json(), default=str)
    assert "overview-report-button" in overview and "overview-ranking" in overview
    gallery = json.dumps(render(state, "/gallery", "?outcome=wrong").to_plotly_json(), default=str)
    assert "gallery-download-button" in gallery
    out = post_callback(
        client,
        app,
        "gallery-download.data",
        {"gallery-download-button.n_clicks": 1, "url.search": "?outcome=wrong&true=2"},
    )
    data = out["response"]["gallery-download"]["data"]
    df = pd.read_csv(io.StringIO(data["content"]))
    assert df["image_id"].tolist() == _shown(state, "?outcome=wrong&true=2") and len(df) > 0
    out = post_callback(
        client, app, "overview-report-download.data", {"overview-report-button.n_clicks": 1, "url.search": ""}
    )
    assert out["response"]["overview-report-download"]["data"]["content"].startswith("<!DOCTYPE html>")
    bad = post_callback(
        client, app, "gallery-download.data", {"gallery-download-button.n_clicks": "x", "url.search": ""}
    )  # no button sends that
    assert bad is None or "gallery-download" not in bad["response"]


def test_overview_of_a_run_without_the_ranking_tables(tmp_path: Any) -> None:
    from tests.support.synthetic import build_synthetic_store
    from xaidash.dashboard.app import create_app, render

    build_synthetic_store(tmp_path / "s", n_val=40, n_train=20, runs=1, seed=11, emb_dim=8, ranking=False)
    state = create_app(tmp_path / "s", selections_dir=tmp_path / "sel").server.config["XAIDASH_STATE"]
    page = json.dumps(render(state, "/", "").to_plotly_json(), default=str)
    assert (
        "overview-ranking" not in page and "overview-confusion" in page and "overview-report-button" in page
    )
