"""Tiny synthetic datasets for tests: ImageFolders, unlabeled folders, fake CIFAR-10 and
Fashion-MNIST files in their original on-disk formats.

Everything is deterministic (seeded numpy) and small, so tests stay fast on a 2-core CPU.
Other test modules import these helpers; keep the signatures stable.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def pattern_image(class_index: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 array whose class is visible: a bright blob in a class-dependent position.

    Class ``i`` of ``n`` puts the blob at horizontal position ``(i + 0.5) / n`` of the width
    (two classes: left half vs right half), at a jittered height, over a noisy background.
    The blob also has a class-dependent colour (the channel ``i % 3`` dominates). Why both:
    position gives CAM tests a known "right evidence" region, and colour keeps the class
    learnable under the random horizontal flip that ``train`` applies (a flip moves a left
    blob to the right, which alone would make two position-only classes ambiguous).
    """
    img = rng.normal(60.0, 25.0, size=(size, size, 3))
    cx = (class_index + 0.5) / num_classes * size + rng.normal(0.0, size * 0.04)
    cy = size / 2 + rng.normal(0.0, size * 0.15)
    radius = size * (0.18 if num_classes <= 2 else 0.12)
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)))
    # class-dependent colour: survives horizontal flips (see docstring)
    tint = np.array([70.0, 70.0, 70.0])
    tint[class_index % 3] = 255.0
    img = img + blob[..., None] * tint
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagefolder(
    root: str | Path,
    classes: Sequence[str] = ("left", "right"),
    n_train: int = 16,
    n_val: int = 8,
    size: int = 32,
    seed: int = 0,
    ext: str = ".png",
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``.

    ``n_train`` / ``n_val`` are images *per class*; ``n_train=0`` writes no train split.
    Returns ``root`` as a Path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        if n <= 0:
            continue
        for ci, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                arr = pattern_image(ci, len(classes), size, rng)
                Image.fromarray(arr).save(d / f"{name}_{j:04d}{ext}")
    return root


def make_unlabeled_folder(root: str | Path, n: int = 6, size: int = 32, seed: int = 0) -> Path:
    """Write ``n`` images into ``root`` (half of them in a sub-folder, to exercise recursion)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for j in range(n):
        arr = pattern_image(j % 2, 2, size, rng)
        target = root / ("sub" if j % 2 else "") / f"img_{j:04d}.png"
        Image.fromarray(arr).save(target)
    return root


def make_fake_cifar10(root: str | Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """Write a CIFAR-10 python-pickle directory ``root/cifar-10-batches-py``.

    Same format as the official archive: ``data_batch_1..5`` and ``test_batch`` are pickled
    dicts with ``"data"`` (N x 3072 uint8, channel-major) and ``"labels"``; ``batches.meta``
    has ``"label_names"``. Keys are ``str`` - what the official (Python 2) pickles give when
    loaded with ``encoding="latin1"`` as torchvision does. Labels cycle 0..9, so every class
    is present in every batch.
    Returns the *data root* (the parent of ``cifar-10-batches-py``).
    """
    root = Path(root)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        labels = [i % 10 for i in range(n_per_batch)]
        imgs = np.stack([pattern_image(lab, 10, 32, rng) for lab in labels])  # N,32,32,3
        data = imgs.transpose(0, 3, 1, 2).reshape(n_per_batch, 3072)
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES),
                     "num_cases_per_batch": n_per_batch, "num_vis": 3072}, f)
    return root


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array in the idx format (big-endian magic + dims), gzipped."""
    magic = 0x0800 | arr.ndim  # 0x08 = unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fake_fashion_mnist(root: str | Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Write the four Fashion-MNIST idx files (gzipped, original names) into ``root``.

    Labels cycle 0..9. Returns ``root`` (the directory holding the ``*-ubyte.gz`` files).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.array([i % 10 for i in range(n)], dtype=np.uint8)
        imgs = np.stack([pattern_image(int(lab), 10, 28, rng)[..., 0] for lab in labels])
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_corrupt_image(path: str | Path) -> Path:
    """Write a file with an image extension whose content is a truncated PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_bright_imagefolder(
    root: str | Path,
    n_train: int = 16,
    n_val: int = 8,
    size: int = 16,
    background: float = 215.0,
    amplitude: float = 30.0,
    noise: float = 3.0,
    seed: int = 0,
) -> Path:
    """An easy two-class ImageFolder ("left", "right") whose pixels are far from the ImageNet mean:
    a faint blob (red on the left / green on the right) on a bright, low-contrast background.

    Why: BatchNorm's running statistics start at mean 0 / variance 1 and move 10 % per step, so
    after a few steps (4 epochs of 32 images in one batch) they are far from the activations of
    such images; in eval mode the network then predicts one class for everything, although its
    training accuracy is ~0.97. ``train`` must recalibrate them.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", n_train), ("val", n_val)):
        for ci, name in enumerate(("left", "right")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            cx = (ci + 0.5) / 2 * size
            blob = np.exp(-(((xx - cx) ** 2 + (yy - size / 2) ** 2) / (2 * (size * 0.2) ** 2)))
            for j in range(n):
                img = rng.normal(background, noise, (size, size, 3))
                img[..., ci] += amplitude * blob
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{name}_{j:04d}.png")
    return root


def make_imagefolder_with_masks(
    root: str | Path, classes: Sequence[str] = ("left", "right"), n_train: int = 8, n_val: int = 6,
    size: int = 32, seed: int = 0,
) -> Path:
    """:func:`make_imagefolder`, plus an object mask per val image at
    ``root/masks/val/<class>/<stem>.png``: the pixels where the image's blob is above half its
    peak (white = object), found from the blob that :func:`pattern_image` drew."""
    root = make_imagefolder(root, classes, n_train=n_train, n_val=n_val, size=size, seed=seed)
    for ci, name in enumerate(classes):
        for img_path in sorted((root / "val" / name).glob("*.png")):
            arr = np.asarray(Image.open(img_path).convert("RGB")).astype(np.float64)
            # the blob is tinted in channel ci % 3: its excess over the other channels
            excess = arr[..., ci % 3] - np.delete(arr, ci % 3, axis=2).mean(axis=2)
            mask = excess > 0.5 * excess.max()
            out = root / "masks" / "val" / name / f"{img_path.stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(out)
    return root
