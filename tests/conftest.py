"""Fixtures shared across the test packages (helpers that are plain functions live in tests/support/)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """A headless Chromium (selenium); skips when Chromium or chromedriver is not installed."""
    from tests.support.browser import SHOTS, headless_chromium  # skips without Chromium or selenium

    SHOTS.mkdir(exist_ok=True)
    with headless_chromium() as drv:
        yield drv


