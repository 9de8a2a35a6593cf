"""A torch ``Dataset`` handed to ``xaidash.compute_run`` in memory, written out as an image folder.

The job reads images by SPEC from files, and so do the dashboard (thumbnails, the image page) and
every later process (shards, Ray workers, the explain page). So an in-memory dataset is written
once as ``imagefolder:`` files: ``DIR/{val,train}/<class>/<index>.png`` plus ``DIR/classes.txt``,
which keeps the dataset's class order (the order the model's head uses). ``DIR`` is named by the
sha256 of what was written, so the same data lands in the same folder and an identical run is
reused, as on the command line.

Items are ``(image, label)`` pairs (torchvision's convention) with ``image`` a PIL image, a
``uint8`` array ``[H, W]`` / ``[H, W, C]``, or a tensor ``[C, H, W]`` / ``[H, W]`` of floats in
``[0, 1]`` or ``uint8``. PNG is lossless for 8-bit pixels; a float image is rounded to 8 bits,
which moves each pixel by at most 1/510 (the job then applies the model's preprocessing).
A normalised tensor (values outside ``[0, 1]``) is refused: xaidash normalises itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xaidash.errors import UserError

__all__ = ["dataset_classes", "write_imagefolder"]


def dataset_classes(dataset: Any, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The class names in label order: ``classes`` if given, else ``dataset.classes``."""
    names = classes if classes is not None else getattr(dataset, "classes", None)
    if names is None:
        raise UserError("compute_run: the dataset has no .classes; give classes=['a', 'b', ...] in label "
                        "order")
    out = tuple(str(n) for n in names)
    for n in out:
        if not n or n in (".", "..") or "/" in n or "\\" in n or n.startswith("."):
            raise UserError(f"compute_run: class name {n!r} cannot be a folder name; rename it")
    if len(set(out)) != len(out):
        raise UserError(f"compute_run: the class names repeat: {', '.join(out)}")
    return out


def _pixels(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3:
            t = t.permute(1, 2, 0)  # CHW -> HWC
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise UserError(f"compute_run: {where} has shape {tuple(arr.shape)}; give a PIL image, [C, H, W] "
                        "tensor or [H, W, C] array with 1, 3 or 4 channels")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise UserError(f"compute_run: {where} is {arr.dtype}; give uint8 or floats in [0, 1]")
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            raise UserError(f"compute_run: {where} has values in [{lo:.3g}, {hi:.3g}], not [0, 1]; give the "
                            "images before normalisation (xaidash applies the model's mean and std)")
        arr = np.round(arr * 255.0).astype(np.uint8)
    return Image.fromarray(arr)


def _item(dataset: Any, i: int, n_classes: int, split: str) -> tuple[Image.Image, int]:
    try:
        got = dataset[i]
    except Exception as exc:
        raise UserError(f"compute_run: {split} dataset[{i}] failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(got, (tuple, list)) or len(got) < 2:
        raise UserError(f"compute_run: {split} dataset[{i}] is a {type(got).__name__}; items must be "
                        "(image, label) pairs")
    image, label = got[0], got[1]
    label = int(label.item() if isinstance(label, torch.Tensor) else label)
    if not 0 <= label < n_classes:
        raise UserError(f"compute_run: {split} dataset[{i}] has label {label}; there are {n_classes} classes")
    return _pixels(image, f"{split} dataset[{i}]"), label


def write_imagefolder(val: Any, train: Any | None, classes: Sequence[str], root: Path) -> Path:
    """Write ``val`` (and ``train``) under ``root/<sha256>/`` and return that folder (an
    ``imagefolder:`` DIR). Every class gets a folder in both splits (empty ones are refused by
    the reader, so a class with no image in a split is an error here, named)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".writing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256("\n".join(classes).encode())
    try:
        for split, data in (("val", val), ("train", train)):
            if data is None:
                continue
            n = len(data)
            if n == 0:
                raise UserError(f"compute_run: the {split} dataset is empty")
            counts = [0] * len(classes)
            width = len(str(n - 1))
            for i in range(n):
                image, label = _item(data, i, len(classes), split)
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                folder = tmp / split / classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{i:0{width}d}.png"
                (folder / name).write_bytes(buf.getvalue())
                digest.update(f"{split}/{label}/{name}".encode())
                digest.update(buf.getvalue())
                counts[label] += 1
            missing = [c for c, k in zip(classes, counts, strict=True) if k == 0]
            if missing:
                raise UserError(f"compute_run: the {split} dataset has no image of {', '.join(missing)}; "
                                "every class needs one (or give classes= without them)")
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        out = root / digest.hexdigest()[:16]
        if out.is_dir():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
