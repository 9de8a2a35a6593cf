"""Command-line arguments shared by ``xaidash train`` and ``xaidash compute``.

Light imports only (argparse/stdlib): this module is imported when ``xaidash --help`` builds
its parser. torch is imported inside :func:`resolve_device`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from xaidash.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"  # argparse names the type in its error line
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


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


def add_loader_arguments(parser: argparse.ArgumentParser, batch_size: int, workers: int | None) -> None:
    """``--batch-size N`` and ``--workers N`` (image-decoding processes), with each command's defaults.

    The values are parsed as integers only: 0 and negatives reach the command's own validation,
    which names the option (the same message for the CLI and for Python callers)."""
    g = parser.add_argument_group("loading")
    g.add_argument("--batch-size", type=int, default=batch_size, metavar="N",
                   help=f"images per batch (default {batch_size})")
    default = "cores - 1, at most 4" if workers is None else str(workers)
    g.add_argument("--workers", type=int, default=workers, metavar="N",
                   help=f"image decoding worker processes (default {default}; 0 = in the main process)")


def device_name(text: str) -> str:
    """argparse type: auto | cpu | cuda | cuda:N."""
    name = text.strip().lower()
    if name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"invalid device {text!r}; valid devices: auto, cpu, cuda, cuda:N")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (auto = cuda when available, else cpu)."""
    parser.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda[:N]",
                        help="where to run: auto (cuda if available), cpu, cuda or cuda:N (default: auto)")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; UserError when cuda is asked for but unavailable."""
    import torch

    try:
        name = device_name(name)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available to PyTorch here; use --device cpu")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)
