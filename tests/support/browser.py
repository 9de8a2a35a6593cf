"""Driving headless Chromium against a live dashboard: the server, waits, page checks, mouse input.

Used by the browser tests (tests/dashboard/test_browser.py) and the end-to-end tests
(tests/e2e/); the ``driver`` fixture is in tests/conftest.py. Importing this module skips the
importing test module when Chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from xaidash.dashboard.server.serving import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
WAIT_S = 30.0

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("chromium/chromedriver not installed", allow_module_level=True)
selenium = pytest.importorskip("selenium")

from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


@contextmanager
def headless_chromium(window: str = "1500,1100", *, network_log: bool = False) -> Iterator[Any]:
    """A headless Chromium in a throw-away profile; ``network_log`` keeps DevTools' network events
    in the performance log (every request the page makes)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window}"):
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="xaidash-chrome-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = CHROMIUM
    if network_log:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)



class LiveServer:
    """A dashboard served by werkzeug in a daemon thread."""

    def __init__(self, store: Path, selections: Path) -> None:
        from werkzeug.serving import make_server

        from xaidash.dashboard.app import create_app

        self.app = create_app(store, selections_dir=selections)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._srv = make_server("127.0.0.1", self.port, self.app.server, threaded=True)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._srv.shutdown()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``cond`` until truthy (exceptions count as not yet)."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as exc:  # element not there yet, stale, ...
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def css(drv: Any, selector: str) -> list[Any]:
    return drv.find_elements(By.CSS_SELECTOR, selector)


def check_page(drv: Any, name: str) -> None:
    """Styled, nothing external, no Dash error, images loaded; then a screenshot."""
    bg = drv.execute_script("return getComputedStyle(document.getElementById('navbar')).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), "Bootstrap CSS not applied to the navbar"
    external = drv.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith('http://127.0.0.1') && !n.startsWith('data:'))"
    )
    assert external == [], f"loaded from outside the server: {external}"
    assert not css(drv, ".dash-fe-error__title"), "a Dash callback error is shown"
    assert "could not be rendered" not in drv.page_source
    wait_for(
        lambda: drv.execute_script(
            "return Array.from(document.querySelectorAll('.dash-graph'))"
            ".every(g => g.querySelector('.main-svg'))"
        ),
        f"graphs on {name} to draw",
    )
    wait_for(
        lambda: drv.execute_script(
            "return Array.from(document.images).every(i => i.complete && (i.naturalWidth > 0 || !i.src))"
        ),
        f"images on {name} to load",
    )
    drv.save_screenshot(str(SHOTS / f"{name}.png"))


def open_page(drv: Any, url: str, ready: str) -> None:
    drv.get(url)
    wait_for(lambda: css(drv, ready), f"{ready} at {url}")


def click_xy(drv: Any, x: float, y: float) -> None:
    """A real mouse click at viewport coordinates (Chrome DevTools input events)."""
    drv.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    time.sleep(0.2)  # let plotly compute the hover point the click reports
    for kind in ("mousePressed", "mouseReleased"):
        drv.execute_cdp_cmd(
            "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
        )


def drag(drv: Any, points: list[tuple[float, float]]) -> None:
    """A real mouse drag through ``points`` (viewport coordinates)."""
    x0, y0 = points[0]
    drv.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x0, "y": y0})
    drv.execute_cdp_cmd(
        "Input.dispatchMouseEvent",
        {"type": "mousePressed", "x": x0, "y": y0, "button": "left", "clickCount": 1},
    )
    for x, y in points[1:]:
        drv.execute_cdp_cmd(
            "Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "left"}
        )
        time.sleep(0.03)
    x1, y1 = points[-1]
    drv.execute_cdp_cmd(
        "Input.dispatchMouseEvent",
        {"type": "mouseReleased", "x": x1, "y": y1, "button": "left", "clickCount": 1},
    )


# JS: viewport position of data coordinates (category index or value) in a plotly graph.
_TO_VIEWPORT = """
const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');
const fl = gd._fullLayout, r = gd.getBoundingClientRect();
return [r.left + fl.xaxis._offset + fl.xaxis.l2p(arguments[1]),
        r.top + fl.yaxis._offset + fl.yaxis.l2p(arguments[2])];
"""


def box_select(drv: Any, graph: str, start: float, step: float) -> None:
    """Switch the plotly graph inside ``graph`` (a CSS selector) to box selection and drag a box
    diagonally over its plot area, from ``start`` in ``step`` increments (fractions of the area)."""
    plot = f"document.querySelector('{graph} .js-plotly-plot')"
    drv.execute_script(f"Plotly.relayout({plot}, {{dragmode: 'select'}})")
    time.sleep(0.5)
    left, top, w, h = drv.execute_script(
        f"const gd={plot}; const fl=gd._fullLayout; const r=gd.getBoundingClientRect();"
        "return [r.left+fl._size.l, r.top+fl._size.t, fl._size.w, fl._size.h];"
    )
    drag(drv, [(left + w * (start + step * i), top + h * (start + step * i)) for i in range(9)])
