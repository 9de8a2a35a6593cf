"""The method picker in headless Chromium (``pytest -m browser``): a run with eight CAM methods and
two methods with maps of a sample of images; picking methods rewrites the URL and the grids, and a
missing map is a placeholder (``check_page`` fails on any image that did not load).
Screenshots: ``tests/screenshots/methods_*.png``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import By, LiveServer, check_page, css, open_page, wait_for

pytestmark = pytest.mark.browser

RUN_METHODS = ("cam", "gradcam", "gradcampp", "scorecam", "layercam", "xgradcam", "hirescam", "eigencam")
SAMPLED = ("ig_black", "smoothgrad")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from tests.support.synthetic import build_synthetic_store

    store: Path = tmp_path_factory.mktemp("mstore")
    build_synthetic_store(store, n_val=120, n_train=100, runs=2, seed=4, methods=RUN_METHODS,
                          sampled_methods=SAMPLED)
    srv = LiveServer(store, tmp_path_factory.mktemp("sel"))
    yield srv
    srv.close()


def _pick(driver: Any, picker: str, label: str) -> None:
    """Open the multi-select ``picker`` and click the option ``label``."""
    driver.find_element(By.ID, picker).click()
    option = wait_for(
        lambda: [e for e in css(driver, "[role='option'], .Select-option, .VirtualizedSelectOption")
                 if e.text.strip() == label],
        f"the {label} option",
    )[0]
    option.click()


def _row_cells(driver: Any) -> list[int]:
    return [len(r.find_elements(By.CSS_SELECTOR, ".xd-cell")) for r in css(driver, "#gallery-rows .xd-row")]


def test_gallery_picker_adds_a_sampled_method(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/gallery", "#gallery-rows .xd-row")
    assert set(_row_cells(driver)) == {5}  # the image and the classic four
    check_page(driver, "methods_gallery_default")
    _pick(driver, "gallery-methods", "IG (black)")
    picked = "methods=cam,gradcam,gradcampp,scorecam,ig_black"
    wait_for(lambda: picked in driver.current_url.replace("%2C", ","), "the pick in the URL")
    wait_for(lambda: set(_row_cells(driver)) == {6}, "a sixth cell per row")
    placeholders = css(driver, "#gallery-rows .xd-cell-missing")
    assert placeholders and all(p.text == "not computed for this image" for p in placeholders)
    check_page(driver, "methods_gallery_sampled")  # every <img> loaded: no broken image for a missing map


def test_image_and_compare_pages_show_the_picked_methods(driver: Any, server: LiveServer) -> None:
    open_page(driver, server.url + "/gallery?methods=gradcam,hirescam,eigencam,smoothgrad",
              "#gallery-rows .xd-row-link")
    css(driver, "#gallery-rows .xd-row-link")[0].click()
    wait_for(lambda: "/image" in driver.current_url, "the image page")
    assert "methods=" in driver.current_url  # the pick travels with the link
    wait_for(lambda: css(driver, "#image-twins img"), "twins")
    heads = [e.text for e in css(driver, ".xd-cam-large, .xd-cam-missing")]
    assert len(heads) in (4, 8)  # four picked, for the predicted (and the true) class
    check_page(driver, "methods_image")
    open_page(driver, server.url + "/compare?methods=scorecam,layercam", "#compare-flips")
    heads = [e.text for e in css(driver, "#compare-flips .xd-cell-head")]
    assert heads[0] == "image" and len(heads) == 5 and heads[1].startswith("A · Score")
    check_page(driver, "methods_compare")
