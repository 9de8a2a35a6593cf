"""Dashboard unit tests: query parsing, page renderers, routes and callbacks over HTTP.

Pages are plain functions of (store, URL), so most tests render them against a small
synthetic store and look for what a reviewer must see - and for the absence of errors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly
import pytest

from tests.support.dash_testing import post_callback
from xaidash.dashboard import figures
from xaidash.dashboard.app import create_app, is_soft_change, render
from xaidash.dashboard.data import SelectionStore, most_faithful
from xaidash.dashboard.pages import explain
from xaidash.dashboard.pages.embedding import page as embedding
from xaidash.dashboard.pages.gallery import page as gallery
from xaidash.dashboard.pages.overview import page as overview
from xaidash.dashboard.params import Filters, gallery_href, parse_query, to_query


def text_of(component: Any) -> str:
    """The whole rendered tree as JSON text (search it for labels, ids and hrefs)."""
    return json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)


def latest(state: Any) -> str:
    return state.data.run_ids()[0]


def a_wrong_image(state: Any) -> str:
    from xaidash.store.read.reader import GalleryQuery

    rows, total = state.data.gallery(latest(state), GalleryQuery(outcome="wrong"))
    assert total > 0
    return str(rows["image_id"].iloc[0])


# ---------------------------------------------------------------- query strings


def test_parse_query_defaults_bad_values() -> None:
    f = parse_query(
        "?run=x;DROP TABLE runs&page=abc&true=-3&pred=2&outcome=evil&sort=1 OR 1=1&cmin=0.9&cmax=0.1"
    )
    assert f.run is None  # fails the run-id regex
    assert f.page == 0 and f.true is None and f.pred == 2
    assert f.outcome == "all" and f.sort == "confidence"
    assert (f.cmin, f.cmax) == (0.1, 0.9)  # swapped, not rejected
    assert parse_query("?id=../../etc/passwd").id is None
    assert parse_query("?sel=zzzz").sel is None
    assert parse_query("?" + "&".join(f"k{i}=1" for i in range(500))) == Filters()  # field bomb
    assert parse_query("?cmin=nan&cmax=inf&alpha=-1&size=7").cmin == 0.0


def test_query_roundtrip_and_compact_links() -> None:
    f = Filters(run="r1", true=3, outcome="wrong", cmin=0.25, desc=True, ids=("0123456789abcdef",))
    assert parse_query(to_query(f)) == f
    assert to_query(Filters()) == ""
    href = gallery_href(f, pred=4, page=0)
    assert href.startswith("/gallery?") and "pred=4" in href and "page" not in href


# ---------------------------------------------------------------- pages


@pytest.mark.parametrize(
    ("path", "search", "expect"),
    [
        ("/", "", ["overview-confusion", "Accuracy", "Most faithful for this model"]),
        ("/", "?norm=1", ["row-normalized", "share"]),
        ("/gallery", "", ["gallery-rows", "Grad-CAM++", "/overlay/"]),
        ("/gallery", "?outcome=wrong&sort=loss&desc=1", ["gallery-rows", "wrong"]),
        ("/gallery", "?sort=faithfulness&method=scorecam", ["gallery-rows"]),
        ("/gallery", "?sort=disagreement&page=99999", ["gallery-rows"]),  # past the end: last page
        ("/gallery", "?cmin=0.99&cmax=1&true=0&pred=9", ["No images match"]),
        ("/embedding", "", ["embedding-graph", "scattergl"]),
        ("/embedding", "?color=pred&train=1", ["embedding-graph", "circle-open"]),
        ("/compare", "", ["compare-metrics", "right → wrong", "compare-confusion-delta"]),
        ("/compare", "?change=fixed&method=scorecam", ["compare-flips", "Score-CAM"]),
        ("/explain", "", ["explain-upload"]),
        ("/image", "", ["No image selected"]),
        ("/image", "?id=0123456789abcdef", ["Image not found"]),
        ("/nope", "", ["Page not found"]),
    ],
)
def test_pages_render(state: Any, path: str, search: str, expect: list[str]) -> None:
    out = text_of(render(state, path, search))
    assert "could not be rendered" not in out
    for e in expect:
        assert e in out, f"{e!r} missing from {path}{search}"


def test_image_page_wrong_prediction(state: Any) -> None:
    iid = a_wrong_image(state)
    out = text_of(render(state, "/image", f"?id={iid}"))
    assert "could not be rendered" not in out
    for e in (
        "Why not",
        "image-twins",
        "image-counterfactuals",
        "image-faithfulness",
        "image-history",
        "image-topk",
    ):
        assert e in out
    for m in ("cam", "gradcam", "gradcampp", "scorecam"):
        assert f"/{iid}/{m}.png?size=224" in out
        assert f"/{iid}/{m}.png?target=true&size=224" in out
    # both runs of the dataset appear in the history
    assert all(r in out for r in state.data.run_ids())


def test_unknown_run_falls_back_with_warning(state: Any) -> None:
    out = text_of(render(state, "/", "?run=does-not-exist"))
    assert "There is no run" in out and latest(state) in out


def test_confusion_click_opens_filtered_gallery() -> None:
    click = {"points": [{"customdata": [3, 5, 7]}]}
    assert overview.confusion_click_target(click, "?run=abc") == "/gallery?run=abc&true=3&pred=5&desc=1"
    assert overview.confusion_click_target({"points": [{"customdata": ["x"]}]}, "") is None
    assert overview.confusion_click_target(None, "") is None
    # what plotly really sends for a heatmap: the cell's labels, no customdata
    real = {"points": [{"curveNumber": 0, "x": "b", "y": "a", "z": 4}]}
    assert overview.confusion_click_target(real, "", ["a", "b"]) == "/gallery?true=0&pred=1&desc=1"


def test_gallery_controls_to_search() -> None:
    args = dict(
        true=2,
        pred=None,
        outcome="wrong",
        conf=[0.0, 1.0],
        sort="confidence",
        desc=[],
        method="gradcam",
        picked=None,
        size=24,
        cmap="jet",
        alpha=0.5,
        active_page=1,
    )
    assert gallery.controls_to_search("?page=3", "gallery-true", **args) == "?true=2&outcome=wrong"
    paged = gallery.controls_to_search(
        "?true=2&outcome=wrong", "gallery-pagination", **{**args, "active_page": 3}
    )
    assert paged == "?true=2&outcome=wrong&page=2"
    assert gallery.controls_to_search("?true=2&outcome=wrong", "gallery-true", **args) is None  # no change
    # a display change keeps the page
    out = gallery.controls_to_search(
        "?true=2&outcome=wrong&page=2", "gallery-cmap", **{**args, "cmap": "viridis"}
    )
    assert out == "?true=2&outcome=wrong&page=2&cmap=viridis"


def test_lasso_and_box_select_over_all_points(state: Any) -> None:
    pts = state.data.embedding_points(latest(state), False)
    x0, x1 = float(pts["x"].min()) - 1, float(pts["x"].max()) + 1
    y0, y1 = float(pts["y"].min()) - 1, float(pts["y"].max()) + 1
    box = embedding.select_ids(pts, {"range": {"x": [x0, x1], "y": [y0, y1]}, "points": []})
    assert len(box) == len(pts)
    lasso = {"lassoPoints": {"x": [x0, (x0 + x1) / 2, x0], "y": [y0, y0, y1]}, "points": []}
    half = embedding.select_ids(pts, lasso)
    assert 0 < len(half) < len(pts)
    assert embedding.select_ids(pts, None) == []


def test_selection_store_and_gallery_restriction(state: Any, tmp_path: Path) -> None:
    sel = SelectionStore(tmp_path)
    ids = list(state.data.embedding_points(latest(state))["image_id"][:30])
    key = sel.put([*ids, "not-an-id"])
    assert len(key) == 12 and sel.get(key) == tuple(sorted(ids))
    assert SelectionStore(tmp_path).get(key) == tuple(sorted(ids))  # another worker reads it from disk
    assert sel.get("0" * 12) is None and sel.get("../x") is None
    href = embedding.selection_href(state, Filters(run=latest(state)), ids)
    assert "sel=" in href
    out = text_of(render(state, "/gallery", "?" + href.split("?", 1)[1]))
    assert "selection of 30 images" in out and '"30 images"' in out
    small = embedding.selection_href(state, Filters(), ids[:3])
    assert "ids=" in small
    out = text_of(render(state, "/gallery", "?" + small.split("?", 1)[1]))
    assert "selection of 3 images" in out
    out = text_of(render(state, "/gallery", "?sel=" + "f" * 12))
    assert "no longer available" in out


def test_most_faithful_rule() -> None:
    summary = pd.DataFrame(
        {
            "method": ["cam", "gradcam", "scorecam"],
            "drop": [0.3, 0.2, 0.25],
            "increase": [0.1, 0.2, 0.3],
            "deletion_auc": [0.2, 0.1, 0.3],
            "insertion_auc": [0.5, 0.6, 0.7],
            "n": [10, 10, 10],
        }
    )
    best, ranked = most_faithful(summary)
    assert best == "gradcam"  # ranks: drop 1, increase 2, deletion 1, insertion 2 -> mean 1.5
    assert ranked.set_index("method")["mean_rank"]["gradcam"] == 1.5
    assert most_faithful(summary.iloc[0:0])[0] is None


def test_soft_url_changes_do_not_rerender() -> None:
    assert is_soft_change(
        {"path": "/embedding", "search": "?run=a"}, "/embedding", "?run=a&id=0123456789abcdef"
    )
    assert not is_soft_change({"path": "/embedding", "search": "?run=a"}, "/embedding", "?run=b")
    assert not is_soft_change({"path": "/gallery", "search": ""}, "/gallery", "?id=0123456789abcdef")


def test_the_topk_figure_is_a_valid_plotly_figure_in_the_theme() -> None:
    # built as a plain dict for speed: plotly's own validation must still accept every property
    topk = [(3, "Shirt", 0.6), (1, "Trouser", 0.3), (5, "Sandal", 0.1)]
    fig = plotly.graph_objects.Figure(figures.plot_topk(topk, true_class=1))
    bar = fig.data[0]
    assert list(bar.y) == ["Sandal", "Trouser", "Shirt"]  # largest at the top
    assert list(bar.marker.color) == ["#95a5a6", figures.COLOR_CORRECT, figures.COLOR_WRONG]
    assert fig.layout.template == plotly.io.templates[figures.figure_template()]
    assert plotly.graph_objects.Figure(figures.plot_topk([])).layout.annotations  # "No probabilities"


def test_figures_are_pure_and_handle_empty() -> None:
    conf = pd.DataFrame({"true_class": [0, 0, 1], "pred_class": [0, 1, 1], "count": [5, 2, 3]})
    fig = figures.plot_confusion(conf, ["a", "b"], normalize=True)
    assert fig.data[0].z[0][0] == pytest.approx(5 / 7)
    assert list(fig.data[0].customdata[0][1]) == [0, 1, 2]
    assert figures.plot_confidence_histogram(pd.DataFrame()).layout.annotations
    assert figures.plot_embedding(pd.DataFrame(), []).layout.annotations
    pts = pd.DataFrame(
        {
            "image_id": [f"{i:016x}" for i in range(50_000)],
            "split": "val",
            "x": 0.0,
            "y": 0.0,
            "label": 0,
            "pred": 0,
            "correct": [i % 10 != 0 for i in range(50_000)],
        }
    )
    sampled = figures.sample_points(pts, 20_000)
    assert len(sampled) == 20_000 and (~sampled["correct"]).sum() == 5_000  # every error kept


# ---------------------------------------------------------------- empty states


class _Unlabeled:
    """A reader whose runs look unlabeled and have no faithfulness (what compute writes for folder:)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, run_id: str) -> Any:
        info = self._inner.run(run_id)
        return None if info is None else dataclasses.replace(info, labeled=False, accuracy=None)

    def headline(self, run_id: str) -> dict[str, Any]:
        h = dict(self._inner.headline(run_id))
        h.update(accuracy=None, macro_precision=None, macro_recall=None, macro_f1=None, errors=None)
        return h

    def faithfulness_summary(self, run_id: str) -> pd.DataFrame:
        return self._inner.faithfulness_summary(run_id).iloc[0:0]


def test_unlabeled_run_without_faithfulness(store_dir: Path) -> None:
    from xaidash.store.read.reader import open_store

    app = create_app(store_dir, reader=_Unlabeled(open_store(store_dir)))
    st = app.server.config["XAIDASH_STATE"]
    out = text_of(render(st, "/", ""))
    assert "Unlabeled run" in out and "No faithfulness scores" in out
    assert "overview-confusion" not in out and "could not be rendered" not in out
    out = text_of(render(st, "/gallery", ""))
    assert "gallery-rows" in out and "could not be rendered" not in out


def test_empty_store(tmp_path: Path) -> None:
    from xaidash.store.write.writer import Store

    Store.create(tmp_path / "empty")
    app = create_app(tmp_path / "empty")
    st = app.server.config["XAIDASH_STATE"]
    for path in ("/", "/gallery", "/image", "/embedding", "/compare", "/explain"):
        out = text_of(render(st, path, "?run=abc"))
        assert "This store has no runs yet" in out and "xaidash compute" in out


# ---------------------------------------------------------------- routes


def test_overlay_and_image_routes(client: Any, state: Any) -> None:
    run, iid = latest(state), a_wrong_image(state)
    r = client.get(f"/overlay/{run}/{iid}/gradcam.png?cmap=viridis&alpha=0.3")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.data[:4] == b"\x89PNG"
    assert "max-age" in r.headers["Cache-Control"] and r.headers["ETag"]
    again = client.get(
        f"/overlay/{run}/{iid}/gradcam.png?cmap=viridis&alpha=0.3",
        headers={"If-None-Match": r.headers["ETag"]},
    )
    assert again.status_code == 304
    assert client.get(f"/overlay/{run}/{iid}/gradcam.png?target=true&size=224").status_code == 200
    assert client.get(f"/img/{run}/{iid}.png?size=288").status_code == 200
    for bad in (
        f"/overlay/{run}/{iid}/evil.png",
        f"/overlay/{run}/{iid}/gradcam.png?target=../x",
        f"/overlay/bad%20run/{iid}/gradcam.png",
        f"/overlay/{run}/ZZZ/gradcam.png",
        f"/img/{run}/0000000000000000.png",
    ):
        assert client.get(bad).status_code == 404, bad
    # Paths our routes do not match fall through to Dash's index page: HTML, never a file.
    for odd in ("/img/..%2F..%2Fetc/passwd.png", "/overlay/../../etc/passwd"):
        r = client.get(odd)
        assert r.mimetype == "text/html" and b"root:" not in r.data


def test_theme_css_is_local_and_has_no_external_imports(client: Any) -> None:
    r = client.get("/_xaidash/theme/flatly.css")
    assert r.status_code == 200 and r.mimetype == "text/css"
    assert b"googleapis" not in r.data and b".navbar" in r.data
    assert client.get("/_xaidash/theme/darkly-nope.css").status_code == 404
    page = client.get("/").data.decode()
    assert "/_xaidash/theme/flatly.css" in page and "cdn" not in page.lower()


# ---------------------------------------------------------------- callbacks over HTTP


def test_router_callback_over_http(client: Any, app: Any, state: Any) -> None:
    r = post_callback(
        client, app, "page-content.children", {"url.pathname": "/gallery", "url.search": "?outcome=wrong"}
    )
    resp = r["response"]
    assert resp["nav-run"]["value"] == latest(state)
    assert "gallery-rows" in json.dumps(resp["page-content"])
    assert resp["nav-link-1"]["href"] == f"/gallery?run={latest(state)}"


def test_confusion_click_callback_over_http(client: Any, app: Any) -> None:
    r = post_callback(
        client,
        app,
        "url.href",
        {
            "overview-confusion.clickData": {"points": [{"x": "bird", "y": "automobile", "z": 3}]},
            "url.search": "",
        },
        "overview-confusion.clickData",
    )
    assert r["response"]["url"] == {"href": "/gallery?true=1&pred=2&desc=1"}


def test_embedding_callbacks_over_http(client: Any, app: Any, state: Any) -> None:
    iid = a_wrong_image(state)
    hover = post_callback(
        client,
        app,
        "embedding-hover.children",
        {"embedding-graph.hoverData": {"points": [{"customdata": iid}]}, "url.search": ""},
    )
    assert f"/img/{latest(state)}/{iid}.png" in json.dumps(hover)
    click = post_callback(
        client,
        app,
        "embedding-pinned.children",
        {"embedding-graph.clickData": {"points": [{"customdata": iid}]}, "url.search": ""},
        "embedding-graph.clickData",
    )
    patch = json.dumps(click["response"]["embedding-graph"]["figure"])
    assert "__dash_patch_update" in patch and '"data", 0, "x"' in patch  # only the twin trace is sent
    assert f"id={iid}" in click["response"]["url"]["search"]
    sel = post_callback(
        client,
        app,
        "embedding-selection.children",
        {
            "embedding-graph.selectedData": {"range": {"x": [-100, 100], "y": [-100, 100]}, "points": []},
            "url.search": "",
        },
    )
    assert "sel=" in json.dumps(sel)


def test_large_map_shows_every_point_as_density_with_hover_and_selection(
    client: Any, app: Any, state: Any
) -> None:
    """Above ``max_points`` the map is a raster of every point (class mix, count) plus an
    invisible heatmap for hover, and isolated points as markers; a hovered or clicked density
    cell resolves to its nearest point, and a box selection still covers all points."""
    from xaidash.dashboard import figures
    from xaidash.dashboard.pages.embedding.page import event_point, point_index

    run = latest(state)
    info = state.data.run(run)
    pts = state.data.embedding_points(run, True)
    fig = figures.plot_embedding(pts, info.class_names, "true", max_points=50)
    assert len(fig.layout.images) == 1 and fig.layout.images[0].source.startswith("data:image/png;base64,")
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 1 and np.nansum(np.asarray(heat[0].z, float)) == len(pts)  # every point counted
    assert fig.data[0].mode == "lines" and fig.data[1].name == "selected"  # twin traces stay first
    assert "all " in fig.layout.title.text
    # nearest point of a density cell: exactly the point at those coordinates
    row = 7
    x, y = float(pts["x"].iloc[row]), float(pts["y"].iloc[row])
    assert event_point(state, run, {"points": [{"x": x, "y": y, "z": 4}]}, True) == pts["image_id"].iloc[row]
    index = point_index(state, run)
    d = (pts["x"].to_numpy() - (x + 0.3)) ** 2 + (pts["y"].to_numpy() - (y - 0.2)) ** 2
    assert index.nearest(x + 0.3, y - 0.2) == int(np.argmin(d))
    hover = post_callback(
        client,
        app,
        "embedding-hover.children",
        {"embedding-graph.hoverData": {"points": [{"x": x, "y": y, "z": 4}]}, "url.search": ""},
    )
    assert f"/img/{run}/{pts['image_id'].iloc[row]}.png" in json.dumps(hover)
    assert index.row(str(pts["image_id"].iloc[-1])) == len(pts) - 1 and index.row("f" * 16) is None


def test_explain_upload_validation() -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buf, format="PNG")
    img = explain.decode_upload("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), "a.png")
    assert img.mode == "RGB" and img.size == (40, 30) and img.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(explain.UploadError, match="not a PNG or JPEG"):
        gif = io.BytesIO()
        Image.new("RGB", (4, 4)).save(gif, format="GIF")
        explain.decode_upload("data:image/gif;base64," + base64.b64encode(gif.getvalue()).decode(), "x.gif")
    with pytest.raises(explain.UploadError, match="not an image"):
        explain.decode_upload("data:text/plain;base64," + base64.b64encode(b"hello world").decode(), "x.txt")
    with pytest.raises(explain.UploadError, match="malformed"):
        explain.decode_upload("data:image/png;base64,@@@@", "x.png")
    with pytest.raises(explain.UploadError, match="larger than"):
        explain.decode_upload("data:image/png;base64," + "A" * (explain.MAX_UPLOAD_BYTES * 2), "big.png")
    # a bomb: a tiny PNG header claiming a huge canvas
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < explain.MAX_UPLOAD_BYTES
    with pytest.raises(explain.UploadError, match="decompression bomb"):
        explain.decode_upload(
            "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode(), "bomb.png"
        )
    trunc = buf.getvalue()[:-30]
    with pytest.raises(explain.UploadError):
        explain.decode_upload("data:image/png;base64," + base64.b64encode(trunc).decode(), "t.png")


def test_serve_cli_validates_arguments(tmp_path: Path) -> None:
    import argparse

    from xaidash.dashboard import cli
    from xaidash.errors import UserError

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--store", str(tmp_path / "missing")])
    assert args.host == "127.0.0.1" and args.port == 8050
    with pytest.raises(UserError, match="not a directory"):
        cli.run(args)
