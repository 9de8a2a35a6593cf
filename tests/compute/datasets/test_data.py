"""Data sources: every SPEC kind, class subsets, stable ids, subsample, fingerprint, errors."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import logging
import os
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.imagegen import (
    make_fake_cifar10,
    make_fake_fashion_mnist,
    make_imagefolder,
    make_unlabeled_folder,
    write_corrupt_image,
)
from xaidash.compute.datasets import archives, base
from xaidash.compute.datasets.archives import FASHION_MNIST_CLASSES
from xaidash.compute.datasets.sources import (
    ImageLoadError,
    Item,
    open_dataset,
    subsample,
)
from xaidash.errors import UserError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never read or write the user's cache / env-configured data in tests.
    monkeypatch.delenv("XAIDASH_DATA", raising=False)
    monkeypatch.setattr(base, "DEFAULT_CACHE_DIR", tmp_path / "cache")


@contextlib.contextmanager
def serve_dir(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on localhost (torchvision's downloader needs http(s)://,
    file:// responses lack the length attribute it reads); yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------- imagefolder


def test_imagefolder_splits_classes_ids(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", classes=("cat", "dog"), n_train=3, n_val=2, size=16)
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.kind == "imagefolder" and ds.classes == ["cat", "dog"] and ds.labeled
    tr, va = ds.items("train"), ds.items("val")
    assert len(tr) == 6 and len(va) == 4
    assert [i.image_id for i in va] == sorted(i.image_id for i in va)
    assert all(len(i.image_id) == 16 and int(i.image_id, 16) >= 0 for i in va)
    assert {i.source for i in va} >= {"val/cat/cat_0000.png", "val/dog/dog_0001.png"}
    it = next(i for i in va if i.source == "val/dog/dog_0001.png")
    assert it.label == 1 and it.split == "val"
    img = ds.load(it)
    assert img.mode == "RGB" and img.size == (16, 16)
    assert ds.natural_size() == 16
    # the val folder opened directly is a val-only dataset with the same ids
    ds_val = open_dataset(f"imagefolder:{root / 'val'}")
    assert ds_val.items("train") == []
    assert [i.image_id for i in ds_val.items("val")] == [i.image_id for i in va]
    # stable across runs
    assert [i.image_id for i in open_dataset(f"imagefolder:{root}").items("val")] == [i.image_id for i in va]


def test_imagefolder_fingerprint(tmp_path: Path) -> None:
    a = make_imagefolder(tmp_path / "a", n_train=2, n_val=2, size=8)
    b = make_imagefolder(tmp_path / "b", n_train=2, n_val=2, size=8)
    fa, fb = open_dataset(f"imagefolder:{a}").fingerprint(), open_dataset(f"imagefolder:{b}").fingerprint()
    assert fa == fb and len(fa) == 40  # identical data, identical fingerprint
    (a / "val" / "left" / "extra.png").write_bytes((a / "val" / "left" / "left_0000.png").read_bytes())
    assert open_dataset(f"imagefolder:{a}").fingerprint() != fa


def test_imagefolder_recursive_hidden_and_non_images(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=0, n_val=2, size=8)
    sub = root / "val" / "left" / "more"
    sub.mkdir()
    (sub / "x.PNG").write_bytes((root / "val" / "left" / "left_0000.png").read_bytes())
    (root / "val" / "left" / "notes.txt").write_text("not an image")
    (root / "val" / "left" / ".hidden.png").write_text("ignored")
    (root / "val" / ".git").mkdir()
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.classes == ["left", "right"]
    assert "val/left/more/x.PNG" in {i.source for i in ds.items("val")}
    assert len(ds.items("val")) == 5


def test_imagefolder_corrupt_file_is_not_fatal(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=0, n_val=2, size=8)
    write_corrupt_image(root / "val" / "left" / "zz_bad.png")
    ds = open_dataset(f"imagefolder:{root}")
    bad = next(i for i in ds.items("val") if i.source.endswith("zz_bad.png"))
    with pytest.raises(ImageLoadError) as ei:
        ds.load(bad)
    assert ei.value.path == "val/left/zz_bad.png"


def _fs(path: Path, raw: bytes) -> Path:
    """``path / raw`` for a raw (possibly non-UTF-8) file name."""
    return Path(os.fsdecode(os.fsencode(path) + b"/" + raw))


def test_non_utf8_file_name_is_an_ordinary_image(tmp_path: Path) -> None:
    # The id hashed the name as UTF-8 and crashed train and compute ("internal error:
    # UnicodeEncodeError"); now: a stable id over the name's bytes, shown with U+FFFD.
    root = make_imagefolder(tmp_path / "d", n_train=1, n_val=1, size=8)
    good = (root / "val" / "left" / "left_0000.png").read_bytes()
    _fs(root / "val" / "left", b"caf\xe9.png").write_bytes(good)
    sub = _fs(root / "val" / "left", b"\xff")
    sub.mkdir()
    (sub / "x.png").write_bytes(good)
    ds = open_dataset(f"imagefolder:{root}")
    by_source = {it.source: it for it in ds.items("val")}
    assert {"val/left/caf\ufffd.png", "val/left/\ufffd/x.png"} <= set(by_source)
    it = by_source["val/left/caf\ufffd.png"]
    expected = hashlib.sha1(b"imagefolder:val:left/caf\xe9.png").hexdigest()[:16]  # the name's own bytes
    assert it.image_id == expected
    assert [i.image_id for i in open_dataset(f"imagefolder:{root}").items("val")] == [
        i.image_id for i in ds.items("val")]  # stable
    assert ds.load(it).size == (8, 8)
    assert ds.load(by_source["val/left/\ufffd/x.png"]).size == (8, 8)
    for i in ds.items("val"):
        i.source.encode("utf-8")  # printable, storable
    ds.fingerprint()
    # a UTF-8 name keeps the id it always had
    plain = by_source["val/left/left_0000.png"]
    assert plain.image_id == hashlib.sha1(b"imagefolder:val:left/left_0000.png").hexdigest()[:16]


def test_non_utf8_class_and_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "d"
    good = make_imagefolder(tmp_path / "src", n_train=0, n_val=1, size=8) / "val" / "left" / "left_0000.png"
    for split in ("train", "val"):
        for raw in (b"caf\xe9", b"tea"):
            d = _fs(root / split, raw)
            d.mkdir(parents=True)
            (d / "a.png").write_bytes(good.read_bytes())
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.classes == ["caf\ufffd", "tea"]
    assert {it.source for it in ds.items("train")} == {"train/caf\ufffd/a.png", "train/tea/a.png"}
    assert all(ds.load(it).size == (8, 8) for it in ds.items("val"))
    d = open_dataset(f"folder:{root}")
    assert "val/caf\ufffd/a.png" in {it.source for it in d.items("val")}


def test_directory_symlink_loop_is_visited_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # `ln -s . val/left/loop` turned 16 images into 336 without a word (os.walk followlinks).
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=4, size=8)
    before = {s: [i.image_id for i in open_dataset(f"imagefolder:{root}").items(s)] for s in ("train", "val")}
    left = root / "val" / "left"
    os.symlink(".", left / "loop")
    os.symlink("..", left / "up")  # the split folder: would pull the class 'right' into 'left'
    (left / "nested").mkdir()
    os.symlink("../..", left / "nested" / "back")
    os.symlink("../right", left / "sibling")  # another class's folder, already part of the split
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"imagefolder:{root}")
    assert [i.image_id for i in ds.items("val")] == before["val"]
    assert [i.image_id for i in ds.items("train")] == before["train"]
    text = caplog.text
    for link in ("val/left/loop", "val/left/up", "val/left/nested/back"):
        assert f"{link}: directory symlink loop" in text, text
    assert "val/left/sibling: points to val/right, which is already part of the dataset" in text
    # folder: the same walk
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        flat = open_dataset(f"folder:{root}")
    assert len(flat.items("val")) == len(before["train"]) + len(before["val"])
    assert "directory symlink loop" in caplog.text


def test_directory_symlink_outside_is_followed(tmp_path: Path) -> None:
    # Following links is a feature (class folders that are links into shared storage): only
    # real directories already visited are skipped.
    root = make_imagefolder(tmp_path / "d", n_train=0, n_val=2, size=8)
    extra = make_imagefolder(tmp_path / "e", n_train=0, n_val=3, size=8)
    os.symlink(extra / "val" / "left", root / "val" / "left" / "more")
    os.symlink(extra / "val" / "left", root / "val" / "left" / "again")  # the same real folder twice
    ds = open_dataset(f"imagefolder:{root}")
    sources = [i.source for i in ds.items("val") if i.label == 0]
    assert len(sources) == 2 + 3
    assert sum(s.startswith("val/left/again/") for s in sources) == 3  # the first in sorted order wins


@pytest.mark.timeout(30)
def test_fifo_and_special_files_are_items_reported_at_load(tmp_path: Path) -> None:
    # A FIFO named like an image hung `train` and `compute` (natural_size opened it, then the loader).
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=2, size=8)
    os.mkfifo(root / "val" / "left" / "f.png")
    os.mkfifo(root / "train" / "left" / "f.png")
    os.symlink("/dev/zero", root / "val" / "left" / "z.png")
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.natural_size() == 8
    ds.fingerprint()
    reasons = {}
    for it in ds.items("val"):
        try:
            ds.load(it)
        except ImageLoadError as exc:
            reasons[it.source] = exc.reason
    assert reasons == {"val/left/f.png": "not a regular file (FIFO); not opened",
                       "val/left/z.png": "not a regular file (character device); not opened"}


def test_unreadable_folder_is_warned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    # Root reads a mode-000 folder anyway (tests run as root): simulate the error os.walk meets.
    root = make_imagefolder(tmp_path / "d", n_train=0, n_val=2, size=8)
    (root / "val" / "left" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"imagefolder:{root}")
    assert len(ds.items("val")) == 4
    assert "cannot read folder val/left/locked: Permission denied" in caplog.text


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("missing", "not found"),
        ("empty", "no class folders"),
        ("no_images", "class folder has no images"),
        ("mismatch", "train and val class folders differ"),
        ("train_only", "no val/ folder"),
        ("file", "not a directory"),
    ],
)
def test_imagefolder_errors(tmp_path: Path, setup: str, pattern: str) -> None:
    root = tmp_path / "d"
    if setup == "empty":
        root.mkdir()
    elif setup == "no_images":
        make_imagefolder(root, n_train=0, n_val=1, size=8)
        (root / "val" / "empty_class").mkdir()
    elif setup == "mismatch":
        make_imagefolder(root, n_train=1, n_val=1, size=8)
        make_imagefolder(tmp_path / "tmp", classes=("extra",), n_train=0, n_val=1, size=8)
        (tmp_path / "tmp" / "val" / "extra").rename(root / "val" / "extra")
    elif setup == "train_only":
        make_imagefolder(root, n_train=1, n_val=0, size=8)
    elif setup == "file":
        root.write_text("x")
    with pytest.raises(UserError, match=pattern) as ei:
        open_dataset(f"imagefolder:{root}")
    if setup in ("missing", "empty", "file"):
        assert str(root) in str(ei.value)
    if setup == "no_images":
        assert str(root / "val" / "empty_class") in str(ei.value)


# ---------------------------------------------------------------------------------- folder


def test_folder_unlabeled_recursive(tmp_path: Path) -> None:
    root = make_unlabeled_folder(tmp_path / "u", n=5, size=8)
    ds = open_dataset(f"folder:{root}")
    assert ds.kind == "folder" and ds.classes is None and not ds.labeled
    items = ds.items("val")
    assert len(items) == 5 and all(i.label is None and i.split == "val" for i in items)
    assert "sub/img_0001.png" in {i.source for i in items}
    assert ds.items("train") == []
    assert ds.load(items[0]).mode == "RGB"


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no images found under"):
        open_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="not found"):
        open_dataset(f"folder:{tmp_path / 'nope'}")


def test_unknown_kind_lists_valid() -> None:
    with pytest.raises(UserError) as ei:
        open_dataset("mnist")
    msg = str(ei.value)
    for k in ("imagefolder", "folder", "fashion-mnist", "cifar10"):
        assert k in msg


# ---------------------------------------------------------------------------------- cifar10


def test_cifar10_fake_pickles_and_subset(tmp_path: Path) -> None:
    root = make_fake_cifar10(tmp_path / "c", n_per_batch=20)
    full = open_dataset("cifar10", data_root=str(root))
    assert full.classes[3] == "cat" and len(full.items("train")) == 100 and len(full.items("val")) == 20
    sub = open_dataset("cifar10:Cat,dog,horse", data_root=str(root))
    assert sub.classes == ["cat", "dog", "horse"]
    assert Counter(i.label for i in sub.items("val")) == {0: 2, 1: 2, 2: 2}
    # a subset keeps the ids of the full dataset, with re-indexed labels
    full_by_id = {i.image_id: i for i in full.items("train")}
    for it in sub.items("train"):
        orig = full_by_id[it.image_id]
        assert orig.source == it.source
        assert full.classes[orig.label] == sub.classes[it.label]
    # ids are sha1(kind:split:index), the index being torchvision's CIFAR10 index
    it = next(i for i in sub.items("train") if i.source == "cifar10/train#23")
    assert it.image_id == hashlib.sha1(b"cifar10:train:23").hexdigest()[:16]
    img = sub.load(it)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert sub.natural_size() == 32
    # order of the subset changes labels but not ids
    rev = open_dataset("cifar10:horse,dog,cat", data_root=str(root))
    assert {i.image_id for i in rev.items("val")} == {i.image_id for i in sub.items("val")}
    assert rev.fingerprint() != sub.fingerprint()
    assert open_dataset("cifar10:cat,dog,horse", data_root=str(root)).fingerprint() == sub.fingerprint()


def test_cifar10_env_root_and_unknown_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_fake_cifar10(tmp_path / "c", n_per_batch=10)
    monkeypatch.setenv("XAIDASH_DATA", str(root))
    assert open_dataset("cifar10:ship").classes == ["ship"]
    with pytest.raises(UserError, match=r"unknown cifar10 class 'caat'.*airplane, automobile"):
        open_dataset("cifar10:caat")
    with pytest.raises(UserError, match="listed twice"):
        open_dataset("cifar10:cat,CAT")


def test_cifar10_download_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torchvision download code path, pointed at a local archive over HTTP."""
    from torchvision.datasets import CIFAR10

    src = make_fake_cifar10(tmp_path / "src", n_per_batch=4)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5)
    # torchvision verifies each batch's md5 after extraction: give it our fake batches' md5s
    batches = src / "cifar-10-batches-py"

    def md5s(names: list[str]) -> list[list[str]]:
        return [[n, hashlib.md5((batches / n).read_bytes()).hexdigest()] for n in names]

    monkeypatch.setattr(CIFAR10, "train_list", md5s([f"data_batch_{i}" for i in range(1, 6)]))
    monkeypatch.setattr(CIFAR10, "test_list", md5s(["test_batch"]))
    meta_md5 = md5s(["batches.meta"])[0][1]
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    dest = tmp_path / "dest"
    with serve_dir(tmp_path) as base:
        monkeypatch.setattr(CIFAR10, "url", base + archive.name)
        ds = open_dataset("cifar10:cat", data_root=str(dest))
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(ds.items("train")) == 5 * 1  # labels cycle 0..9, 4 per batch -> cat (3) once per batch


def test_cifar10_download_failure_is_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10

    with serve_dir(tmp_path) as base:
        monkeypatch.setattr(CIFAR10, "url", base + "missing.tar.gz")
        with pytest.raises(UserError, match="CIFAR-10 is not available locally"):
            open_dataset("cifar10", data_root=str(tmp_path / "dest"))


# ---------------------------------------------------------------------------------- fashion-mnist


def test_fashion_fake_idx(tmp_path: Path) -> None:
    root = make_fake_fashion_mnist(tmp_path / "f", n_train=40, n_test=20)
    ds = open_dataset("fashion-mnist:t-shirt/top,ankle BOOT,Bag", data_root=str(root))
    assert ds.classes == ["T-shirt/top", "Ankle boot", "Bag"]
    assert Counter(i.label for i in ds.items("train")) == {0: 4, 1: 4, 2: 4}
    it = next(i for i in ds.items("val") if i.source == "fashion-mnist/t10k#9")
    assert it.label == 1 and it.image_id == hashlib.sha1(b"fashion-mnist:val:9").hexdigest()[:16]
    img = ds.load(it)
    assert img.mode == "RGB" and img.size == (28, 28)
    a = np.asarray(img)
    assert np.array_equal(a[..., 0], a[..., 2])  # grayscale replicated
    full = open_dataset("fashion-mnist", data_root=str(root))
    assert full.classes == list(FASHION_MNIST_CLASSES) and len(full.items("val")) == 20
    assert {i.image_id for i in ds.items("val")} <= {i.image_id for i in full.items("val")}


def test_fashion_unknown_class_lists_valid(tmp_path: Path) -> None:
    root = make_fake_fashion_mnist(tmp_path / "f", n_train=10, n_test=10)
    with pytest.raises(UserError, match=r"unknown fashion-mnist class 'Shoe'.*T-shirt/top, Trouser"):
        open_dataset("fashion-mnist:Shoe", data_root=str(root))


def test_fashion_download_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's FashionMNIST download code path, served from local files over HTTP."""
    from torchvision.datasets import FashionMNIST

    src = make_fake_fashion_mnist(tmp_path / "mirror", n_train=20, n_test=10)
    resources = [(f.name, hashlib.md5(f.read_bytes()).hexdigest()) for f in sorted(src.iterdir())]
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    monkeypatch.setattr(archives, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    dest = tmp_path / "dest"
    with serve_dir(src) as base:
        monkeypatch.setattr(FashionMNIST, "mirrors", [base])
        ds = open_dataset("fashion-mnist:Bag", data_root=str(dest))
    assert (dest / "FashionMNIST" / "raw").is_dir()
    assert len(ds.items("train")) == 2 and len(ds.items("val")) == 1


@pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(), reason="no Debian Fashion-MNIST")
def test_fashion_real_debian_files(tmp_path: Path) -> None:
    ds = open_dataset("fashion-mnist:Trouser,Sneaker")
    assert len(ds.items("val")) == 2000 and len(ds.items("train")) == 12000
    val = {i.source: i for i in ds.items("val")}
    # t10k #0 is an Ankle boot (not in the subset); #2 is a Trouser; #9 is a Sneaker
    assert "fashion-mnist/t10k#0" not in val
    assert val["fashion-mnist/t10k#2"].label == 0 and val["fashion-mnist/t10k#9"].label == 1
    img = ds.load(val["fashion-mnist/t10k#2"])
    assert img.size == (28, 28) and np.asarray(img).max() > 100


# ---------------------------------------------------------------------------------- subsample


def _items(counts: dict[int | None, int]) -> list[Item]:
    out = []
    for label, n in counts.items():
        for j in range(n):
            iid = hashlib.sha1(f"{label}:{j}".encode()).hexdigest()[:16]
            out.append(Item(iid, "val", label, f"{label}/{j}"))
    return out


def test_subsample_stratified_deterministic() -> None:
    items = _items({0: 50, 1: 30, 2: 3})
    s = subsample(items, 21, seed=0)
    assert len(s) == 21 and s == sorted(s, key=lambda i: i.image_id)
    assert Counter(i.label for i in s) == {0: 9, 1: 9, 2: 3}  # small class kept whole
    assert subsample(list(reversed(items)), 21, seed=0) == s  # input order irrelevant
    assert subsample(items, 21, seed=1) != s
    assert subsample(items, None) == sorted(items, key=lambda i: i.image_id)
    assert len(subsample(items, 10_000)) == len(items)
    assert subsample(items, 0) == []
    unl = _items({None: 7})
    assert len(subsample(unl, 3)) == 3
