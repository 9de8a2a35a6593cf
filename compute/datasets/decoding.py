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
- **Very thin images are refused** before decoding: the network's preprocessing scales the
  *shorter* side up to the input size, so the work grows with the aspect ratio (a 78 KB PNG of
  1 x 40 M pixels would need ~160 GB). Above :data:`MAX_ASPECT_RATIO` the header is enough to
  say no, with the file's dimensions in the message.
- **Only regular files are opened.** A FIFO named ``x.png`` blocks ``open()`` forever and a
  symlink to ``/dev/zero`` never ends: both are refused from ``stat`` ("not a regular file
  (FIFO)"), as are broken and looping symlinks, with their own reasons.
- **Names are printable**: bytes of a file name that are not UTF-8 appear as U+FFFD in messages
  (:func:`display_name`), so a report never fails on the name of what it reports.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Truncated files must fail loudly, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: The largest accepted ratio of an image's longer side to its shorter side. Preprocessing scales
#: the shorter side to the input size R, so an accepted image becomes at most R x (100 R) pixels
#: before the center crop: 6.6 M pixels (20 MB) at R = 256, where a 1 x 400,000 image would need
#: 26 G pixels. Module-level so tests (and users with panoramas) can change it.
MAX_ASPECT_RATIO = 100

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


def display_name(text: str) -> str:
    """``text`` (a path or name from the file system) printable anywhere: bytes that are not
    UTF-8 (which Python keeps as lone surrogates) become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # surrogates that do not stand for a byte
        return text.encode("utf-8", "replace").decode("utf-8")


_FILE_KINDS = (
    (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
)


def _require_regular(mode: int, label: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageLoadError(label, "is a directory, not an image")
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
    raise ImageLoadError(label, f"not a regular file ({kind}); not opened")


def _open_regular(path: str | os.PathLike[str], label: str) -> BinaryIO:
    """``path`` opened for reading, if (after following symlinks) it is a regular file.

    A FIFO would block ``open()`` until a writer comes and a device (``/dev/zero``) never ends,
    so the file's type is checked from ``stat`` before opening, and again on the open
    descriptor (opened non-blocking, so a FIFO swapped in between cannot hang us either).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = display_name(os.readlink(path))
            raise ImageLoadError(label, f"broken symbolic link (its target {target!r} does not exist)") \
                from None
        raise ImageLoadError(label, "file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(label, "symbolic link loop (too many levels of symbolic links)") from None
        if isinstance(exc, PermissionError):
            raise ImageLoadError(label, "permission denied") from None
        raise ImageLoadError(label, f"cannot stat: {display_name(exc.strerror or str(exc))}") from None
    _require_regular(st.st_mode, label)
    if st.st_size == 0:
        raise ImageLoadError(label, "empty file (0 bytes)")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(label, f"cannot open: {display_name(exc.strerror or str(exc))}") from None
    try:
        _require_regular(os.fstat(fd).st_mode, label)  # replaced between stat and open
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _label(source: str | Path | bytes | BinaryIO, name: str | None) -> str:
    if name:
        return display_name(name)
    return display_name(str(source)) if isinstance(source, (str, os.PathLike)) else "<image bytes>"


def _check_dimensions(opened: Image.Image, label: str) -> None:
    """Refuse, from the header, what would cost too much memory to decode or to resize."""
    w, h = opened.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(label, f"has no pixels ({w}x{h})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageLoadError(
            label,
            f"refused as a decompression bomb: {w}x{h} = {w * h} pixels exceeds the "
            f"limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)",
        )
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageLoadError(
            label,
            f"refused: {w}x{h} pixels, an aspect ratio of {ratio:,.0f}:1 exceeds the limit of "
            f"{MAX_ASPECT_RATIO}:1 (scaling its shorter side to the input size would take "
            f"{ratio:,.0f} times the memory of a square image)",
        )


@contextlib.contextmanager
def _opened(source: str | Path | bytes | BinaryIO, label: str) -> Iterator[Image.Image]:
    """The Pillow image of ``source`` (header read, no pixel decoded); every failure, here or
    in the caller's block, becomes :class:`ImageLoadError`."""
    try:
        with contextlib.ExitStack() as stack:
            fp: BinaryIO
            if isinstance(source, (str, os.PathLike)):
                fp = stack.enter_context(_open_regular(source, label))
            elif isinstance(source, bytes):
                if not source:
                    raise ImageLoadError(label, "empty file (0 bytes)")
                fp = io.BytesIO(source)
            else:
                fp = source
            stack.enter_context(warnings.catch_warnings())
            # Pillow's other warnings are about metadata ("Corrupt EXIF data"): the pixels are
            # fine, and one line per image would drown a job's log (and -W error would refuse it).
            warnings.simplefilter("ignore")
            # Pillow warns (does not fail) between 1x and 2x MAX_IMAGE_PIXELS; we refuse at 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = stack.enter_context(Image.open(fp))
            yield opened
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
        reason = display_name(str(exc).strip() or type(exc).__name__)
        if "truncated" in reason.lower():
            reason = f"truncated or incomplete file ({reason})"
        raise ImageLoadError(label, f"cannot decode: {reason}") from None


def image_size(source: str | Path | bytes | BinaryIO, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header alone (no pixel is decoded); raises
    :class:`ImageLoadError` for what :func:`load_image` would not even open (non-regular
    files, missing files, unidentified formats)."""
    label = _label(source, name)
    with _opened(source, label) as opened:
        w, h = opened.size
        return int(w), int(h)


def load_image(source: str | Path | bytes | BinaryIO, name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path, raw bytes, or a binary file object) into an RGB image.

    The one decoder of xaidash: ``compute`` and ``train`` call it on dataset files, the
    dashboard's explain page on the bytes of an upload (``load_image(raw, name=filename)``).
    ``name`` is what error messages call the image (defaults to the path; non-UTF-8 bytes are
    shown as U+FFFD). Raises :class:`ImageLoadError` for missing, unreadable, non-regular (FIFO,
    socket, device), empty, truncated, corrupt, non-image, oversized (decompression bomb) and too
    thin (aspect ratio above :data:`MAX_ASPECT_RATIO`) files; never returns a partially decoded
    image, and never opens a file that is not a regular file.
    """
    label = _label(source, name)
    with _opened(source, label) as opened:
        _check_dimensions(opened, label)
        opened.load()  # decode now, inside the try: truncation surfaces here
        img: Image.Image = opened
        try:
            img = ImageOps.exif_transpose(opened) or opened
        except Exception as exc:  # broken EXIF should not cost us the pixels
            logger.debug("ignoring unusable EXIF orientation in %s: %s", label, exc)
        rgb = to_rgb(img)
        # Detach from the file handle: the returned image must outlive the `with`.
        return rgb.copy() if rgb is opened else rgb


def thumbnail_png(img: Image.Image, max_side: int = 96) -> bytes:
    """A PNG (bytes) of ``img`` shrunk so its longer side is at most ``max_side`` pixels."""
    thumb = to_rgb(img.copy())
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()
