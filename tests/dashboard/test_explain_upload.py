"""The explain page decodes an upload as compute decodes the same file.

``decode_upload`` checks the upload (size, PNG/JPEG by its bytes, pixel count) and then hands
the bytes to ``xaidash.compute.datasets.decoding.load_image``: a 16-bit grayscale PNG keeps its grey
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

from xaidash.compute.datasets.decoding import load_image
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


@pytest.mark.timeout(120)
def test_malformed_corpus_through_the_upload_page(tmp_path: Any) -> None:
    """Every file of the malformed corpus a browser could upload: decoded as compute decodes it,
    or refused with a message naming it; never another exception. (FIFOs, sockets, devices and
    directories are not files a browser uploads: only regular files' bytes are sent.)"""
    from tests.support.corpus import make_malformed_corpus
    from xaidash.compute.datasets.decoding import ImageLoadError

    cases = make_malformed_corpus(tmp_path, thin_length=100_000)
    seen, refused = 0, []
    for path in sorted((tmp_path / "val").rglob("*")):
        if not path.is_file():  # False for FIFOs, sockets, devices, directories, broken links
            continue
        try:
            raw = path.read_bytes()
        except OSError:  # unreadable
            continue
        seen += 1
        name = repr(path.name)
        try:
            shown = explain.decode_upload(_data_url(raw), name)
        except explain.UploadError as exc:
            assert name in str(exc), exc
            refused.append(name)
            continue
        assert shown.mode == "RGB", name
        try:
            expected = load_image(raw)
        except ImageLoadError as exc:  # the page must not accept what compute refuses
            raise AssertionError(f"{name}: the page decoded what compute refuses ({exc.reason})") from None
        assert np.array_equal(np.asarray(shown), np.asarray(expected)), name
    assert seen >= len(cases) // 2, (seen, len(cases))
    assert 0 < len(refused) < seen, refused  # some refused (truncated, text, bombs...), the rest decoded


def test_a_thin_upload_is_refused_with_its_dimensions() -> None:
    # compute refuses an aspect ratio its preprocessing would blow up; so does the page
    from xaidash.compute.datasets.decoding import MAX_ASPECT_RATIO

    raw = _png(Image.new("L", (MAX_ASPECT_RATIO * 50, 1)))
    with pytest.raises(explain.UploadError, match=r"thin\.png cannot be explained: refused: 5000x1 pixels"):
        explain.decode_upload(_data_url(raw), "thin.png")
