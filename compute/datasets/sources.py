"""Data sources: one ``SPEC`` string -> a :class:`Dataset` of stable, labeled image items.

SPECs (see README.md, "Data SPEC"):

- ``imagefolder:DIR`` - ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``. A DIR that holds
  class folders directly is a validation-only dataset. Class names are the sorted folder
  names of the val split (a ``DIR/classes.txt``, one name per line, orders them as a model's
  head does instead, and must name exactly the class folders); train must have the same
  classes. Files are found recursively in each class folder, by image extension; hidden files
  and folders are ignored. Directory
  symlinks are followed, but each real directory is scanned once per split: a link to a folder
  above it (a loop) or to one already scanned is skipped with a warning. Entries named like
  images that are not regular files (FIFOs, sockets, devices, broken links) stay items, which
  the decoder refuses without opening them: they are reported like any unreadable image.
- ``folder:DIR`` - unlabeled images anywhere under DIR (recursive), all in split ``val``.
- ``fashion-mnist[:classes]`` - the original idx files: train = ``train-*``, val = ``t10k-*``.
- ``cifar10[:classes]`` - the python pickle batches: train = ``data_batch_1..5``, val =
  ``test_batch``.

``classes`` is a comma-separated list of class names (case-insensitive); the subset keeps the
given order and labels are re-indexed 0..n-1 in that order.

Image ids are stable: ``sha1(f"{kind}:{split}:{key}")[:16]`` with ``key`` the path relative to
the split folder (imagefolder; so ``imagefolder:DIR`` and ``imagefolder:DIR/val`` agree), the
path relative to DIR (folder), or the image's index in the original split - the same index
torchvision's ``FashionMNIST``/``CIFAR10`` datasets use (so a class subset never changes an
image's id and ids can be cross-referenced with torchvision). The hash is over the key's bytes,
so a file name that is not UTF-8 has a stable id too; ``Item.source`` (and class names) show
such bytes as U+FFFD.

Where files are looked for (fashion-mnist, cifar10): ``--data-root``, then ``$XAIDASH_DATA``,
then (fashion-mnist only) Debian's ``/usr/share/datasets/fashion-mnist``, then
``~/.cache/xaidash``. An explicit root wins over the system copy so users (and tests) can
point at their own files. When nothing is found the dataset is downloaded through torchvision
into the first of those roots (needs internet).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from xaidash.compute.datasets.archives import open_cifar10, open_fashion
from xaidash.compute.datasets.base import Dataset, Item, image_id_for
from xaidash.compute.datasets.decoding import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    display_name,
    image_size,
    load_image,
)
from xaidash.constants import SPLITS
from xaidash.errors import UserError, choices_error

__all__ = [
    "KINDS",
    "Dataset",
    "ImageLoadError",
    "Item",
    "open_dataset",
    "subsample",
]

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("imagefolder", "folder", "fashion-mnist", "cifar10")

class FileDataset(Dataset):
    """Images stored as files (``imagefolder:`` and ``folder:``)."""

    def __init__(self, spec: str, kind: str, classes: list[str] | None,
                 entries: dict[str, list[tuple[Item, Path]]]) -> None:
        self._paths: dict[str, Path] = {}
        items_by_split: dict[str, list[Item]] = {}
        for split, pairs in entries.items():
            items_by_split[split] = [it for it, _ in pairs]
            for it, path in pairs:
                self._paths[it.image_id] = path
        super().__init__(spec, kind, classes, items_by_split)

    def path(self, item: Item) -> Path:
        """The absolute path of ``item``'s file."""
        return self._paths[item.image_id]

    def load(self, item: Item) -> Image.Image:
        return load_image(self._paths[item.image_id], name=item.source)

    def natural_size(self) -> int:
        # Median shorter side of a few val images, read from headers only (no decoding).
        sides: list[int] = []
        items = self.items("val") or self.items("train")
        for it in items[:: max(1, len(items) // 16)][:16]:
            try:
                sides.append(min(image_size(self._paths[it.image_id], name=it.source)))
            except ImageLoadError:  # unreadable files are reported when they are loaded
                continue
        return int(np.median(sides)) if sides else 224

    def _content_digest(self, h: hashlib._Hash) -> None:
        for split in SPLITS:
            for it in self._items.get(split, []):
                try:
                    size = self._paths[it.image_id].stat().st_size
                except OSError:
                    size = -1
                h.update(f"{it.image_id}:{size}\n".encode())


# ---------------------------------------------------------------------------------------------
# SPEC parsing and class subsets


def _parse_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:rest``; the kind is matched case-insensitively."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise choices_error("dataset kind", kind or spec, KINDS)
    return kind, rest if sep else ""


# ---------------------------------------------------------------------------------------------
# imagefolder / folder


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _dir_id(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the directory ``path`` points to (symlinks followed), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Scan:
    """One walk over a split (or a ``folder:`` root): each real directory is visited once.

    Directory symlinks are followed (class folders that are links into shared storage are
    common), but a link to a folder above it (``ln -s . loop``, ``ln -s .. up``) is a loop and a
    link to a folder already scanned would count its images twice: both are skipped with a
    warning naming the link. ``outer`` are the folders above the walks (the split folder, the
    dataset root): a link to one of them is a loop too.
    """

    def __init__(self, root: Path, outer: list[Path]) -> None:
        self.root = root
        self.outer = {i for i in map(_dir_id, outer) if i is not None}
        self.seen: dict[tuple[int, int], Path] = {}

    def _rel(self, path: Path | str) -> str:
        try:
            return display_name(Path(path).relative_to(self.root).as_posix())
        except ValueError:
            return display_name(str(path))

    def claim(self, folders: list[Path]) -> None:
        """Mark ``folders`` (the class folders, before any is walked) as part of the scan."""
        for f in folders:
            fid = _dir_id(f)
            if fid is not None:
                self.seen.setdefault(fid, f)

    def image_files(self, folder: Path) -> list[Path]:
        """Image files under ``folder`` (recursive), skipping hidden files/folders; sorted.

        Non-regular files named like images (FIFOs, sockets, devices, broken links) are kept:
        they become items that the decoder refuses with a reason, so they are reported."""
        found: list[Path] = []
        top = _dir_id(folder)
        chains: dict[str, frozenset[tuple[int, int]]] = {
            str(folder): frozenset(self.outer | ({top} if top else set()))}

        def unreadable(exc: OSError) -> None:
            where = self._rel(exc.filename) if exc.filename else self._rel(folder)
            logger.warning("cannot read folder %s: %s; its images are left out", where,
                           display_name(exc.strerror or str(exc)))

        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
            chain = chains.pop(dirpath, frozenset())
            kept: list[str] = []
            for d in sorted(n for n in dirnames if not n.startswith(".")):
                sub = os.path.join(dirpath, d)
                sid = _dir_id(sub)
                if sid is None:
                    kept.append(d)  # os.walk reports what it cannot read
                elif sid in chain:
                    logger.warning("%s: directory symlink loop (it points to %s, a folder above it); "
                                   "not followed: each folder is scanned once",
                                   self._rel(sub), self._rel(os.path.realpath(sub)))
                elif sid in self.seen and os.path.islink(sub):
                    logger.warning("%s: points to %s, which is already part of the dataset; not followed: "
                                   "each folder is scanned once", self._rel(sub), self._rel(self.seen[sid]))
                elif sid in self.seen:
                    logger.warning("%s: the same folder as %s, already scanned; not scanned again",
                                   self._rel(sub), self._rel(self.seen[sid]))
                else:
                    self.seen[sid] = Path(sub)
                    chains[sub] = chain | {sid}
                    kept.append(d)
            dirnames[:] = kept
            for fn in filenames:
                if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(Path(dirpath) / fn)
        return sorted(found)


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    """Class name (as shown: non-UTF-8 bytes as U+FFFD) -> folder, sorted by name."""
    found: dict[str, Path] = {}
    for p in sorted(split_dir.iterdir(), key=lambda p: p.name):
        if not p.is_dir() or _is_hidden(p):
            continue
        name = display_name(p.name)
        if name in found:
            where = display_name(str(split_dir))
            raise UserError(f"class folders {found[name].name!a} and {p.name!a} in {where} have the same "
                            f"printable name {name!r}; rename one")
        found[name] = p
    return found


def _check_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_dir():
        raise UserError(f"{what} is not a directory: {path}")


def _open_imagefolder(spec: str, rest: str) -> Dataset:
    if not rest:
        raise UserError(
            "imagefolder needs a directory: imagefolder:DIR (with DIR/train/<class>, DIR/val/<class>)"
        )
    root = Path(rest).expanduser()
    _check_dir(root, "image folder")
    has_split = (root / "val").is_dir() or (root / "train").is_dir()
    if has_split:
        if not (root / "val").is_dir():
            raise UserError(f"{root} has a train/ folder but no val/ folder; add {root / 'val'}/<class>/...")
        split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    else:
        split_dirs = {"val": root}  # class folders directly: a validation-only dataset

    class_dirs = {s: _class_dirs(d) for s, d in split_dirs.items()}
    val_classes = _class_order(root, list(class_dirs["val"]))
    if not val_classes:
        vdir = split_dirs["val"]
        raise UserError(f"no class folders in {vdir} (expected {vdir}/<class>/<image>)")
    if "train" in split_dirs:
        train_classes = list(class_dirs["train"])
        if sorted(train_classes) != sorted(val_classes):
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise UserError(
                f"train and val class folders differ in {root}: only in train: {only_train or '-'}, "
                f"only in val: {only_val or '-'}"
            )

    entries: dict[str, list[tuple[Item, Path]]] = {}
    for split, sdir in split_dirs.items():
        pairs: list[tuple[Item, Path]] = []
        scan = _Scan(root, [root, sdir])
        scan.claim(list(class_dirs[split].values()))
        for label, cname in enumerate(val_classes):
            cdir = class_dirs[split][cname]
            files = scan.image_files(cdir)
            if not files:
                raise UserError(
                    f"class folder has no images: {display_name(str(cdir))} "
                    f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            for f in files:
                key = f.relative_to(sdir).as_posix()
                source = display_name(f.relative_to(root).as_posix() if has_split else key)
                pairs.append((Item(image_id_for("imagefolder", split, key), split, label, source), f))
        entries[split] = pairs
    return FileDataset(spec, "imagefolder", list(val_classes), entries)


def _class_order(root: Path, folders: list[str]) -> list[str]:
    """The class names in label order: ``root/classes.txt`` when there is one, else sorted folders."""
    listing = root / "classes.txt"
    if not listing.is_file():
        return folders
    names = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if sorted(names) != sorted(folders) or len(set(names)) != len(names):
        raise UserError(f"{listing} must list each class folder once (folders: {', '.join(folders)}; "
                        f"listed: {', '.join(names)}); fix it or delete it to order the classes by name")
    return names


def _open_folder(spec: str, rest: str) -> Dataset:
    if not rest:
        raise UserError("folder needs a directory: folder:DIR")
    root = Path(rest).expanduser()
    _check_dir(root, "image folder")
    files = _Scan(root, []).image_files(root)
    if not files:
        raise UserError(f"no images found under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    pairs = []
    for f in files:
        key = f.relative_to(root).as_posix()
        pairs.append((Item(image_id_for("folder", "val", key), "val", None, display_name(key)), f))
    return FileDataset(spec, "folder", None, {"val": pairs})


# ---------------------------------------------------------------------------------------------
# Public entry points


def open_dataset(spec: str, data_root: str | None = None) -> Dataset:
    """Open the dataset described by ``spec`` (see module docstring). Raises UserError on
    unknown kinds/classes, missing or empty folders, class folders without images."""
    kind, rest = _parse_spec(spec)
    if kind == "imagefolder":
        return _open_imagefolder(spec, rest)
    if kind == "folder":
        return _open_folder(spec, rest)
    if kind == "fashion-mnist":
        return open_fashion(spec, rest, data_root)
    return open_cifar10(spec, rest, data_root)


def subsample(items: list[Item], n: int | None, seed: int = 0) -> list[Item]:
    """At most ``n`` items, stratified by label, deterministic for a given ``seed``.

    Each class is shuffled (from an order sorted by image_id, so the input order does not
    matter), then classes are visited round-robin taking one item at a time until ``n`` are
    picked: small classes are kept whole, large ones share the rest evenly. The result is
    sorted by image_id. ``n=None`` (or ``n >= len(items)``) returns all items.
    """
    ordered = sorted(items, key=lambda it: it.image_id)
    if n is None or n >= len(ordered):
        return ordered
    if n <= 0:
        return []
    rng = np.random.default_rng(seed)
    groups: dict[int, list[Item]] = defaultdict(list)
    for it in ordered:
        groups[-1 if it.label is None else it.label].append(it)
    queues = []
    for label in sorted(groups):
        g = groups[label]
        perm = rng.permutation(len(g))
        queues.append([g[i] for i in perm])
    picked: list[Item] = []
    depth = 0
    while len(picked) < n:
        for q in queues:
            if depth < len(q):
                picked.append(q[depth])
                if len(picked) == n:
                    break
        depth += 1
    return sorted(picked, key=lambda it: it.image_id)
