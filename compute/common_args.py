"""Command-line arguments shared by ``xaidash train`` and ``xaidash compute``.

Light imports only (argparse/stdlib): this module is imported when ``xaidash --help`` builds
its parser. torch is imported inside :func:`resolve_device`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from xaidash.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data SPEC`` (required), ``--data-root DIR``, ``--limit-train N``, ``--limit-val N``."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data", required=True, metavar="SPEC",
        help="dataset: imagefolder:DIR (DIR/train/<class>/*, DIR/val/<class>/*), folder:DIR "
             "(unlabeled), fashion-mnist[:class,...], cifar10[:class,...] (e.g. cifar10:cat,dog,horse)",
    )
    g.add_argument(
        "--data-root", metavar="DIR", default=None,
        help="where fashion-mnist / cifar10 files are (or are downloaded to); "
             "default $XAIDASH_DATA, then ~/.cache/xaidash",
    )
    g.add_argument("--limit-train", type=positive_int, metavar="N", default=None,
                   help="use at most N training images (stratified by class, deterministic)")
    g.add_argument("--limit-val", type=positive_int, metavar="N", default=None,
                   help="use at most N validation images (stratified by class, deterministic)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (auto = cuda when available, else cpu)."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to run: auto (cuda if available), cpu or cuda (default: auto)")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; UserError when cuda is asked for but unavailable."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; valid devices: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to PyTorch here; use --device cpu")
    return torch.device(name)
