"""xaidash.compute.analysis.projection: shapes, determinism, sample-fit + transform path, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xaidash.compute.analysis.projection import default_projection, project_2d, umap_available
from xaidash.errors import UserError


def _data(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)) * 3
    return (centers[np.arange(n) % 3] + rng.normal(size=(n, 16))).astype(np.float32)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_shape_and_determinism(method: str) -> None:
    if method == "umap" and not umap_available():
        pytest.skip("umap-learn not installed")
    x = _data()
    a, used = project_2d(x, method, seed=3)
    b, _ = project_2d(x, method, seed=3)
    assert used == method
    assert a.shape == (60, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_fit_on_sample_then_transform(method: str) -> None:
    if method == "umap" and not umap_available():
        pytest.skip("umap-learn not installed")
    x = _data(80)
    xy, _ = project_2d(x, method, seed=0, fit_sample=40, chunk=16)
    assert xy.shape == (80, 2) and np.isfinite(xy).all()


def test_tiny_inputs_and_errors() -> None:
    assert project_2d(np.zeros((0, 4)), "pca")[0].shape == (0, 2)
    assert project_2d(np.ones((1, 4)), "umap" if umap_available() else "pca")[0].shape == (1, 2)
    xy, used = project_2d(_data(5), "tsne")
    assert used == "pca" and xy.shape == (5, 2)
    with pytest.raises(UserError, match="valid projections"):
        project_2d(_data(), "mds")
    assert default_projection() in ("umap", "pca")


def test_default_without_umap_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default map falls back to PCA without umap-learn, with a warning (not silently)."""
    import xaidash.compute.analysis.projection as projection

    monkeypatch.setattr(projection, "umap_available", lambda: False)
    x = np.random.default_rng(0).random((40, 8)).astype(np.float32)
    with caplog.at_level("WARNING", logger=projection.__name__):
        _, used = project_2d(x, None)
    assert used == "pca" and "umap-learn is not installed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=projection.__name__):
        project_2d(x, "pca")  # asked for: nothing to announce
    assert "umap-learn" not in caplog.text
