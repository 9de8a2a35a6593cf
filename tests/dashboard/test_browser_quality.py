"""The data-quality views in headless Chromium (``pytest -m browser``): the overview's quality
card, the gallery's "likely mislabelled / leak / outlier" filter and label-quality sort, and the
error clusters a confusion-cell click shows. Screenshots go to ``tests/screenshots/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import _TO_VIEWPORT, By, LiveServer, check_page, click_xy, css, open_page, wait_for
from xaidash.dashboard.pages.overview.quality import accuracy_without_leaks

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.synthetic import build_synthetic_store

    path = tmp_path_factory.mktemp("qstore")
    build_synthetic_store(path, n_val=600, n_train=400, runs=2, seed=4)
    return path


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(store, tmp_path_factory.mktemp("sel"))
    yield srv
    srv.close()


def _count(driver: Any) -> int:
    return int(driver.find_element(By.ID, "gallery-count").text.split()[0].replace(",", ""))


def test_overview_card_and_gallery_quality_filter(driver: Any, server: LiveServer, store: Path) -> None:
    from xaidash.store.read.reader import open_store

    with open_store(store) as r:
        rid = r.latest_run_id()
        assert rid is not None
        summary = r.quality_summary(rid)
    open_page(driver, server.url + "/", "#overview-quality-card")
    card = driver.find_element(By.ID, "overview-quality-card").text
    assert "Likely mislabelled" in card and "Leaks" in card and "Outliers" in card
    # the accuracy without leaks, as the overview words it for this run's kinds of leak
    assert accuracy_without_leaks(summary) in driver.find_element(By.ID, "overview-page").text
    check_page(driver, "overview_quality")
    # the "Likely mislabelled" number opens the gallery filtered to them, by label quality
    link = driver.find_element(By.CSS_SELECTOR, "#overview-quality-card a[href*='flag=mislabelled']")
    driver.execute_script("arguments[0].click()", link)  # below the fold: a scripted click
    wait_for(lambda: "flag=mislabelled" in driver.current_url, "the flag in the URL")
    wait_for(lambda: css(driver, "#gallery-flag-badge"), "the flag badge")
    assert "sort=label_quality" in driver.current_url
    wait_for(lambda: _count(driver) == summary["mislabelled"], "the mislabelled count")
    check_page(driver, "gallery_mislabelled")
    # the dropdown switches the filter to leaks: a new URL and the leak count
    driver.find_element(By.ID, "gallery-flag").click()
    option = wait_for(
        lambda: [e for e in css(driver, "[role='option'], .Select-option, .VirtualizedSelectOption")
                 if e.text.strip() == "leak"],
        "the leak option",
    )[0]
    option.click()
    wait_for(lambda: "flag=leak" in driver.current_url, "flag=leak in the URL")
    wait_for(lambda: _count(driver) == summary["leaks"], "the leak count")
    check_page(driver, "gallery_leaks")


def test_confusion_cell_click_shows_error_clusters(driver: Any, server: LiveServer, store: Path) -> None:
    from xaidash.store.read.reader import open_store

    with open_store(store) as r:
        rid = r.latest_run_id()
        cl = r.sql("SELECT true_class, pred_class, max(cluster) + 1 AS k, sum(size) AS n FROM error_clusters "
                   "WHERE run_id = ? AND method = 'gradcam' GROUP BY ALL ORDER BY k DESC, n DESC", [rid])
    assert len(cl), "the synthetic run has clustered cells"
    t, p, k = int(cl["true_class"].iloc[0]), int(cl["pred_class"].iloc[0]), int(cl["k"].iloc[0])
    open_page(driver, server.url + "/", "#overview-confusion .js-plotly-plot")
    x, y = driver.execute_script(_TO_VIEWPORT, "#overview-confusion", p, t)
    click_xy(driver, x, y)
    wait_for(lambda: f"true={t}" in driver.current_url and f"pred={p}" in driver.current_url, "the cell")
    panel = wait_for(lambda: css(driver, "#gallery-clusters"), "the cluster view")[0]
    assert panel.text.count("Cluster ") == k and "mean maps" in panel.text
    assert len(css(driver, "#gallery-clusters a img")) <= 3 * k
    assert len(css(driver, "#gallery-clusters img[src^='data:image/png']")) == 4 * k  # 4 methods
    check_page(driver, "gallery_error_clusters")


def test_image_page_shows_a_leak_beside_its_train_copy(driver: Any, server: LiveServer, store: Path) -> None:
    from xaidash.store.read.reader import open_store

    with open_store(store) as r:
        rid = r.latest_run_id()
        leak = r.sql("SELECT image_id, leak_train_id FROM quality WHERE run_id = ? AND leak "
                     "ORDER BY image_id LIMIT 1", [rid])
    iid, train_id = str(leak["image_id"].iloc[0]), str(leak["leak_train_id"].iloc[0])
    open_page(driver, server.url + f"/image?id={iid}", "#image-quality-leak-pair")
    srcs = [i.get_attribute("src") for i in css(driver, "#image-quality-leak-pair img")]
    assert len(srcs) == 2 and iid in srcs[0] and train_id in srcs[1]
    assert "Leak:" in driver.find_element(By.ID, "image-quality-card").text
    check_page(driver, "image_leak_pair")
