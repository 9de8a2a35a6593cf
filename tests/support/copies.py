"""Planted copies for the copy rule's tests and its threshold bench: the edits a copied image goes
through on its way into another split."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def upscale(im: Image.Image) -> Image.Image:
    return im.resize((im.width * 2, im.height * 2), Image.Resampling.BILINEAR)


def shift(im: Image.Image) -> Image.Image:
    """One pixel down and right, the uncovered edge black."""
    a = np.asarray(im)
    b = np.zeros_like(a)
    b[1:, 1:] = a[:-1, :-1]
    return Image.fromarray(b)


def crop(im: Image.Image) -> Image.Image:
    """5 % off the top and the left."""
    w, h = im.size
    return im.crop((round(0.05 * w), round(0.05 * h), w, h))


PLANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "exact": lambda im: im.copy(), "jpeg q=70": jpeg, "upscale 2x": upscale, "shift 1 px": shift,
    "crop 5 %": crop}
