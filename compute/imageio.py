"""Robust image decoding: whatever Pillow can open becomes an 8-bit RGB image, or a clear error.

Real datasets are messy: grayscale scans, palette GIFs with a transparent colour, RGBA
screenshots, 16-bit medical PNG/TIFFs, CMYK JPEGs from print workflows, phone photos whose
pixels are stored sideways with an EXIF orientation tag, truncated downloads, and files that
are not images at all. :func:`load_image` normalizes all of them so the network always sees
what a human viewer sees, and turns every failure into :class:`ImageLoadError` (path + reason)
so callers can skip the file and count it instead of crashing a long job.

Decisions (and why):

- **Transparency is composited on white.** ``Image.convert("RGB")`` simply drops alpha, which
  exposes whatever colour values happen to be stored under transparent pixels (often black,
  sometimes garbage from the editor). Viewers, browsers and documents show transparent
  regions on a light background, so white is what a person labelling the image saw.
- **16-bit images are scaled by their full range** (``v * 255 / 65535``, i.e. ``v >> 8``), not
  clipped: clipping maps every value above 255 to white. 32-bit integer ("I") and float ("F")
  images, whose range is not fixed, are min-max scaled when they exceed 8-bit range.
- **EXIF orientation is applied** (``ImageOps.exif_transpose``) so a portrait phone photo is
  upright, as in every viewer; a broken EXIF block is ignored rather than failing the image.
- **Decompression bombs are refused** before decoding: an image whose header claims more than
  ``PIL.Image.MAX_IMAGE_PIXELS`` pixels raises ImageLoadError (Pillow itself only warns up to
  twice that limit). Tests lower the limit to exercise this path.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Truncated files must fail loudly, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
     ".pnm", ".jfif"}
)


class ImageLoadError(Exception):
    """An image that cannot be used: ``path`` says which, ``reason`` says why (one line)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_image_file(path: str | Path) -> bool:
    """True when the file name has a known image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Composite an RGBA image on a white background (see module docstring for why)."""
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(img, mask=img.getchannel("A"))
    return background


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit / 32-bit integer / float single-channel image to 8-bit ``L``."""
    arr = np.asarray(img)
    out: np.ndarray
    if img.mode.startswith("I;16"):
        # Fixed 16-bit range: scale, do not stretch, so dark images stay dark.
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
    else:
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0  # float images in [0, 1] are the common convention
        elif lo >= 0.0 and hi <= 255.0:
            out = arr  # already 8-bit range
        elif lo >= 0.0 and hi <= 65535.0:
            out = arr * 255.0 / 65535.0  # a 16-bit image that Pillow opened as "I"
        else:
            out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        out = np.nan_to_num(out, nan=0.0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened (and loaded) Pillow image of any mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        # Palette images may declare a transparent index; go through RGBA to honour it.
        if "transparency" in img.info:
            return _composite_on_white(img.convert("RGBA"))
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img.convert("RGBA"))
    if mode in ("L", "1"):
        return img.convert("RGB")  # grayscale replicated to 3 channels
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, RGBX...: Pillow knows how to get to RGB.
    return img.convert("RGB")


def load_image(source: str | Path | bytes | BinaryIO, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path, raw bytes, or a binary file object) into an RGB image.

    ``name`` is what error messages call the image (defaults to the path). Raises
    :class:`ImageLoadError` for missing, unreadable, truncated, corrupt, non-image or
    oversized (decompression bomb) files; never returns a partially decoded image.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<image bytes>")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns (does not fail) between 1x and 2x MAX_IMAGE_PIXELS; we refuse at 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                limit = Image.MAX_IMAGE_PIXELS
                w, h = opened.size
                if limit is not None and w * h > limit:
                    raise ImageLoadError(
                        label,
                        f"refused as a decompression bomb: {w}x{h} = {w * h} pixels exceeds the "
                        f"limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)",
                    )
                opened.load()  # decode now, inside the try: truncation surfaces here
                img: Image.Image = opened
                try:
                    img = ImageOps.exif_transpose(opened) or opened
                except Exception as exc:  # broken EXIF should not cost us the pixels
                    logger.debug("ignoring unusable EXIF orientation in %s: %s", label, exc)
                rgb = to_rgb(img)
                # Detach from the file handle: the returned image must outlive the `with`.
                return rgb.copy() if rgb is opened else rgb
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory, not an image") from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not a recognized image format (unidentified or corrupt)") from None
    except MemoryError:
        raise ImageLoadError(label, "out of memory while decoding") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error...
        reason = str(exc).strip() or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated or incomplete file ({reason})"
        raise ImageLoadError(label, f"cannot decode: {reason}") from None


def thumbnail_png(img: Image.Image, max_side: int = 96) -> bytes:
    """A PNG (bytes) of ``img`` shrunk so its longer side is at most ``max_side`` pixels."""
    thumb = to_rgb(img.copy())
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()
