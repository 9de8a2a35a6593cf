"""``xaidash demo``: train, compute and serve a small real example, offline.

The demo uses the four upper-body Fashion-MNIST classes (T-shirt/top, Pullover, Coat, Shirt).
They are the classes a classifier confuses most on that dataset (Shirt is the worst class of
every published Fashion-MNIST baseline), so even a tiny model leaves real errors to explain.
A ResNet-18 with the small-input stem is trained on a stratified subset, then one compute with
every method (``constants.METHODS``) writes a run into ``<workdir>/store`` and the dashboard is served
over it.

Running the demo again reuses the checkpoint and adds a run. Sizes are chosen so the whole
demo, training and Score-CAM included, finishes within a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from xaidash.constants import METHODS
from xaidash.errors import UserError

log = logging.getLogger(__name__)

DEMO_DATA = "fashion-mnist:T-shirt/top,Pullover,Coat,Shirt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        default="xaidash-demo",
        help="where the checkpoint and the store go (default: %(default)s)",
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="stop after computing; do not start the server"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind the dashboard (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8050, help="port of the dashboard (default: %(default)s)")
    parser.add_argument(
        "--dev", action="store_true", help="serve with Dash's development server instead of waitress"
    )
    parser.add_argument(
        "--data-root", default=None, help="where Fashion-MNIST lives if not in the Debian package"
    )
    parser.add_argument(
        "--train-images", type=int, default=2000, help="training images (default: %(default)s)"
    )
    parser.add_argument(
        "--val-images", type=int, default=120, help="validation images (default: %(default)s)"
    )
    parser.add_argument(
        "--twin-pool",
        type=int,
        default=600,
        help="training images embedded as twin candidates (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default: %(default)s)")
    parser.add_argument(
        "--scorecam-channels",
        type=int,
        default=0,
        help="Score-CAM over the top-N of 512 channels only (labelled approximate in the store and the "
        "dashboard); 0 = every channel (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="Score-CAM's masked forwards and faithfulness in bf16 (about 5x faster on a CPU with AMX, "
        "2x with AVX-512-BF16, several times slower without either; the deviation from fp32 is "
        "measured and shown) or fp32 (about 3 s per image for Score-CAM on 2 CPU cores); auto: bf16 "
        "where the CPU or GPU has a bf16 unit, else fp32 (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-images", type=int, default=4,
        help="bf16: images whose Score-CAM is also computed in fp32 to measure the deviation; 4 here "
        "(compute's default is 16) because exact fp32 Score-CAM costs ~3 s per image on 2 CPU cores "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--faithfulness-steps", type=int, default=8, help="deletion/insertion steps (default: %(default)s)"
    )
    parser.add_argument(
        "--sanity-images", type=int, default=4,
        help="images of the model-parameter randomisation test; 4 here (compute's default is 64) because "
        "it recomputes every map, Score-CAM included, at each of the 6 randomisation steps: about 6 s "
        "per image on 2 CPU cores (default: %(default)s)",
    )
    parser.add_argument(
        "--attribution-images", type=int, default=4,
        help="images with pixel attributions (Integrated Gradients from a black and a blurred baseline, "
        "SmoothGrad); 4 here (compute's default is 64) with 16 IG points and 8 SmoothGrad samples "
        "(compute's: 32 and 16) and no sanity cascade of their own (6 more passes of all three per image), "
        "sized for the 5-minute demo: about 10 s on 2 CPU cores (docs/PERFORMANCE.md); 0 = none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--road-images", type=int, default=48,
        help="ROAD on a stratified sample of N val images; 0 = all of them (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--retrain", action="store_true", help="train a new checkpoint even if one exists")


def _cli(argv: list[str]) -> None:
    # Reuse the real sub-commands so the demo exercises exactly what a user runs.
    from xaidash.cli import main

    code = main(argv)
    if code != 0:
        raise UserError(f"demo step failed: xaidash {' '.join(argv)}", exit_code=code)


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "fashion-resnet18.pt"
    store = workdir / "store"
    data_root = ["--data-root", args.data_root] if args.data_root else []
    started = time.perf_counter()

    if ckpt.exists() and not args.retrain:
        log.info("demo: reusing checkpoint %s (pass --retrain to train a new one)", ckpt)
    else:
        log.info(
            "demo: training ResNet-18 on %s (%d images, %d epochs)", DEMO_DATA, args.train_images, args.epochs
        )
        _cli(
            [
                "train",
                "--data",
                DEMO_DATA,
                *data_root,
                "--model",
                "resnet18",
                "--weights",
                "none",
                "--input-size",
                "32",
                "--limit-train",
                str(args.train_images),
                "--limit-val",
                str(args.val_images),
                "--epochs",
                str(args.epochs),
                "--lr",
                "1e-3",
                "--seed",
                "0",
                "--device",
                args.device,
                "--out",
                str(ckpt),
            ]
        )
    trained = time.perf_counter()

    scorecam = ["--scorecam-max-channels", str(args.scorecam_channels)] if args.scorecam_channels > 0 else []
    log.info("demo: computing predictions, %d CAMs, twins and faithfulness into %s", len(METHODS), store)
    _cli(
        [
            "compute",
            "--data",
            DEMO_DATA,
            *data_root,
            "--checkpoint",
            str(ckpt),
            "--store",
            str(store),
            "--limit-val",
            str(args.val_images),
            "--limit-train",
            str(args.twin_pool),
            "--methods",
            ",".join(METHODS),
            "--explain",
            "pred,true",
            "--faithfulness-steps",
            str(args.faithfulness_steps),
            *scorecam,
            "--precision",
            _precision(args.precision, args.device),
            "--calibration-images",
            str(args.calibration_images),
            "--sanity-images",
            str(args.sanity_images),
            "--attribution-images",
            str(args.attribution_images),
            "--ig-steps",
            "16",
            "--smoothgrad-samples",
            "8",
            "--attribution-sanity-images",
            "0",
            *(["--road-images", str(args.road_images)] if args.road_images > 0 else []),
            "--device",
            args.device,
            "--new-run",
        ]
    )
    done = time.perf_counter()
    log.info(
        "demo: train %.0f s, compute %.0f s, total %.0f s",
        trained - started,
        done - trained,
        done - started,
    )
    if args.no_serve:
        print(f"store ready: {store}\nopen it with: xaidash serve --store {store}")
        return 0
    _cli(serve_argv(store, args.host, args.port, args.dev))
    return 0


def _precision(asked: str, device: str) -> str:
    """``auto``: bf16 where this machine has a bf16 unit (AMX, AVX-512-BF16, a GPU's), else fp32,
    where emulated bf16 would make the demo several times slower."""
    if asked != "auto":
        return asked
    import torch

    from xaidash.compute.pipeline.precision import bf16_hardware

    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    hw = bf16_hardware(torch.device("cuda" if cuda else "cpu"))
    log.info("demo: %s", f"bf16 on {hw}" if hw else "fp32 (no bf16 unit on this machine)")
    return "bf16" if hw else "fp32"


def serve_argv(store: Path, host: str, port: int, dev: bool = False) -> list[str]:
    """The demo's last step: ``xaidash serve`` over its store, on waitress unless ``dev``."""
    return ["serve", "--store", str(store), "--host", host, "--port", str(port), *(["--dev"] if dev else [])]
