"""End-to-end tests in headless Chromium against a live dashboard (``pytest -m browser``).

The app runs in a thread on a free port over a synthetic store (two runs). Each test drives
what a reviewer does - click a confusion cell, open an image, select a region of the map,
compare runs, upload an image - and saves a screenshot to ``tests/screenshots/`` for a human
to look at. Every page must be styled (Bootstrap applied) and load nothing from outside.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import (
    _TO_VIEWPORT,
    SHOTS,
    By,
    LiveServer,
    box_select,
    check_page,
    click_xy,
    css,
    open_page,
    wait_for,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from tests.support.synthetic import build_synthetic_store

    store = tmp_path_factory.mktemp("bstore")
    build_synthetic_store(store, n_val=300, n_train=400, runs=2, seed=2)
    srv = LiveServer(store, tmp_path_factory.mktemp("sel"))
    yield srv
    srv.close()


def test_overview_and_confusion_click_opens_gallery(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/", "#overview-confusion .js-plotly-plot")
    assert "Accuracy" in driver.page_source and "Most faithful for this model" in driver.page_source
    check_page(driver, "overview")  # every graph drawn, the trust card's error bars included
    assert css(driver, "#overview-recommend-figure .main-svg")
    assert "for this model" in driver.find_element(By.ID, "overview-recommend-sentence").text or \
        "No method passes" in driver.find_element(By.ID, "overview-recommend-sentence").text
    # The off-diagonal cell true=0 -> pred=1 (the synthetic data confuses neighbouring classes).
    x, y = driver.execute_script(_TO_VIEWPORT, "#overview-confusion", 1, 0)
    click_xy(driver, x, y)
    wait_for(lambda: "/gallery" in driver.current_url, "navigation to the gallery")
    assert "true=0" in driver.current_url and "pred=1" in driver.current_url
    wait_for(lambda: css(driver, "#gallery-rows, .xd-empty"), "gallery results")
    badges = driver.find_element(By.ID, "gallery-results").text
    assert "true = airplane" in badges and "pred = automobile" in badges
    check_page(driver, "gallery_confusion_cell")


def test_gallery_filters_write_the_url(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/gallery?outcome=wrong&sort=confidence&desc=1", "#gallery-rows")
    n_rows = len(css(driver, "#gallery-rows .xd-row"))
    assert n_rows > 0
    assert len(css(driver, "#gallery-rows img")) == 5 * n_rows  # image + four overlays per row
    assert all("/overlay/" in i.get_attribute("src") for i in css(driver, "#gallery-rows .xd-cell img")[1:5])
    check_page(driver, "gallery_wrong")
    # Picking "correct" rewrites the query string and re-renders.
    driver.find_element(
        By.CSS_SELECTOR, "label[for='_dbcprivate_radioitems_gallery-outcome_input_correct']"
    ).click()
    wait_for(lambda: "outcome=correct" in driver.current_url, "outcome in the URL")
    wait_for(lambda: not css(driver, "#gallery-rows .xd-row-wrong"), "only correct rows")


def test_image_page_four_cams_and_twins(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/gallery?outcome=wrong", "#gallery-rows .xd-row-link")
    css(driver, "#gallery-rows .xd-row-link")[0].click()
    wait_for(lambda: "/image" in driver.current_url, "navigation to the image page")
    wait_for(lambda: css(driver, "#image-twins img"), "twins")
    cams = css(driver, ".xd-cam-large")
    assert len(cams) == 8  # four for the predicted class, four for the true class (wrong)
    assert "Why not" in driver.page_source
    assert len(css(driver, "#image-twins .xd-neighbor")) >= 1
    assert len(css(driver, "#image-counterfactuals .xd-neighbor")) >= 1
    assert css(driver, "#image-faithfulness") and css(driver, "#image-history")
    check_page(driver, "image_page")


def test_embedding_box_selection_opens_gallery(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/embedding", "#embedding-graph .js-plotly-plot")
    wait_for(lambda: css(driver, "#embedding-graph .gl-canvas, #embedding-graph canvas"), "WebGL canvas")
    box_select(driver, "#embedding-graph", 0.1, 0.05)  # a box over the middle half of the plot area
    btn = wait_for(lambda: css(driver, "#embedding-open-gallery"), "the open-selection button")[0]
    n_sel = int(driver.find_element(By.ID, "embedding-selection-count").text.split()[0].replace(",", ""))
    assert n_sel > 0
    check_page(driver, "embedding_selection")
    btn.click()
    wait_for(lambda: "/gallery" in driver.current_url, "navigation to the gallery")
    assert "sel=" in driver.current_url or "ids=" in driver.current_url
    count = wait_for(lambda: css(driver, "#gallery-count"), "gallery count")[0].text
    assert int(count.split()[0].replace(",", "")) == n_sel
    assert css(driver, "#gallery-selection-badge")
    check_page(driver, "gallery_selection")


def test_embedding_click_draws_twin_lines(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/embedding", "#embedding-graph .js-plotly-plot")
    # Click the first point of the first class trace at its on-screen position.
    x, y = driver.execute_script(
        "const gd=document.querySelector('#embedding-graph .js-plotly-plot');"
        "const t=gd._fullData.find(d => d.customdata && d.customdata.length && d.x.length);"
        "const fl=gd._fullLayout, r=gd.getBoundingClientRect();"
        "return [r.left+fl.xaxis._offset+fl.xaxis.l2p(t.x[0]), r.top+fl.yaxis._offset+fl.yaxis.l2p(t.y[0])];"
    )
    click_xy(driver, x, y)
    wait_for(lambda: css(driver, "#embedding-open-image"), "the pinned point panel")
    wait_for(
        lambda: driver.execute_script(
            "return document.querySelector('#embedding-graph .js-plotly-plot')"
            ".data.some(d => d.name === 'twins' && d.x && d.x.length > 0)"
        ),
        "twin lines",
    )
    assert "id=" in driver.current_url
    check_page(driver, "embedding_twins")


def test_compare_runs(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/compare", "#compare-metrics")
    assert "right → wrong" in driver.page_source and "wrong → right" in driver.page_source
    wait_for(lambda: css(driver, "#compare-flips .xd-row img"), "flipped images")
    check_page(driver, "compare")
    driver.find_element(
        By.CSS_SELECTOR, "label[for='_dbcprivate_radioitems_compare-change_input_fixed']"
    ).click()
    wait_for(lambda: "change=fixed" in driver.current_url, "change=fixed in the URL")
    wait_for(lambda: css(driver, "#compare-flips .xd-row img"), "fixed images")


def test_bad_query_params_are_harmless(driver: Any, server: LiveServer) -> None:
    open_page(
        driver, server.url + "/gallery?run=nope&page=abc&true=1%3BDROP%20TABLE%20runs&cmin=x", "#gallery-rows"
    )
    assert "There is no run" in driver.page_source
    check_page(driver, "gallery_bad_params")


# ---------------------------------------------------------------- upload (real model)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A tiny real run computed by the real job (random-weight resnet18 on 16 px images)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("xaidash.compute.pipeline.job", reason="xaidash.compute.pipeline.job has not landed")
    from tests.support.imagegen import make_imagefolder
    from xaidash.cli import main
    from xaidash.compute.model.architectures import build_model
    from xaidash.compute.model.checkpoint import Checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("real")
    folder = make_imagefolder(root / "data", ("left", "right"), n_train=6, n_val=4, size=16)
    torch.manual_seed(0)
    parts = build_model("resnet18", 2, input_size=16)
    ckpt_path = root / "model.pt"
    save_checkpoint(
        Checkpoint(
            arch="resnet18",
            classes=["left", "right"],
            preprocessing=parts.preprocessing,
            small_input_stem=True,
            state_dict=parts.model.state_dict(),
            train_args={},
            metrics={},
            versions={},
            created="2024-01-01T00:00:00+00:00",
            path=None,
            sha256=None,
        ),
        str(ckpt_path),
    )
    store = root / "store"
    rc = main(
        [
            "compute",
            "--data",
            f"imagefolder:{folder}",
            "--checkpoint",
            str(ckpt_path),
            "--store",
            str(store),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--chunk-size",
            "8",
            "--scorecam-max-channels",
            "4",
            "--faithfulness-steps",
            "2",
            "--projection",
            "pca",
            "--twins",
            "2",
            "--attribution-images",
            "0",
        ]
    )
    assert rc == 0
    srv = LiveServer(store, root / "sel")
    yield srv
    srv.close()


def _upload(driver: Any, path: Path) -> None:
    field = driver.find_element(By.CSS_SELECTOR, "#explain-upload input[type=file]")
    field.send_keys(str(path))


def _explain_upload(driver: Any, server: LiveServer, path: Path, size: tuple[int, int],
                    colour: tuple[int, int, int]) -> None:
    """Upload a plain image of ``size`` and ``colour`` to the explain page; wait for the result."""
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    open_page(driver, server.url + "/explain", "#explain-upload")
    _upload(driver, path)
    wait_for(lambda: css(driver, "#explain-output"), "the explanation", timeout=120)
    assert "Top-3 classes" in driver.page_source


def test_upload_explains_an_image(driver: Any, real_server: LiveServer, tmp_path: Path) -> None:
    _explain_upload(driver, real_server, tmp_path / "upload.png", (40, 30), (200, 30, 30))
    assert len(css(driver, "#explain-output .xd-cam-large")) >= 3  # CAM, Grad-CAM, Grad-CAM++ (+ Score-CAM)
    assert css(driver, "#explain-output .xd-neighbor"), "twins from the train embeddings"
    check_page(driver, "explain_upload")
    # A file that is not an image is refused with a clear message.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")
    open_page(driver, real_server.url + "/explain", "#explain-upload")
    _upload(driver, bad)
    msg = wait_for(lambda: css(driver, "#explain-error"), "the refusal")[0].text
    assert "not an image" in msg or "not a PNG or JPEG" in msg
    driver.save_screenshot(str(SHOTS / "explain_refused.png"))


@pytest.fixture(scope="module")
def vit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A run of a model the user brought: a tiny seeded timm ViT, ``--model python:FILE.py:FUNC``."""
    pytest.importorskip("timm")
    from tests.support import byo_models
    from tests.support.imagegen import make_imagefolder
    from xaidash.cli import main

    root = tmp_path_factory.mktemp("vit")
    folder = make_imagefolder(root / "data", ("a", "b", "c"), n_train=2, n_val=2, size=64)
    store = root / "store"
    rc = main(["compute", "--data", f"imagefolder:{folder}", "--store", str(store), "--model",
               f"python:{byo_models.__file__}:timm_vit", "--input-size", "64", "--device", "cpu",
               "--workers", "0", "--batch-size", "4", "--faithfulness-steps", "2", "--projection", "pca",
               "--twins", "1", "--sanity-images", "0", "--road-fractions", "none",
               "--scorecam-max-channels", "4", "--attribution-images", "0"])
    assert rc == 0
    srv = LiveServer(store, root / "sel")
    yield srv
    srv.close()


def test_upload_explains_an_image_with_a_brought_vit(driver: Any, vit_server: LiveServer,
                                                      tmp_path: Path) -> None:
    _explain_upload(driver, vit_server, tmp_path / "upload.png", (50, 70), (30, 200, 30))
    # the run's maps on the ViT's tokens: every method but CAM (no GAP + linear head)
    shown = [e.text for e in css(driver, "#explain-output .fw-semibold.small")]
    assert {"Grad-CAM", "Grad-CAM++", "Score-CAM", "LayerCAM", "Eigen-CAM"} <= set(shown), shown
    assert "CAM" not in shown and len(css(driver, "#explain-output .xd-cam-large")) == 7
    wait_for(lambda: css(driver, "#explain-output .js-plotly-plot .bars path"), "the top-3 bars")
    assert "all zero: no positive evidence" in driver.page_source  # this seed's Grad-CAM++ is constant
    assert "byo_models.py" in driver.page_source and "/work/" not in driver.page_source  # no server paths
    check_page(driver, "explain_upload_vit")


def test_density_map_hover_and_box_selection(driver: Any, server: LiveServer) -> None:
    """A map over ``max_points`` (here 50, so the 300-image store is "large") draws the density
    raster; hovering a dense cell of the invisible heatmap shows the nearest point's thumbnail,
    and a box selection still opens every selected image in the gallery."""
    from xaidash.dashboard import figures

    state = server.app.server.config["XAIDASH_STATE"]
    defaults = figures.plot_embedding.__defaults__
    assert defaults is not None
    figures.plot_embedding.__defaults__ = (*defaults[:-1], 50)  # max_points
    state.derived._lru._d.clear()  # the cached full-scatter figures of the earlier tests
    state.pages._d.clear()  # and the embedding pages the router sent with them
    try:
        open_page(driver, server.url + "/embedding", "#embedding-graph .js-plotly-plot")
        wait_for(
            lambda: driver.execute_script(
                "const gd=document.querySelector('#embedding-graph .js-plotly-plot');"
                "return gd._fullLayout.images.length === 1 && gd.querySelectorAll('image').length > 0"
                " && gd._fullData.some(d => d.type === 'heatmap')"
            ),
            "the density raster",
        )
        # hover the densest heatmap cell, at its on-screen position
        x, y = driver.execute_script(
            "const gd=document.querySelector('#embedding-graph .js-plotly-plot');"
            "const t=gd._fullData.find(d => d.type === 'heatmap'); let best=[0,0,-1];"
            "t.z.forEach((row, i) => row.forEach((v, j) => { if (v > best[2]) best=[i, j, v]; }));"
            "const fl=gd._fullLayout, r=gd.getBoundingClientRect();"
            "const cx=t.x0+best[1]*t.dx, cy=t.y0+best[0]*t.dy;"
            "return [r.left+fl.xaxis._offset+fl.xaxis.l2p(cx), r.top+fl.yaxis._offset+fl.yaxis.l2p(cy)];"
        )
        driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        wait_for(lambda: css(driver, "#embedding-hover img.xd-hover-thumb"), "the hovered point's thumbnail")
        check_page(driver, "embedding_density_hover")
        box_select(driver, "#embedding-graph", 0.1, 0.1)
        wait_for(lambda: css(driver, "#embedding-open-gallery"), "the open-selection button")
        n_sel = int(driver.find_element(By.ID, "embedding-selection-count").text.split()[0].replace(",", ""))
        assert n_sel > 50  # more than the markers drawn: the selection covers every point
    finally:
        figures.plot_embedding.__defaults__ = defaults
        state.derived._lru._d.clear()
        state.pages._d.clear()
