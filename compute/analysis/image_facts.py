"""Per-image facts the data-quality checks need, taken from the decoded image inside the chunk.

:func:`describe` runs once per decoded image (in the DataLoader worker that decoded it, so it
costs no second decode and parallelises with the decoding); the global phase compares the facts
across the dataset (:mod:`xaidash.compute.analysis.copies` for copies,
:mod:`xaidash.compute.analysis.image_issues` for the property checks). Per image:

* ``phash``: the 64-bit perceptual hash (``imagehash.phash``: signs of the 8x8 lowest DCT
  frequencies of a 32x32 grayscale against their median). It survives re-encoding and resizing
  (at most 10 bits of 64 change, bench/copy_thresholds.py) and is the key of the bounded
  candidate search for copies. dHash was measured too and changes as much, so one hash is kept.
* ``tiny``: the image as 16x16 grayscale bytes, the common small size on which a candidate
  copy is confirmed by a pixel distance (a hash collision alone is not evidence of a copy).
* ``bright_p05`` / ``bright_p99``: the 5th and 99th percentile of perceived brightness
  (``sqrt(.241 R^2 + .691 G^2 + .068 B^2)``, CleanVision's formula) in [0, 1]: dark when even
  the bright end is dark, overexposed when even the dark end is bright.
* ``sharpness``: std of the 4-neighbour Laplacian over the std of the grayscale (a blurred
  image has weak edges for its contrast; dividing by the contrast keeps a dim but sharp image
  sharp). NaN for a constant image, which is low-information, not blurry.
* ``entropy``: Shannon entropy (bits) of the 256-bin grayscale histogram: a constant image
  has 0, noise 8.
* ``colour``: mean over pixels of ``max(R,G,B) - min(R,G,B)`` in [0, 1]: 0 for grayscale.

Statistics are taken on a copy at most ``WORK_SIDE`` pixels on its long side (box filter), so
their cost does not grow with the image (an ImageNet photo costs what a thumbnail costs) and
every image of a data set is measured at comparable scale. CleanVision computes the same kind of
statistics, but inside its own loader that decodes every image again and aggregates over the
whole data set in pandas, which does not fit a per-chunk function; these few lines of numpy do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: side of the grayscale thumbnail copies are confirmed on (docs/METHODS.md, "Copies")
TINY = 16
#: long side of the working copy the statistics are taken on
WORK_SIDE = 64


@dataclass(frozen=True)
class ImageFacts:
    """What :func:`describe` measures on one decoded image (see the module docstring)."""

    width: int
    height: int
    phash: int
    tiny: bytes
    bright_p05: float
    bright_p99: float
    sharpness: float
    entropy: float
    colour: float


def _hash_bits(bits: np.ndarray) -> int:
    """A boolean array of 64 hash bits as one unsigned 64-bit integer (row-major, MSB first)."""
    return int.from_bytes(np.packbits(bits.ravel().astype(np.uint8)).tobytes(), "big")


def describe(img: Image.Image) -> ImageFacts:
    """The facts of one decoded image (any PIL mode; RGB after ``to_rgb`` in practice)."""
    import imagehash  # ~10 ms to import with its scipy fft: in the worker, once

    width, height = img.size
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if max(width, height) > WORK_SIDE:
        rgb = rgb.copy()
        rgb.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    gray_img = rgb.convert("L")
    a = np.asarray(rgb, dtype=np.float32) / 255.0
    bright = np.sqrt(0.241 * a[..., 0] ** 2 + 0.691 * a[..., 1] ** 2 + 0.068 * a[..., 2] ** 2)
    p05, p99 = np.percentile(bright, [5, 99])
    gray = np.asarray(gray_img, dtype=np.float32) / 255.0
    hist = np.bincount(np.asarray(gray_img, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    prob = hist[hist > 0] / hist.sum()
    entropy = float(-(prob * np.log2(prob)).sum())
    spread = float(gray.std())
    sharpness = math.nan
    if spread > 1e-3 and min(gray.shape) >= 3:
        lap = (4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:])
        sharpness = float(lap.std() / spread)
    colour = float((a.max(axis=2) - a.min(axis=2)).mean())
    tiny = np.asarray(gray_img.resize((TINY, TINY), Image.Resampling.BILINEAR), dtype=np.uint8)
    return ImageFacts(
        width=int(width), height=int(height),
        phash=_hash_bits(imagehash.phash(gray_img).hash),
        tiny=tiny.tobytes(), bright_p05=float(p05), bright_p99=float(p99), sharpness=sharpness,
        entropy=entropy, colour=colour,
    )
