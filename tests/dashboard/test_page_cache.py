"""The router's page cache (``app.cached_page``): a page served again is byte for byte the page
first sent, without a render; the gallery's prefetch is done again; a new or deleted run, a
failed render, a selection and the explain page are never served stale."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.dash_testing import post_callback
from tests.support.synthetic import build_synthetic_store
from xaidash.dashboard.app import create_app
from xaidash.dashboard.pages.gallery import page as gallery
from xaidash.dashboard.pages.overview import page as overview
from xaidash.store import Store

PAGES = [
    ("/", ""),
    ("/", "?norm=1"),
    ("/gallery", "?outcome=wrong&page=1"),
    ("/embedding", "?color=pred"),
    ("/compare", "?change=fixed"),
    ("/image", "?id=0123456789abcdef"),  # not in the run: the "not found" page is cached too
    ("/nope", ""),
]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    build_synthetic_store(tmp_path / "s", n_val=60, n_train=40, runs=2, seed=5, emb_dim=16)
    return tmp_path / "s"


@pytest.fixture()
def app(store: Path, tmp_path: Path) -> Any:
    return create_app(store, selections_dir=tmp_path / "sel")


def route(app: Any, path: str, search: str) -> str:
    client = app.server.test_client()
    r = post_callback(client, app, "page-content.children", {"url.pathname": path, "url.search": search})
    return json.dumps(r["response"], sort_keys=True)


def counting(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    calls: list[int] = []
    real = module.layout

    def layout(ctx: Any) -> Any:
        calls.append(1)
        return real(ctx)

    monkeypatch.setattr(module, "layout", layout)
    return calls


@pytest.mark.parametrize(("path", "search"), PAGES)
def test_a_page_served_again_is_the_page_first_sent(app: Any, path: str, search: str) -> None:
    first = route(app, path, search)
    assert "could not be rendered" not in first
    assert route(app, path, search) == first


def test_cached_pages_hold_nothing_the_garbage_collector_walks(app: Any) -> None:
    # a cached page kept as a tree of dicts was walked by every full collection (state.CachedPage)
    for path, search in PAGES:
        route(app, path, search)
    cached = list(app.server.config["XAIDASH_STATE"].pages.values())
    assert len(cached) >= len(PAGES)
    assert all(isinstance(c.text, str) and not gc.is_tracked(c.text) for c in cached)


def test_a_cached_page_is_not_rendered_again(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, overview)
    route(app, "/", "")
    route(app, "/", "")
    assert len(calls) == 1
    route(app, "/", "?norm=1")  # another URL, another page
    assert len(calls) == 2


def test_the_gallery_prefetch_is_done_again_on_a_hit(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    state = app.server.config["XAIDASH_STATE"]
    asked: list[tuple[str, tuple[str, ...]]] = []
    monkeypatch.setattr(state.data, "prefetch_async",
                        lambda run, ids, methods: asked.append((run, tuple(ids))))
    calls = counting(monkeypatch, gallery)
    route(app, "/gallery", "?page=1")
    route(app, "/gallery", "?page=1")
    assert len(calls) == 1 and len(asked) == 2 and asked[0] == asked[1] and len(asked[0][1]) == 24


def test_a_deleted_run_is_not_served_from_the_cache(app: Any, store: Path) -> None:
    state = app.server.config["XAIDASH_STATE"]
    old, new = state.data.run_ids()[-1], state.data.run_ids()[0]
    before = route(app, "/compare", "")
    assert old in before
    Store.open(store).delete(old)
    after = route(app, "/compare", "")
    assert after != before and old not in after and new in after  # one run left: nothing to compare
    assert "Only one run of this dataset" in after


def test_a_failed_render_is_not_cached(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = overview.layout
    monkeypatch.setattr(overview, "layout", lambda ctx: 1 / 0)
    assert "could not be rendered" in route(app, "/", "?norm=1")
    monkeypatch.setattr(overview, "layout", real)
    assert "could not be rendered" not in route(app, "/", "?norm=1")


def test_selections_and_the_explain_page_are_rendered_every_time(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xaidash.dashboard.pages import explain

    state = app.server.config["XAIDASH_STATE"]
    ids = [str(i) for i in state.data.embedding_points(state.data.run_ids()[0])["image_id"][:30]]
    key = state.selections.put(ids)
    calls = counting(monkeypatch, gallery)
    route(app, "/gallery", f"?sel={key}")
    route(app, "/gallery", f"?sel={key}")
    explain_calls = counting(monkeypatch, explain)
    route(app, "/explain", "")
    route(app, "/explain", "")
    assert len(calls) == 2 and len(explain_calls) == 2
