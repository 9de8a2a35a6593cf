"""The method picker of the gallery, image and compare pages: what it offers and picks by default,
the URL round trip, that the grids show exactly the picked methods in display order, the
"not computed for this image" placeholder, and that a bad pick in the URL is ignored (no 500).

The store has eight CAM methods (the classic four and four more, as a run of the extended
engine writes them) and two methods with maps of every fourth image only that the run does not
list in ``methods`` (as attributions computed for a sample are stored).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import plotly
import pytest
from dash.development.base_component import Component

from tests.support.dash_testing import post_callback
from tests.support.synthetic import build_synthetic_store
from xaidash.constants import CLASSIC_METHODS, METHODS, method_label
from xaidash.dashboard.app import render
from xaidash.dashboard.components import canonical_order, picked_methods
from xaidash.dashboard.pages.compare import page as compare
from xaidash.dashboard.pages.gallery import page as gallery
from xaidash.dashboard.params import Filters, image_href, parse_query, to_query

EXTRA = ("layercam", "xgradcam", "hirescam", "eigencam")
RUN_METHODS = (*CLASSIC_METHODS, *EXTRA)
SAMPLED = ("smoothgrad", "ig_black")  # deliberately not in display order
OVERLAY = re.compile(r"/overlay/[^/]+/([0-9a-f]{16})/([a-z0-9_]+)\.png")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight CAM methods and the sampled attributions (the conftest's app, state and client use it)."""
    path = tmp_path_factory.mktemp("store8")
    build_synthetic_store(path, n_val=48, n_train=40, runs=2, seed=3, methods=RUN_METHODS,
                          sampled_methods=SAMPLED)
    return path


def latest(state: Any) -> str:
    return str(state.data.run_ids()[0])


def wire_nodes(component: Any) -> list[dict[str, Any]]:
    """Every component under ``component`` as the browser gets it (``{"type", "namespace", "props"}``),
    in page order: the gallery's rows are built in that form (pages/gallery/wire.py), not as objects."""
    out: list[dict[str, Any]] = []
    stack = [json.loads(json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder))]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict) and "props" in node:
            out.append(node)
            stack.append(node["props"].get("children"))
    return out


def overlays(component: Any) -> list[tuple[str, str]]:
    """(image_id, method) of every overlay <img> under ``component``, in page order."""
    out = []
    for node in wire_nodes(component):
        src = node["props"].get("src")
        m = OVERLAY.search(src) if isinstance(src, str) else None
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def texts(component: Any) -> list[str]:
    """Every string child under ``component``."""
    out: list[str] = []
    for node in wire_nodes(component):
        children = node["props"].get("children")
        for c in children if isinstance(children, list) else [children]:
            if isinstance(c, str):
                out.append(c)
    return out


def page(state: Any, path: str, search: str) -> Component:
    out = render(state, path, search)
    assert "could not be rendered" not in str(out)
    return out


def sampled_and_not(state: Any) -> tuple[str, str]:
    """An image with maps of the sampled methods and one without."""
    run = latest(state)
    ids = [str(i) for i in state.data.embedding_points(run)["image_id"]]
    keys = state.data.map_keys(run, ids)
    with_maps = [i for i in ids if (i, "ig_black", "pred") in keys]
    without = [i for i in ids if (i, "ig_black", "pred") not in keys]
    assert with_maps and without
    return with_maps[0], without[0]


# ---------------------------------------------------------------- what the picker offers


def test_the_run_offers_its_methods_and_the_sampled_ones_in_display_order(state: Any) -> None:
    assert state.data.map_methods(latest(state)) == sorted({*RUN_METHODS, *SAMPLED})
    out = page(state, "/gallery", "")
    picker = out["gallery-methods"]
    offered = [o["value"] for o in picker.options]
    # the canonical methods first (METHODS' order for those it names), then the others by name
    known = [m for m in METHODS if m in {*RUN_METHODS, *SAMPLED}]
    assert offered == [*known, *sorted({*RUN_METHODS, *SAMPLED} - set(known))]
    assert offered[:4] == list(CLASSIC_METHODS) and offered.index("ig_black") < offered.index("smoothgrad")
    assert set(offered) == {*RUN_METHODS, *SAMPLED}


@pytest.mark.parametrize("path", ["/gallery", "/image", "/compare"])
def test_picker_defaults_to_the_classic_four(state: Any, path: str) -> None:
    search = f"?id={sampled_and_not(state)[0]}" if path == "/image" else ""
    out = page(state, path, search)
    prefix = path.strip("/")
    assert out[f"{prefix}-methods"].value == list(CLASSIC_METHODS)
    assert out[f"{prefix}-methods"].multi is True


def test_default_of_a_run_without_the_classic_methods() -> None:
    f = Filters()
    assert picked_methods(f, ["gradcam", "layercam", "eigencam"]) == ["gradcam"]
    assert picked_methods(f, ["layercam", "xgradcam", "hirescam", "eigencam", "ig_black"]) == [
        "layercam", "xgradcam", "hirescam", "eigencam"]
    assert picked_methods(f, []) == []


# ---------------------------------------------------------------- the URL


def test_methods_round_trip_through_the_url() -> None:
    f = parse_query("?methods=eigencam,gradcam,gradcam")
    assert f.methods == ("eigencam", "gradcam")  # deduplicated; the page orders them
    assert parse_query(to_query(f)) == f
    none = Filters(methods=())
    assert to_query(none) == "?methods=-" and parse_query(to_query(none)).methods == ()
    assert parse_query("").methods is None
    # the gallery's link to an image carries the pick
    assert "methods=eigencam%2Cgradcam" in image_href("r", "0123456789abcdef", f) or \
        "methods=eigencam,gradcam" in image_href("r", "0123456789abcdef", f)


def test_the_picker_writes_the_url_in_display_order() -> None:
    args = dict(true=None, pred=None, outcome="all", conf=[0.0, 1.0], sort="confidence", desc=[],
                method="gradcam", size=24, cmap="jet", alpha=0.5, active_page=3)
    picked = ["scorecam", "layercam", "cam"]
    out = gallery.controls_to_search("?page=2", "gallery-methods", picked=picked, **args)
    assert out == "?methods=cam,scorecam,layercam&page=2"  # canonical order; the page is kept
    assert gallery.controls_to_search("?page=2", "gallery-methods", picked=[], **args) == "?methods=-&page=2"
    # another control leaves an unpicked default alone (no methods= written)
    assert gallery.controls_to_search("", "gallery-outcome", picked=list(CLASSIC_METHODS),
                                      **{**args, "outcome": "wrong"}) == "?outcome=wrong"


def test_the_picker_callback_over_http(client: Any, app: Any) -> None:
    for prefix, search in (("gallery", "?page=1"), ("image", "?id=0123456789abcdef"), ("compare", "")):
        values = {f"{prefix}-methods.value": ["hirescam", "ig_black"], "url.search": search}
        r = post_callback(client, app, "url.search", values, changed=f"{prefix}-methods.value")
        assert "methods=hirescam,ig_black" in r["response"]["url"]["search"], prefix


# ---------------------------------------------------------------- the grids


def test_gallery_grid_shows_exactly_the_picked_methods_in_display_order(state: Any) -> None:
    out = page(state, "/gallery", "?methods=eigencam,gradcam,layercam")
    rows = out["gallery-rows"]
    shown = overlays(rows)
    ids = list(dict.fromkeys(i for i, _ in shown))
    assert len(ids) == 24
    # display order, whatever order the URL gave (once the engine's METHODS names layercam and
    # eigencam, theirs; until then they follow the canonical ones by name)
    order = canonical_order(["eigencam", "gradcam", "layercam"])
    assert order[0] == "gradcam"
    for iid in ids:
        assert [m for i, m in shown if i == iid] == order
    heads = [c.children for c in out._traverse() if getattr(c, "className", None) == "xd-cell-head"]
    assert heads == ["image", *(method_label(m) for m in order)]


def test_a_sampled_method_shows_a_placeholder_where_it_was_not_computed(state: Any, client: Any) -> None:
    run = latest(state)
    out = page(state, "/gallery", "?methods=ig_black&size=48")
    shown = {i for i, _ in overlays(out["gallery-rows"])}
    keys = state.data.map_keys(run, list(state.data.embedding_points(run)["image_id"]))
    have = {i for i, m, k in keys if m == "ig_black" and k == "pred"}
    assert shown == have and 0 < len(have) < 48
    assert texts(out["gallery-rows"]).count("not computed for this image") == 48 - len(have)
    with_maps, without = sampled_and_not(state)
    assert client.get(f"/overlay/{run}/{with_maps}/ig_black.png").status_code == 200
    assert client.get(f"/overlay/{run}/{without}/ig_black.png").status_code == 404
    assert client.get(f"/overlay/{run}/{with_maps}/not_stored.png").status_code == 404


def test_image_page_shows_the_picked_methods_and_says_which_are_missing(state: Any) -> None:
    with_maps, without = sampled_and_not(state)
    for iid, present in ((with_maps, ["hirescam", "ig_black", "smoothgrad"]), (without, ["hirescam"])):
        out = page(state, "/image", f"?id={iid}&methods=smoothgrad,hirescam,ig_black")
        srcs = [getattr(c, "src", "") for c in out._traverse()]
        pred_maps = [m.group(2) for s in srcs if isinstance(s, str) and "target=" not in s
                     and (m := OVERLAY.search(s)) and m.group(1) == iid]
        # the picked methods' grid first (the image page's attribution card may repeat a sampled one)
        assert pred_maps[:len(present)] == present
        assert texts(out).count("not computed for this image") >= 3 - len(present)


def test_compare_page_shows_both_runs_maps_of_each_picked_method(state: Any) -> None:
    out = page(state, "/compare", "?methods=scorecam,xgradcam&change=broke")
    flips = out["compare-flips"]
    heads = [c.children for c in flips._traverse() if getattr(c, "className", None) == "xd-cell-head"]
    assert heads == ["image", *(f"{ab} · {method_label(m)}" for m in ("scorecam", "xgradcam") for ab in "AB")]
    per_image: dict[str, list[str]] = {}
    for iid, m in overlays(flips):
        per_image.setdefault(iid, []).append(m)
    assert per_image
    assert all(ms == ["scorecam", "scorecam", "xgradcam", "xgradcam"] for ms in per_image.values())
    assert compare.KEYS.count("methods") == 1


# ---------------------------------------------------------------- bad picks


@pytest.mark.parametrize(
    ("search", "expect"),
    [
        ("?methods=bogus,gradcam", ["gradcam"]),  # the unknown name is ignored
        ("?methods=bogus", list(CLASSIC_METHODS)),  # nothing usable: the default
        ("?methods=%27%20OR%201%3D1%20--", list(CLASSIC_METHODS)),  # fails METHOD_RE
        ("?methods=" + ",".join(["cam"] * 500), ["cam"]),
        ("?methods=GRADCAM,../x,", list(CLASSIC_METHODS)),
    ],
)
def test_a_bad_method_in_the_url_is_ignored(state: Any, client: Any, app: Any, search: str,
                                            expect: list[str]) -> None:
    out = page(state, "/gallery", search)
    assert out["gallery-methods"].value == expect
    assert {m for _, m in overlays(out["gallery-rows"])} == set(expect)
    for path in ("/gallery", "/image", "/compare"):
        r = post_callback(client, app, "page-content.children", {"url.pathname": path, "url.search": search})
        assert "could not be rendered" not in str(r["response"])


def test_every_canonical_method_is_offered_when_the_run_has_it() -> None:
    # METHODS grows as methods are added; whatever it holds keeps its order in the picker
    assert canonical_order(list(reversed(METHODS))) == list(METHODS)
