"""``xaidash train``: train or fine-tune a classifier and write one checkpoint file.

Only argparse/stdlib at import time (``xaidash --help`` must not import torch); the training
code is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys

from xaidash.compute.cli.args import (
    add_data_arguments,
    add_device_argument,
    add_loader_arguments,
    positive_int,
)
from xaidash.constants import ARCHITECTURES


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``xaidash train`` options on ``parser``."""
    add_data_arguments(parser)
    g = parser.add_argument_group("model")
    # No argparse choices= here: the model layer raises a UserError listing the valid names,
    # the same one-line message as every other bad input.
    g.add_argument("--model", required=True, metavar="ARCH",
                   help=f"architecture: {', '.join(ARCHITECTURES)}, or timm:NAME (any timm model)")
    g.add_argument("--model-args", metavar="JSON", default=None,
                   help="timm:NAME: keyword arguments of timm.create_model as a JSON object, e.g. "
                        "'{\"img_size\": 64, \"depth\": 2}'")
    g.add_argument("--weights", default="none", metavar="imagenet|none|PATH",
                   help="initial weights: imagenet (pretrained; efficientnet_lite0 works offline), none "
                        "(from scratch, default), or a state_dict / checkpoint file of the same architecture")
    g.add_argument("--input-size", type=positive_int, default=None, metavar="N",
                   help="square input side; default: the weights' (224) or, from scratch, the images' own "
                        "size. ResNets from scratch at <= 64 px use a CIFAR-style stem")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classification head (transfer learning)")
    g = parser.add_argument_group("training")
    g.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write (atomically)")
    g.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    g.add_argument("--lr", type=_positive_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    g.add_argument("--seed", type=int, default=0, help="random seed; CPU runs are deterministic (default 0)")
    add_loader_arguments(parser, batch_size=32, workers=None)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Train, print the validation report (stdout), return the exit code."""
    from xaidash.compute.model.train import TrainConfig, checkpoint_path_hint, train

    cfg = TrainConfig(
        data=args.data, model=args.model, out=args.out, weights=args.weights, data_root=args.data_root,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, freeze_backbone=args.freeze_backbone,
        input_size=args.input_size, seed=args.seed, workers=args.workers, device=args.device,
        limit_train=args.limit_train, limit_val=args.limit_val, model_args=args.model_args,
    )
    result = train(cfg)
    out = sys.stdout
    if result.accuracy is not None:
        counted = f"{result.n_val_evaluated} images"
        if result.n_val_skipped:  # say what the accuracy is measured over
            counted = (f"{result.n_val_evaluated} of {result.n_val_evaluated + result.n_val_skipped} images; "
                       f"{result.n_val_skipped} unreadable, skipped")
        print(f"validation accuracy: {result.accuracy:.4f} ({counted})", file=out)
    print(result.report.rstrip(), file=out)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable images ({result.n_train_skipped} train, "
              f"{result.n_val_skipped} val; reasons in the warnings above)", file=out)
    print(f"checkpoint: {result.checkpoint.path} (sha256 {result.checkpoint.sha256})", file=out)
    print(f"elapsed: {result.elapsed_s:.1f} s on {result.device}", file=out)
    print(checkpoint_path_hint(result.checkpoint.path or args.out), file=out)
    return 0
