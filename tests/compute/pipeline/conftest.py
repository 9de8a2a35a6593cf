"""Fixtures of the job tests: the tiny seeded checkpoint, written once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
