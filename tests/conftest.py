"""Fixtures shared across the test packages (helpers that are plain functions live in tests/support/)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per xdist worker (and in what its tests start): the two workers share two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """A headless Chromium (selenium); skips when Chromium or chromedriver is not installed."""
    from tests.support.browser import SHOTS, headless_chromium  # skips without Chromium or selenium

    SHOTS.mkdir(exist_ok=True)
    with headless_chromium() as drv:
        yield drv


