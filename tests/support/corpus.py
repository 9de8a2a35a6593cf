"""A malformed-image corpus: every kind of file a careless or hostile dataset can hold.

:func:`make_malformed_corpus` writes a small clean ImageFolder (so that ``train`` and
``compute`` have something to work on) and adds the malformed cases to the first class folder
of each requested split. Each :class:`Case` says what must become of it:

- ``decoded``: an ordinary image (however odd its mode, name or extension): it is trained on
  and computed;
- ``reported``: it cannot be used: ``train`` skips it and ``compute`` records it in the
  ``failures`` table, with its path and a reason matching ``Case.reason``;
- ``warned``: not a file of the dataset at all (a directory symlink loop): the scan visits
  each real directory once and logs a warning matching ``Case.reason``; no image is
  multiplied.

``Case.path`` is the image's path relative to the dataset root as xaidash shows it
(``Item.source``: non-UTF-8 bytes appear as U+FFFD). Everything is deterministic and small:
the decompression bomb and the thin image are a few kilobytes on disk.

Tests run as root in CI, where a mode-000 file is still readable: the ``permission-denied``
case is ``decoded`` there and ``reported`` ("permission denied") for any other user.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.imagegen import make_imagefolder, pattern_image


@dataclass(frozen=True)
class Case:
    """One malformed (or merely unusual) entry of the corpus."""

    kind: str
    path: str  # relative to the dataset root, as Item.source shows it
    expect: str  # "decoded" | "reported" | "warned"
    reason: str = ""  # regex the reported reason / the warning must match (re.search)


# ---------------------------------------------------------------------------------------------
# raw PNG writing (for headers Pillow refuses to write)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, rows: Iterable[bytes], bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG with the given IHDR and the (filter byte + scanline) ``rows``, deflated as a stream,
    so a bomb of millions of zero rows costs kilobytes of memory, not the image's size."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    comp = zlib.compressobj(9)
    parts = [comp.compress(r) for r in rows]
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def bomb_png(side: int = 20_000) -> bytes:
    """A 1-bit ``side`` x ``side`` all-black PNG: 400 M pixels (at the default) in ~50 KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    return raw_png(side, side, (row for _ in range(side)))


# ---------------------------------------------------------------------------------------------
# the cases: each writer puts its files in ``d`` (a class folder) and returns
# (kind, name relative to d as shown, expect, reason)

CaseSpec = tuple[str, str, str, str]
Writer = Callable[[Path, int, np.random.Generator], list[CaseSpec]]


def _good(size: int, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(pattern_image(0, 2, size, rng))


def _save(img: Image.Image, path: Path, **kw: object) -> None:
    img.save(path, **kw)


def _truncated(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    buf = io.BytesIO()
    _good(size, rng).save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    _good(size * 4, rng).save(buf, format="JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return [("truncated png", "truncated.png", "reported", r"truncated|cannot decode"),
            ("truncated jpeg", "truncated.jpg", "reported", r"truncated|cannot decode")]


def _zero_byte(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    (d / "empty.png").write_bytes(b"")
    return [("zero-byte", "empty.png", "reported", r"empty file|not a recognized")]


def _text(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    (d / "text.png").write_text("this is not an image\n")
    (d / "page.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    (d / "random.bmp").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return [("text as png", "text.png", "reported", r"not a recognized image"),
            ("html as jpeg", "page.jpg", "reported", r"not a recognized image"),
            ("random bytes", "random.bmp", "reported", r"not a recognized image|cannot decode")]


def _bomb(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    (d / "bomb.png").write_bytes(bomb_png())
    # between 1x and 2x Pillow's limit (where Pillow itself only warns)
    (d / "bomb_mild.png").write_bytes(bomb_png(10_000))
    return [("decompression bomb", "bomb.png", "reported", r"decompression bomb"),
            ("decompression bomb (1-2x limit)", "bomb_mild.png", "reported", r"decompression bomb")]


def _huge_header(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    side = 2**31 - 1  # the largest PNG dimension; no pixel data follows
    (d / "huge_header.png").write_bytes(raw_png(side, side, [b"\x00\x00"]))
    (d / "zero_dims.png").write_bytes(raw_png(0, 0, [b"\x00"]))
    return [("huge dimensions header", "huge_header.png", "reported", r"decompression bomb|cannot decode"),
            ("zero dimensions header", "zero_dims.png", "reported", r"cannot decode|not a recognized")]


def _thin(d: Path, size: int, rng: np.random.Generator, length: int = 400_000) -> list[CaseSpec]:
    # Few bytes on disk (constant rows deflate to nothing), but resizing the shorter side up to
    # the input size makes a 1 x N image size x (N * size) pixels.
    Image.new("L", (1, length), 128).save(d / "thin_tall.png")
    Image.new("L", (length, 1), 128).save(d / "thin_wide.png")
    return [("thin 1xN", "thin_tall.png", "reported", rf"1x{length}.*aspect ratio"),
            ("thin Nx1", "thin_wide.png", "reported", rf"{length}x1.*aspect ratio")]


def _fifo(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    os.mkfifo(d / "fifo.png")
    return [("fifo", "fifo.png", "reported", r"not a regular file \(FIFO")]


def _socket(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    # AF_UNIX paths are limited to ~107 bytes: bind a relative name from inside ``d``
    cwd = os.getcwd()
    os.chdir(d)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind("socket.png")
    finally:
        os.chdir(cwd)
    return [("unix socket", "socket.png", "reported", r"not a regular file \(socket")]


def _device(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    os.symlink("/dev/zero", d / "devzero.png")  # reading it never ends
    return [("symlink to a character device", "devzero.png", "reported",
             r"not a regular file \(character device")]


def _dir_loop(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    os.symlink(".", d / "loop")
    os.symlink("..", d / "up")  # the split folder: would pull the other classes into this one
    (d / "nested").mkdir()
    _save(_good(size, rng), d / "nested" / "deep.png")
    os.symlink("../..", d / "nested" / "back")
    return [("directory symlink loop (.)", "loop", "warned", r"symlink loop"),
            ("directory symlink to the split folder (..)", "up", "warned", r"symlink loop"),
            ("directory symlink loop (nested)", "nested/back", "warned", r"symlink loop"),
            ("image inside a looped folder", "nested/deep.png", "decoded", "")]


def _links(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    os.symlink("does-not-exist.png", d / "dangling.png")
    os.symlink("loop_b.png", d / "loop_a.png")
    os.symlink("loop_a.png", d / "loop_b.png")
    _save(_good(size, rng), d / "target.png")
    os.symlink("target.png", d / "link.png")
    os.mkfifo(d / ".hidden_fifo")
    os.symlink(".hidden_fifo", d / "link_to_fifo.png")
    return [("dangling symlink", "dangling.png", "reported", r"broken symbolic link"),
            ("file symlink loop", "loop_a.png", "reported", r"symbolic link"),
            ("file symlink loop (other end)", "loop_b.png", "reported", r"symbolic link"),
            ("symlink target", "target.png", "decoded", ""),
            ("symlink to an image", "link.png", "decoded", ""),
            ("symlink to a fifo", "link_to_fifo.png", "reported", r"not a regular file \(FIFO")]


def _names(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    _save(_good(size, rng), Path(os.fsdecode(os.fsencode(d) + b"/caf\xe9.png")))  # Latin-1, not UTF-8
    sub = os.fsencode(d) + b"/\xff\xfe"
    os.mkdir(sub)
    _save(_good(size, rng), Path(os.fsdecode(sub + b"/x.png")))
    _save(_good(size, rng), d / "UPPER.PNG")
    _save(_good(size, rng), d / "new\nline.png")
    _save(_good(size, rng), d / ("n" * 240 + ".png"))
    return [("non-UTF-8 file name", "caf\ufffd.png", "decoded", ""),
            ("non-UTF-8 folder name", "\ufffd\ufffd/x.png", "decoded", ""),
            ("upper-case extension", "UPPER.PNG", "decoded", ""),
            ("newline in the name", "new\nline.png", "decoded", ""),
            ("244-byte name", "n" * 240 + ".png", "decoded", "")]


def _modes(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    ramp = (np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16)
    Image.fromarray(ramp).save(d / "gray16.png")
    Image.new("CMYK", (size, size), (10, 200, 30, 0)).save(d / "cmyk.jpg", quality=90)
    pal = Image.new("P", (size, size), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, size // 2, size))
    pal.save(d / "palette_transparent.png", transparency=0)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[: size // 2, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.new("LA", (size, size), (100, 50)).save(d / "la.png")
    Image.new("1", (size, size), 1).save(d / "bilevel.png")
    Image.fromarray(np.full((size, size), 0.5, dtype=np.float32), "F").save(d / "float.tif")
    Image.fromarray(np.full((size, size), 70000, dtype=np.int32), "I").save(d / "int32.tif")
    frames = [_good(size, rng).convert("P") for _ in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    _good(size, rng).save(d / "photo.webp")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(d / "one_pixel.png")
    return [("16-bit grayscale", "gray16.png", "decoded", ""),
            ("CMYK jpeg", "cmyk.jpg", "decoded", ""),
            ("palette with transparency", "palette_transparent.png", "decoded", ""),
            ("RGBA", "rgba.png", "decoded", ""),
            ("gray + alpha", "la.png", "decoded", ""),
            ("1-bit", "bilevel.png", "decoded", ""),
            ("32-bit float tiff", "float.tif", "decoded", ""),
            ("32-bit integer tiff", "int32.tif", "decoded", ""),
            ("animated gif", "animated.gif", "decoded", ""),
            ("webp", "photo.webp", "decoded", ""),
            ("1x1 pixel", "one_pixel.png", "decoded", "")]


def _exif(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    bad = b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0garbage"  # IFD offset far past the end
    _good(size, rng).save(d / "bad_exif.png", exif=bad)
    _good(size, rng).save(d / "bad_exif.jpg", exif=bad, quality=90)
    _good(size, rng).save(d / "junk_exif.jpg", exif=b"not exif at all", quality=90)
    img = _good(size, rng)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(d / "rotated.jpg", exif=exif.tobytes(), quality=90)
    return [("corrupt EXIF (png)", "bad_exif.png", "decoded", ""),
            ("corrupt EXIF (jpeg)", "bad_exif.jpg", "decoded", ""),
            ("junk EXIF (jpeg)", "junk_exif.jpg", "decoded", ""),
            ("EXIF orientation", "rotated.jpg", "decoded", "")]


def _bad_png(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    buf = io.BytesIO()
    _good(size, rng).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF  # pixel data no longer matches its CRC
    (d / "bad_crc.png").write_bytes(bytes(data))
    (d / "gzip.png").write_bytes(zlib.compress(b"\x00" * 1000))
    return [("png with a bad CRC", "bad_crc.png", "reported", r"cannot decode|not a recognized"),
            ("deflate stream named png", "gzip.png", "reported", r"not a recognized image")]


def _wrong_ext(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    _good(size, rng).save(d / "png_inside.jpg", format="PNG")
    _good(size, rng).save(d / "jpeg_inside.png", format="JPEG")
    _good(size, rng).save(d / "gif_inside.bmp", format="GIF")
    return [("png named .jpg", "png_inside.jpg", "decoded", ""),
            ("jpeg named .png", "jpeg_inside.png", "decoded", ""),
            ("gif named .bmp", "gif_inside.bmp", "decoded", "")]


def _dir_named_like_image(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    (d / "folder.png").mkdir()
    _save(_good(size, rng), d / "folder.png" / "inner.png")
    (d / "empty_folder.jpg").mkdir()
    return [("image in a directory named like an image", "folder.png/inner.png", "decoded", "")]


def _permission(d: Path, size: int, rng: np.random.Generator) -> list[CaseSpec]:
    path = d / "no_access.png"
    _save(_good(size, rng), path)
    path.chmod(0)
    root = os.geteuid() == 0  # root reads it anyway
    return [("permission denied", "no_access.png", "decoded" if root else "reported", r"permission denied")]


KINDS: dict[str, Writer] = {
    "truncated": _truncated,
    "zero-byte": _zero_byte,
    "text": _text,
    "bomb": _bomb,
    "huge-header": _huge_header,
    "thin": _thin,
    "fifo": _fifo,
    "socket": _socket,
    "device": _device,
    "dir-loop": _dir_loop,
    "links": _links,
    "names": _names,
    "modes": _modes,
    "exif": _exif,
    "bad-png": _bad_png,
    "wrong-ext": _wrong_ext,
    "dir-named-like-image": _dir_named_like_image,
    "permission": _permission,
}


def make_malformed_corpus(
    root: str | Path,
    kinds: Sequence[str] | None = None,
    splits: Sequence[str] = ("val",),
    classes: Sequence[str] = ("left", "right"),
    n_train: int = 4,
    n_val: int = 3,
    size: int = 16,
    thin_length: int = 400_000,
    seed: int = 0,
) -> list[Case]:
    """A clean ImageFolder at ``root`` (``n_train`` / ``n_val`` images per class) plus the
    malformed ``kinds`` (default: all of :data:`KINDS`) in ``root/<split>/<classes[0]>/`` for
    each of ``splits``. Returns the cases, paths relative to ``root``."""
    root = Path(root)
    make_imagefolder(root, classes, n_train=n_train, n_val=n_val, size=size, seed=seed)
    rng = np.random.default_rng(seed + 1)
    cases: list[Case] = []
    for split in splits:
        d = root / split / classes[0]
        d.mkdir(parents=True, exist_ok=True)
        for kind in kinds or list(KINDS):
            writer = KINDS[kind]
            specs = _thin(d, size, rng, thin_length) if kind == "thin" else writer(d, size, rng)
            for name, rel, expect, reason in specs:
                cases.append(Case(name, f"{split}/{classes[0]}/{rel}", expect, reason))
    return cases


def clean_file_count(root: str | Path) -> int:
    """How many entries a dataset at ``root`` has (files and links named anything): the size a
    clean comparison dataset should have."""
    return sum(len(files) for _, _, files in os.walk(root))


def upload_payloads(root: str | Path, cases: Sequence[Case]) -> list[tuple[Case, bytes]]:
    """The cases that are regular files (what a browser can upload), with their bytes: for the
    explain page's decoder, which must give the same answer as ``compute`` (``Case.expect`` and
    ``Case.reason`` hold for ``load_image(data, name=...)`` too). FIFOs, sockets, devices,
    broken links and loops have no bytes to upload and are left out."""
    import stat

    from xaidash.compute.datasets.sources import FileDataset, open_dataset

    ds = open_dataset(f"imagefolder:{root}")
    assert isinstance(ds, FileDataset)
    files = {it.source: ds.path(it) for split in ("train", "val") for it in ds.items(split)}
    out: list[tuple[Case, bytes]] = []
    for c in cases:
        path = files.get(c.path)
        if path is None:
            continue
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                out.append((c, path.read_bytes()))
        except OSError:  # broken links, and mode 000 for anyone but root
            continue
    return out
