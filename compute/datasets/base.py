"""What every data source is made of: the :class:`Item`, the :class:`Dataset` interface, the
in-memory :class:`ArrayDataset`, stable image ids, class subsets and the data roots.

:mod:`~xaidash.compute.datasets.sources` (folders, the SPEC entry point) and
:mod:`~xaidash.compute.datasets.archives` (Fashion-MNIST, CIFAR-10) both build on it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xaidash.compute.datasets.decoding import ImageLoadError
from xaidash.constants import SPLITS
from xaidash.errors import UserError

# Module-level so tests can point it elsewhere (e.g. to exercise the download path).
DEFAULT_CACHE_DIR = Path("~/.cache/xaidash")


@dataclass(frozen=True)
class Item:
    """One image of a dataset. ``image_id`` is stable across runs (:func:`image_id_for`; the key
    each kind hashes: :mod:`xaidash.compute.datasets.sources`)."""

    image_id: str
    split: str
    label: int | None
    source: str


def _fs_bytes(text: str) -> bytes:
    """The bytes a file-system name stands for: UTF-8, with the bytes that are not UTF-8 (which
    Python keeps as lone surrogates, PEP 383) given back as themselves."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that do not stand for a byte
        return text.encode("utf-8", "surrogatepass")


def image_id_for(kind: str, split: str, key: str) -> str:
    """The stable 16-hex-char id of the image ``key`` in ``split`` of a ``kind`` dataset.

    Hashed over the key's bytes: a UTF-8 name keeps the id it always had, and a name that is
    not UTF-8 (``caf\\xe9.png`` from a Latin-1 system) gets a stable id of its own."""
    return hashlib.sha1(_fs_bytes(f"{kind}:{split}:{key}")).hexdigest()[:16]


class Dataset:
    """A labeled (or unlabeled) image dataset with a train and/or val split.

    Subclasses provide :meth:`load` and the bytes that identify the content for
    :meth:`fingerprint`; the item lists are computed once at construction (cheap: no pixel
    is decoded until :meth:`load`).
    """

    def __init__(self, spec: str, kind: str, classes: list[str] | None,
                 items_by_split: dict[str, list[Item]]) -> None:
        self.spec = spec
        self.kind = kind
        self.classes = classes
        self._items = {s: sorted(v, key=lambda it: it.image_id) for s, v in items_by_split.items()}
        self._fingerprint: str | None = None

    @property
    def labeled(self) -> bool:
        """True when items carry labels (every kind except ``folder:``)."""
        return self.classes is not None

    def items(self, split: str) -> list[Item]:
        """The items of ``split`` ("train" or "val"), sorted by image_id; [] if no such split."""
        return list(self._items.get(split, []))

    def splits(self) -> list[str]:
        """The splits that have at least one item."""
        return [s for s in SPLITS if self._items.get(s)]

    def load(self, item: Item) -> Image.Image:
        """Decode ``item`` to an RGB image; raises :class:`ImageLoadError` if it cannot."""
        raise NotImplementedError

    def natural_size(self) -> int:
        """The side length the images naturally have (used as the scratch-model input size)."""
        raise NotImplementedError

    def _content_digest(self, h: hashlib._Hash) -> None:
        """Feed what identifies the *content* (file sizes, pixel bytes) into ``h``."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha1 hex over kind, classes, ids, labels and content sizes: same data, same value."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(f"{self.kind}\0{self.classes!r}\0".encode())
            for split in SPLITS:
                for it in self._items.get(split, []):
                    h.update(f"{split}:{it.image_id}:{it.label}\n".encode())
            self._content_digest(h)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._items.get(s, []))}" for s in SPLITS)
        return f"<Dataset {self.spec!r} kind={self.kind} classes={self.classes} {sizes}>"


class ArrayDataset(Dataset):
    """Images held in uint8 arrays loaded lazily per split (fashion-mnist, cifar10).

    ``loaders[split]()`` returns the full split's array ``[N, H, W]`` or ``[N, H, W, 3]``;
    ``index[image_id]`` is the row of the item in its split's array.
    """

    def __init__(self, spec: str, kind: str, classes: list[str], items_by_split: dict[str, list[Item]],
                 index: dict[str, int], loaders: dict[str, Callable[[], np.ndarray]], size: int) -> None:
        super().__init__(spec, kind, classes, items_by_split)
        self._index = index
        self._loaders = loaders
        self._size = size

    def _array(self, split: str) -> np.ndarray:
        return self._loaders[split]()  # the loaders are lru-cached per file

    def load(self, item: Item) -> Image.Image:
        try:
            arr = self._array(item.split)[self._index[item.image_id]]
        except Exception as exc:  # a damaged source file affects every image of the split
            raise ImageLoadError(item.source, f"cannot read from the dataset file: {exc}") from None
        img = Image.fromarray(np.ascontiguousarray(arr))
        return img.convert("RGB")  # Fashion-MNIST is grayscale: replicate to 3 channels

    def natural_size(self) -> int:
        return self._size

    def _content_digest(self, h: hashlib._Hash) -> None:
        # The pixels themselves (rows of this subset only): a different copy of the dataset
        # with identical ids but other content must not share a fingerprint.
        for split in SPLITS:
            items = self._items.get(split, [])
            if not items:
                continue
            arr = self._array(split)
            rows = np.fromiter((self._index[it.image_id] for it in items), dtype=np.int64, count=len(items))
            h.update(np.ascontiguousarray(arr[rows]).tobytes())


def select_classes(all_classes: Sequence[str], wanted: str, dataset: str) -> list[int]:
    """Indices (into ``all_classes``) of the comma-separated ``wanted`` names, in given order."""
    if not wanted.strip():
        return list(range(len(all_classes)))
    lookup = {c.lower(): i for i, c in enumerate(all_classes)}
    picked: list[int] = []
    for raw in wanted.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.lower() not in lookup:
            raise UserError(
                f"unknown {dataset} class {name!r}; valid classes: {', '.join(all_classes)}"
            )
        idx = lookup[name.lower()]
        if idx in picked:
            raise UserError(f"class {all_classes[idx]!r} is listed twice in {wanted!r}")
        picked.append(idx)
    if not picked:
        raise UserError(f"empty class list {wanted!r} for {dataset}")
    return picked


def data_roots(data_root: str | None) -> list[Path]:
    """Candidate data roots in priority order (explicit, $XAIDASH_DATA, the user cache)."""
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    env = os.environ.get("XAIDASH_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(DEFAULT_CACHE_DIR.expanduser())
    return roots
