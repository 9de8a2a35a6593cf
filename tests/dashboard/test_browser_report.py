"""The report in headless Chromium: it draws every figure and image from the file alone, and the
browser's network log shows no request outside ``file://`` and ``data:``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import SHOTS, headless_chromium, wait_for
from tests.support.synthetic import build_synthetic_store
from xaidash.api import write_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def logging_driver() -> Iterator[Any]:
    """Chromium with its DevTools network events in the performance log (every request it makes)."""
    with headless_chromium("1400,1000", network_log=True) as drv:
        yield drv


def _requested(drv: Any) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(str(msg["params"]["request"]["url"]))
    return urls


def test_report_offline_in_chromium(logging_driver: Any, tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_synthetic_store(store, n_val=150, n_train=60, runs=1, seed=7, emb_dim=16, trust=True)
    out = tmp_path / "report.html"
    write_report(store, "latest", out, top_errors=6)
    drv = logging_driver
    drv.get_log("performance")  # drop what the blank start page did
    drv.get(out.as_uri())
    wait_for(
        lambda: drv.execute_script(
            "return document.querySelectorAll('.xd-graph').length > 0 && Array.from("
            "document.querySelectorAll('.xd-graph')).every(g => g.querySelector('.main-svg'))"
        ),
        "figures to draw",
    )
    wait_for(
        lambda: drv.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        ),
        "images to load",
    )
    urls = _requested(drv)
    assert any(u.startswith("file://") for u in urls)
    outside = [u for u in urls if not (u.startswith("file://") or u.startswith("data:"))]
    assert outside == [], f"requests outside the file: {outside}"
    SHOTS.mkdir(exist_ok=True)
    drv.save_screenshot(str(SHOTS / "report-first-screen.png"))
    wait_for(lambda: drv.execute_script(  # again until it stays: figures may still be resizing
        "const e = document.getElementById('section-errors'); e.scrollIntoView();"
        "return Math.abs(e.getBoundingClientRect().top) < 5"), "the errors section at the top")
    drv.save_screenshot(str(SHOTS / "report-errors.png"))


def test_pdf_through_chromium(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_synthetic_store(store, n_val=40, n_train=20, runs=1, seed=8, emb_dim=8)
    html_path, pdf_path = write_report(store, "latest", tmp_path / "r.html", pdf=True, top_errors=2)
    assert html_path.is_file()
    data = pdf_path.read_bytes()
    assert pdf_path == tmp_path / "r.pdf" and data.startswith(b"%PDF") and data.count(b"/Type /Page") >= 2
