"""Raw class-activation maps -> PNG overlays, rendered on demand for the dashboard routes.

The store keeps every map at the target layer's native resolution (e.g. 7x7) in [0, 1]. The
dashboard upsamples it bilinearly to the displayed image size, maps it through a matplotlib
colormap and alpha-blends it over the stored thumbnail. Rendering is cheap (a few ms) but a
gallery page asks for ~100 overlays at once, so results are memoised in a small LRU cache
keyed by everything that determines the pixels (runs are immutable, so entries never go stale).
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from threading import Lock

import numpy as np
import numpy.typing as npt
from PIL import Image

# Colormaps offered in the UI. An allow-list (not "any matplotlib name") keeps the cache key
# space small and the route free of client-chosen strings reaching matplotlib.
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "magma", "plasma", "hot", "coolwarm")
DEFAULT_CMAP = "jet"
DEFAULT_ALPHA = 0.5
MIN_SIZE, MAX_SIZE = 16, 512

_ALPHA_RE = re.compile(r"^(0(\.\d{1,3})?|1(\.0{1,3})?)$")


def parse_cmap(value: str | None) -> str:
    """Return ``value`` if it is an allowed colormap name, else the default."""
    return value if value in COLORMAPS else DEFAULT_CMAP


def parse_alpha(value: str | float | None) -> float:
    """Parse an opacity in [0, 1]; anything else falls back to the default.

    Rounded to 0.05 so that slider jitter does not explode the overlay cache.
    """
    if value is None:
        return DEFAULT_ALPHA
    if isinstance(value, float | int):
        f = float(value)
    else:
        if not _ALPHA_RE.match(value.strip()):
            return DEFAULT_ALPHA
        f = float(value)
    if not np.isfinite(f) or f < 0.0 or f > 1.0:
        return DEFAULT_ALPHA
    return round(round(f * 20) / 20, 2)


def parse_size(value: str | int | None) -> int | None:
    """Parse a target side length in pixels (clamped to [MIN_SIZE, MAX_SIZE]); None = native."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return int(min(max(n, MIN_SIZE), MAX_SIZE))


@lru_cache(maxsize=len(COLORMAPS))
def _lut(cmap: str) -> npt.NDArray[np.uint8]:
    """256x3 uint8 lookup table for a colormap (matplotlib imported lazily: it is slow to load)."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    rgba = np.asarray(cm(np.linspace(0.0, 1.0, 256)), dtype=np.float64)
    return (rgba[:, :3] * 255.0 + 0.5).astype(np.uint8)


def colormap_css_gradient(cmap: str, stops: int = 8) -> str:
    """A CSS ``linear-gradient`` showing the colormap, for the colour bar legend in the UI."""
    lut = _lut(parse_cmap(cmap))
    idx = np.linspace(0, 255, stops).astype(int)
    parts = [
        f"rgb({lut[i, 0]},{lut[i, 1]},{lut[i, 2]}) {round(100 * k / (stops - 1))}%" for k, i in enumerate(idx)
    ]
    return "linear-gradient(to right, " + ", ".join(parts) + ")"


def decode_image(data: bytes) -> Image.Image:
    """Decode stored thumbnail bytes (PNG or JPEG) into an RGB image."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def upsample_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinearly upsample a [h, w] map to [height, width] float32, clipped to [0, 1].

    PIL's float ("F") mode resize is bilinear with edge clamping and is much faster than doing
    it in numpy; NaNs (should never be stored, but a corrupt row must not crash the route)
    become zero.
    """
    m = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {m.shape}")
    if m.shape != (height, width):
        m = np.asarray(Image.fromarray(m, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(m, 0.0, 1.0)


def colorize(cam: np.ndarray, cmap: str) -> npt.NDArray[np.uint8]:
    """Map a [H, W] float map in [0, 1] to an [H, W, 3] uint8 RGB heatmap."""
    idx = (np.clip(cam, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat: npt.NDArray[np.uint8] = _lut(parse_cmap(cmap))[idx]  # numpy types fancy indexing as Any
    return heat


def resize_image(img: Image.Image, size: int | None) -> Image.Image:
    """Scale an image so that its longer side is ``size`` (None = unchanged)."""
    if size is None or max(img.size) == size:
        return img
    scale = size / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # LANCZOS for shrinking and enlarging alike: thumbnails are tiny, upscaling them smoothly
    # reads better than blocky nearest-neighbour pixels under a smooth heatmap.
    return img.resize(new, Image.Resampling.LANCZOS)


def blend(
    img: Image.Image, cam: np.ndarray, cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA
) -> Image.Image:
    """Alpha-blend the colorized, upsampled map over ``img`` (RGB) and return a new RGB image."""
    base = np.asarray(img.convert("RGB"), dtype=np.float32)
    heat = colorize(upsample_map(cam, img.width, img.height), cmap).astype(np.float32)
    out = (1.0 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def encode_png(img: Image.Image) -> bytes:
    """PNG-encode an image. compress_level 1: these are tiny and latency matters more than bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_overlay(
    thumbnail: bytes | Image.Image,
    cam: np.ndarray,
    cmap: str = DEFAULT_CMAP,
    alpha: float = DEFAULT_ALPHA,
    size: int | None = None,
) -> bytes:
    """Full pipeline: thumbnail bytes (or image) + raw map -> PNG bytes of the overlay."""
    img = decode_image(thumbnail) if isinstance(thumbnail, bytes | bytearray) else thumbnail.convert("RGB")
    return encode_png(blend(resize_image(img, size), cam, cmap, alpha))


def render_heatmap(cam: np.ndarray, cmap: str = DEFAULT_CMAP, size: int = 96) -> bytes:
    """The colorized map alone (no base image), for images whose thumbnail is missing."""
    return encode_png(Image.fromarray(colorize(upsample_map(cam, size, size), cmap), mode="RGB"))


def render_resized(thumbnail: bytes, size: int | None) -> tuple[bytes, str]:
    """Return (bytes, mimetype) of the thumbnail, re-encoded as PNG only when resizing."""
    if size is None:
        mime = "image/png" if thumbnail[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return thumbnail, mime
    return encode_png(resize_image(decode_image(thumbnail), size)), "image/png"


class BytesLRU:
    """A small thread-safe LRU cache of rendered PNGs, bounded by total bytes.

    ``functools.lru_cache`` bounds entry count, but overlay sizes vary 50x between a 96 px
    thumbnail and a 512 px image-page overlay, so we bound memory instead.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[object, ...], tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def get_or_render(
        self, key: tuple[object, ...], render: Callable[[], tuple[bytes, str] | None]
    ) -> tuple[bytes, str] | None:
        """Return the cached value for ``key`` or call ``render()`` and cache a non-None result."""
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
                self.hits += 1
                return hit
            self.misses += 1
        # Render outside the lock: two threads may render the same key once; harmless.
        value = render()
        if value is None:
            return None
        with self._lock:
            if key not in self._data:
                self._data[key] = value
                self._size += len(value[0])
            while self._size > self.max_bytes and self._data:
                _, (old, _mime) = self._data.popitem(last=False)
                self._size -= len(old)
        return value

    def __len__(self) -> int:
        return len(self._data)
