"""Command-line arguments shared by ``xaidash train`` and ``xaidash compute``.

Light imports only (argparse/stdlib): this module is imported when ``xaidash --help`` builds
its parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from xaidash.compute.device import device_name


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


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (auto = cuda when available, else cpu)."""
    parser.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda[:N]",
                        help="where to run: auto (cuda if available), cpu, cuda or cuda:N (default: auto)")
