"""Overlay rendering: bilinear upsampling, colormaps, alpha blending, parsing, cache."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xaidash.dashboard import overlays


def _png(w: int = 32, h: int = 24, color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def test_upsample_is_bilinear_and_clipped() -> None:
    cam = np.array([[0.0, 1.0]], dtype=np.float32)
    up = overlays.upsample_map(cam, 8, 1)
    assert up.shape == (1, 8)
    assert np.all(np.diff(up[0]) >= -1e-6)  # monotone ramp, not nearest-neighbour steps
    assert up[0, 0] == pytest.approx(0.0, abs=1e-6) and up[0, -1] == pytest.approx(1.0, abs=1e-6)
    assert len(np.unique(np.round(up, 4))) > 2
    bad = np.array([[np.nan, 2.0], [-1.0, 0.5]], dtype=np.float32)
    out = overlays.upsample_map(bad, 2, 2)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_all_zero_map_stays_zero() -> None:
    out = overlays.upsample_map(np.zeros((7, 7), np.float32), 96, 96)
    assert out.max() == 0


@pytest.mark.parametrize("cmap", overlays.COLORMAPS)
def test_colorize_uses_matplotlib_colormap(cmap: str) -> None:
    import matplotlib

    rgb = overlays.colorize(np.array([[0.0, 1.0]], np.float32), cmap)
    ref = (np.asarray(matplotlib.colormaps[cmap]([0.0, 1.0]))[:, :3] * 255).round()
    assert np.abs(rgb[0].astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_blend_alpha(alpha: float) -> None:
    img = Image.new("RGB", (4, 4), (100, 100, 100))
    cam = np.ones((2, 2), np.float32)
    out = np.asarray(overlays.blend(img, cam, "jet", alpha)).astype(float)
    heat = overlays.colorize(np.ones((4, 4), np.float32), "jet").astype(float)
    expected = (1 - alpha) * 100 + alpha * heat
    assert np.abs(out - expected).max() <= 1


def test_render_overlay_png_sizes() -> None:
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    png = overlays.render_overlay(_png(32, 24), cam, "viridis", 0.4)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (32, 24)
    big = Image.open(io.BytesIO(overlays.render_overlay(_png(32, 24), cam, size=224)))
    assert big.size == (224, 168)
    heat = Image.open(io.BytesIO(overlays.render_heatmap(cam, "jet", 50)))
    assert heat.size == (50, 50)


def test_render_resized_keeps_bytes_without_size() -> None:
    raw = _png()
    data, mime = overlays.render_resized(raw, None)
    assert data == raw and mime == "image/png"
    data, mime = overlays.render_resized(raw, 64)
    assert Image.open(io.BytesIO(data)).size == (64, 48)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0.5),
        ("0.33", 0.35),
        ("1", 1.0),
        ("0", 0.0),
        ("2", 0.5),
        ("nan", 0.5),
        ("1;DROP", 0.5),
        (0.71, 0.7),
    ],
)
def test_parse_alpha(value: object, expected: float) -> None:
    assert overlays.parse_alpha(value) == expected  # type: ignore[arg-type]


def test_parse_cmap_and_size() -> None:
    assert overlays.parse_cmap("viridis") == "viridis"
    assert overlays.parse_cmap("../../etc/passwd") == overlays.DEFAULT_CMAP
    assert overlays.parse_size("9999") == overlays.MAX_SIZE
    assert overlays.parse_size("abc") is None
    assert overlays.parse_size("1") == overlays.MIN_SIZE


def test_bytes_lru_bounds_memory_and_counts_hits() -> None:
    cache = overlays.BytesLRU(max_bytes=100)
    calls = []

    def render(n: int) -> tuple[bytes, str]:
        calls.append(n)
        return b"x" * 40, "image/png"

    for k in (1, 2, 1, 3, 4):
        cache.get_or_render((k,), lambda k=k: render(k))
    assert calls == [1, 2, 3, 4]  # the second 1 was a hit
    assert cache.hits == 1 and len(cache) == 2  # 100 bytes hold two 40-byte entries
    assert cache.get_or_render(("missing",), lambda: None) is None


def test_colormap_css_gradient() -> None:
    css = overlays.colormap_css_gradient("jet")
    assert css.startswith("linear-gradient(") and css.count("rgb(") == 8
