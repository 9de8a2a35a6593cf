"""Decoding of every image mode, EXIF orientation, bombs, corrupt files, thumbnails."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.imagegen import write_corrupt_image
from xaidash.compute.datasets.decoding import ImageLoadError, load_image, thumbnail_png


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (10, 8)
    assert np.array_equal(np.asarray(out), arr)


def test_grayscale_replicated(tmp_path: Path) -> None:
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = np.asarray(load_image(_save(Image.fromarray(arr, "L"), tmp_path / "g.png")))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], arr)


def test_bilevel(tmp_path: Path) -> None:
    img = Image.new("1", (4, 4), 1)
    out = load_image(_save(img, tmp_path / "b.png"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 1), (255, 0, 0, 255))  # one opaque red pixel
    img.putpixel((2, 2), (0, 0, 255, 128))  # half-transparent blue
    out = load_image(_save(img, tmp_path / "t.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)
    r, _g, b = out.getpixel((2, 2))
    assert 120 <= r <= 135 and b == 255  # blended with white


def test_la_mode(tmp_path: Path) -> None:
    img = Image.new("LA", (3, 3), (0, 0))
    out = load_image(_save(img, tmp_path / "la.png"))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putpixel((3, 3), 1)
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.gif", transparency=0)
    out = load_image(path)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent index -> white
    assert out.getpixel((3, 3)) == (0, 255, 0)


def test_palette_opaque(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    out = load_image(_save(img, tmp_path / "p.png"))
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_16bit_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)  # mode I;16
    assert img.mode.startswith("I;16")
    out = np.asarray(load_image(_save(img, tmp_path / "d.png")))[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]


def test_16bit_tiff(tmp_path: Path) -> None:
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "d.tif")))
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_float_image(tmp_path: Path) -> None:
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = np.asarray(load_image(_save(Image.fromarray(arr, "F"), tmp_path / "f.tif")))[0, :, 0]
    assert out.tolist() == [0, 127, 255]


def test_cmyk(tmp_path: Path) -> None:
    img = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(img, tmp_path / "c.jpg", quality=95))
    r, g, b = out.getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation(tmp_path: Path) -> None:
    # Stored 20 wide x 10 high, with a marker in the top-left; orientation 6 = rotate 90 CW.
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[0:3, 0:3] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_save(img, tmp_path / "e.jpg", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 20)  # upright: portrait
    a = np.asarray(out)
    assert a[0:3, -3:].mean() > 200  # top-left marker moved to the top-right


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert "decompression bomb" in ei.value.reason and ei.value.path == str(path)


def test_decompression_bomb_between_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1x..2x the limit: Pillow only warns, we still refuse (our own header check).
    path = _save(Image.new("RGB", (40, 40)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = write_corrupt_image(tmp_path / "bad.png")
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.path == str(path) and ei.value.reason


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("hello")
    with pytest.raises(ImageLoadError, match="not a recognized image"):
        load_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_bytes_and_name() -> None:
    buf = io.BytesIO()
    Image.new("L", (5, 5), 7).save(buf, format="PNG")
    out = load_image(buf.getvalue(), name="upload.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(ImageLoadError) as ei:
        load_image(b"garbage", name="upload.png")
    assert ei.value.path == "upload.png"


def test_thumbnail_png() -> None:
    img = Image.new("RGB", (300, 150), (1, 2, 3))
    data = thumbnail_png(img, max_side=96)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "PNG" and thumb.size == (96, 48)
    assert img.size == (300, 150)  # input untouched


# --- hardening: thin images, non-regular files, links, names ---------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [(1, 400_000), (400_000, 1), (3, 2_000)])
def test_thin_image_refused_from_its_header(tmp_path: Path, size: tuple[int, int]) -> None:
    # Scaling the shorter side up to the input size makes a 1 x N image R x (N * R) pixels: the
    # decoder refuses it from the header, naming the file and its dimensions.
    path = _save(Image.new("L", size, 128), tmp_path / "thin.png")
    w, h = size
    with pytest.raises(ImageLoadError, match=rf"thin\.png: .*{w}x{h}.*aspect ratio") as ei:
        load_image(path)
    assert ei.value.path == str(path)
    with pytest.raises(ImageLoadError, match=rf"upload\.png: .*{w}x{h}.*aspect ratio"):
        load_image(path.read_bytes(), name="upload.png")  # the explain page's entry point


def test_aspect_ratio_at_the_limit_is_decoded(tmp_path: Path) -> None:
    from xaidash.compute.datasets.decoding import MAX_ASPECT_RATIO

    side = 2
    path = _save(Image.new("L", (side, side * MAX_ASPECT_RATIO), 128), tmp_path / "tall.png")
    assert load_image(path).size == (side, side * MAX_ASPECT_RATIO)


@pytest.mark.timeout(20)
def test_fifo_is_never_opened(tmp_path: Path) -> None:
    # open() on a FIFO blocks until a writer comes: it must be refused from its stat alone.
    os.mkfifo(tmp_path / "f.png")
    os.symlink("f.png", tmp_path / "link.png")
    for name in ("f.png", "link.png"):
        with pytest.raises(ImageLoadError, match=r"not a regular file \(FIFO\)"):
            load_image(tmp_path / name)


@pytest.mark.timeout(20)
def test_special_files_have_clear_reasons(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.png")
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    cases = {
        "zero.png": r"not a regular file \(character device\)",
        "dangling.png": r"broken symbolic link \(its target 'nowhere\.png' does not exist\)",
        "a.png": r"symbolic link loop",
        "empty.png": r"empty file \(0 bytes\)",
        "dir.png": r"is a directory, not an image",
    }
    for name, pattern in cases.items():
        with pytest.raises(ImageLoadError, match=pattern):
            load_image(tmp_path / name)
    with pytest.raises(ImageLoadError, match=r"empty file"):
        load_image(b"", name="upload.png")


def test_permission_denied_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, for whom mode 000 is readable: simulate the refusal at open().
    path = _save(Image.new("RGB", (4, 4)), tmp_path / "p.png")

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(path)


def test_non_utf8_path_gives_a_printable_reason(tmp_path: Path) -> None:
    bad = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    bad.write_text("not an image")
    with pytest.raises(ImageLoadError) as ei:
        load_image(bad)
    assert "caf\ufffd.png" in ei.value.path
    str(ei.value).encode("utf-8")  # printable (no lone surrogates)
    _save(Image.new("RGB", (4, 4)), bad)
    assert load_image(bad).size == (4, 4)


def test_corrupt_exif_decodes_without_warnings(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    img = Image.new("RGB", (6, 4), (10, 20, 30))
    path = _save(img, tmp_path / "e.png", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0garbage")
    assert load_image(path).size == (6, 4)
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


def test_image_size_reads_the_header_only(tmp_path: Path) -> None:
    from xaidash.compute.datasets.decoding import image_size

    assert image_size(_save(Image.new("RGB", (7, 5)), tmp_path / "a.png")) == (7, 5)
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(ImageLoadError, match="FIFO"):
        image_size(tmp_path / "f.png")
