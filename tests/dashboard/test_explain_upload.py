"""The explain page decodes an upload as compute decodes the same file (issue 12, items 7 and 8).

``decode_upload`` checks the upload (size, PNG/JPEG by its bytes, pixel count) and then hands
the bytes to ``xaidash.compute.imageio.load_image``: a 16-bit grayscale PNG keeps its grey
levels instead of turning white (``convert("RGB")`` clipped them), and a corrupt EXIF block
costs the orientation, not the image ("not a TIFF file").
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from xaidash.compute.imageio import load_image
from xaidash.dashboard.pages import explain


def _data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _png(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_16bit_grayscale_upload_keeps_its_grey_levels() -> None:
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    raw = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(raw)).mode == "I;16"
    shown = np.asarray(explain.decode_upload(_data_url(raw), "ramp16.png"))
    assert shown.shape == (16, 64, 3)
    assert shown.min() == 0 and shown.max() == 255 and len(np.unique(shown)) > 200  # not all white
    assert np.array_equal(shown, np.asarray(load_image(raw)))  # what compute sees


def test_png_with_corrupt_exif_is_explained() -> None:
    raw = _png(Image.new("RGB", (20, 12), (10, 200, 30)), exif=b"garbage, not a TIFF header")
    with pytest.raises(SyntaxError):  # Pillow itself cannot parse the block
        Image.open(io.BytesIO(raw)).getexif()
    shown = explain.decode_upload(_data_url(raw), "exif.png")
    assert shown.size == (20, 12) and shown.getpixel((0, 0)) == (10, 200, 30)
    assert np.array_equal(np.asarray(shown), np.asarray(load_image(raw)))


def test_upload_checks_still_come_first() -> None:
    # a CMYK JPEG and a palette PNG with transparency decode like compute decodes them
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    shown = explain.decode_upload("data:image/jpeg;base64," + base64.b64encode(cmyk.getvalue()).decode())
    assert shown.mode == "RGB" and np.array_equal(np.asarray(shown), np.asarray(load_image(cmyk.getvalue())))
    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    raw = _png(pal, transparency=1)
    assert explain.decode_upload(_data_url(raw)).getpixel((0, 0)) == (255, 255, 255)
    # a TIFF is refused by its bytes, whatever its name says
    tif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tif, format="TIFF")
    with pytest.raises(explain.UploadError, match="not a PNG or JPEG"):
        explain.decode_upload(_data_url(tif.getvalue()), "really.png")
