"""The datasets that come as archive files: Fashion-MNIST (idx files) and CIFAR-10 (python
pickle batches). Found under the data roots (:func:`~xaidash.compute.datasets.base.data_roots`:
``--data-root``, ``$XAIDASH_DATA``, then Debian's copy of Fashion-MNIST, then
``~/.cache/xaidash``), or downloaded through
torchvision into the first root when missing (needs internet). Pixels stay lazy: each split's
array is read once, on the first image asked for.
"""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from xaidash.compute.datasets.base import (
    ArrayDataset,
    Dataset,
    Item,
    data_roots,
    image_id_for,
    select_classes,
)
from xaidash.constants import SPLITS
from xaidash.errors import UserError

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: Debian's dataset-fashion-mnist package (module-level so tests can point it elsewhere).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@lru_cache(maxsize=8)
def _read_idx(path: str, mtime: float) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a uint8 array. ``mtime`` keys the cache."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an idx file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if arr.size != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array (the MNIST family's format, gzipped or not), cached by path and mtime."""
    return _read_idx(str(path), path.stat().st_mtime)


def _find_fashion_dir(roots: Sequence[Path]) -> Path | None:
    """The first directory holding all four Fashion-MNIST files (gzipped or not)."""
    candidates: list[Path] = []
    for r in roots:
        candidates += [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]
    for d in candidates:
        if all(_fashion_file(d, n) is not None for pair in _FASHION_FILES.values() for n in pair):
            return d
    return None


def _fashion_file(d: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (d / name).is_file():
            return d / name
    return None


def _require(path: Path | None, d: Path, stem: str) -> Path:
    if path is None:
        raise UserError(f"Fashion-MNIST file {stem} is missing in {d}")
    return path


def _download_fashion(root: Path) -> Path:
    """Download Fashion-MNIST with torchvision into ``root`` (needs internet)."""
    logger.info("Fashion-MNIST not found locally; downloading it into %s", root)
    try:
        from torchvision.datasets import FashionMNIST

        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as exc:
        raise UserError(
            f"Fashion-MNIST is not available locally and the download failed ({type(exc).__name__}: {exc}); "
            "put the four *-ubyte.gz files in --data-root (or install Debian's dataset-fashion-mnist)"
        ) from None
    return root / "FashionMNIST" / "raw"


def open_fashion(spec: str, rest: str, data_root: str | None) -> Dataset:
    picked = select_classes(FASHION_MNIST_CLASSES, rest, "fashion-mnist")
    roots = data_roots(data_root)
    search = [*roots[:-1], DEBIAN_FASHION_MNIST_DIR, *roots[-1:]]
    d = _find_fashion_dir(search)
    if d is None:
        d = _download_fashion(roots[0])
    files = {s: tuple(_require(_fashion_file(d, n), d, n) for n in pair)
             for s, pair in _FASHION_FILES.items()}
    logger.debug("Fashion-MNIST from %s", d)
    return _array_dataset(
        spec, "fashion-mnist", FASHION_MNIST_CLASSES, picked,
        labels={s: functools.partial(read_idx, files[s][1]) for s in SPLITS},
        images={s: functools.partial(read_idx, files[s][0]) for s in SPLITS},
        source_name={"train": "fashion-mnist/train", "val": "fashion-mnist/t10k"},
        size=28,
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}


def _unpickle(path: Path) -> dict[str, object]:
    """Read one CIFAR batch; keys normalized to str. (Pickle: only open files you trust -
    the same trust torchvision places in the official archive.)"""
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


@lru_cache(maxsize=4)
def _read_cifar_split(d: str, split: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    """(images [N,32,32,3] uint8, labels [N] int64) of a CIFAR split, batches concatenated."""
    imgs, labels = [], []
    for name in _CIFAR_BATCHES[split]:
        b = _unpickle(Path(d) / name)
        data = np.asarray(b["data"], dtype=np.uint8)
        imgs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(b.get("labels", b.get("fine_labels")), dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(imgs)), np.concatenate(labels)


def _find_cifar_dir(roots: Sequence[Path]) -> Path | None:
    for r in roots:
        for d in (r / _CIFAR_DIR, r):
            if all((d / n).is_file() for names in _CIFAR_BATCHES.values() for n in names):
                return d
    return None


def _download_cifar(root: Path) -> Path:
    """Download and extract CIFAR-10 with torchvision into ``root`` (needs internet)."""
    logger.info("CIFAR-10 not found locally; downloading it into %s", root)
    try:
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:
        raise UserError(
            f"CIFAR-10 is not available locally and the download failed ({type(exc).__name__}: {exc}); "
            f"put the {_CIFAR_DIR}/ folder in --data-root or $XAIDASH_DATA"
        ) from None
    return root / _CIFAR_DIR


def open_cifar10(spec: str, rest: str, data_root: str | None) -> Dataset:
    picked = select_classes(CIFAR10_CLASSES, rest, "cifar10")
    roots = data_roots(data_root)
    d = _find_cifar_dir(roots) or _download_cifar(roots[0])
    mtime = max((d / n).stat().st_mtime for names in _CIFAR_BATCHES.values() for n in names)

    def split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return _read_cifar_split(str(d), split, mtime)
        except Exception as exc:
            raise UserError(f"cannot read CIFAR-10 batches in {d}: {type(exc).__name__}: {exc}") from None

    return _array_dataset(
        spec, "cifar10", CIFAR10_CLASSES, picked,
        labels={s: functools.partial(lambda s: split_arrays(s)[1], s) for s in SPLITS},
        images={s: functools.partial(lambda s: split_arrays(s)[0], s) for s in SPLITS},
        source_name={"train": "cifar10/train", "val": "cifar10/test"},
        size=32,
    )


def _array_dataset(spec: str, kind: str, all_classes: Sequence[str], picked: list[int],
                   labels: dict[str, Callable[[], np.ndarray]], images: dict[str, Callable[[], np.ndarray]],
                   source_name: dict[str, str], size: int) -> Dataset:
    """Items for the picked classes (labels re-indexed in pick order); pixels stay lazy."""
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    remap[picked] = np.arange(len(picked))
    items: dict[str, list[Item]] = {}
    index: dict[str, int] = {}
    for split in SPLITS:
        try:
            lab = np.asarray(labels[split](), dtype=np.int64)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot read {kind} {split} labels: {type(exc).__name__}: {exc}") from None
        if lab.size and (lab.min() < 0 or lab.max() >= len(all_classes)):
            raise UserError(f"{kind} {split} labels out of range 0..{len(all_classes) - 1}")
        new = remap[lab]
        rows = np.nonzero(new >= 0)[0]
        split_items = []
        for i in rows.tolist():
            iid = image_id_for(kind, split, str(i))
            split_items.append(Item(iid, split, int(new[i]), f"{source_name[split]}#{i}"))
            index[iid] = i
        items[split] = split_items
    return ArrayDataset(spec, kind, [all_classes[i] for i in picked], items, index, images, size)
