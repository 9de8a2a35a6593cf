"""Fixtures of the dashboard tests: a small synthetic store (two runs) and the app over it.

Module-scoped, so each test module gets its own store and app (the tests mutate neither).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.dashboard.app import create_app


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    # trust=True: the trust tables too, so every page test and the fuzzing cover their sections
    build_synthetic_store(path, n_val=200, n_train=300, runs=2, seed=1, trust=True)
    return path


@pytest.fixture(scope="module")
def app(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(store_dir, selections_dir=tmp_path_factory.mktemp("sel"))


@pytest.fixture(scope="module")
def state(app: Any) -> Any:
    return app.server.config["XAIDASH_STATE"]


@pytest.fixture(scope="module")
def client(app: Any) -> Any:
    c = app.server.test_client()
    assert c.get("/").status_code == 200  # also finalises the callback map
    return c
