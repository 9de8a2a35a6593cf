"""Throughput of xaidash's CAM engine against torch-cam and pytorch-grad-cam.

One command, one process (ratios are taken within the same run, so a noisy shared machine affects
all contenders alike)::

    python bench/compute_vs_peers.py --images 32 --threads 2 --device auto

Same torchvision ResNet-18 (random weights, seeded, eval mode, 224x224, target layer ``layer4``)
for everybody. Rows:

(a) xaidash: predictions + embeddings + CAM + Grad-CAM + Grad-CAM++, one ``CamEngine.forward``
    per batch;
(b) torch-cam: ``CAM``, ``GradCAM``, ``GradCAMpp`` run one after another (each its own forward);
(c) pytorch-grad-cam: ``GradCAM`` + ``GradCAMPlusPlus``;
(d) a plain forward pass under ``torch.inference_mode()`` (the floor);
and Score-CAM (512 masked forwards per image, so fewer images) for xaidash and both peers.
Each row gets a warm-up run, then the best of ``--repeats`` timed runs, interleaved across rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaidash.compute.cams import CamEngine

GRADIENT = ("cam", "gradcam", "gradcampp")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32, help="images for the gradient methods (default 32)")
    p.add_argument("--batch", type=int, default=32, help="batch size for the gradient methods (default 32)")
    p.add_argument("--scorecam-images", type=int, default=2, help="images for Score-CAM (default 2)")
    p.add_argument("--scorecam-batch", type=int, default=64,
                   help="xaidash Score-CAM masked-input batch size (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everything")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best is kept")
    p.add_argument("--no-scorecam", action="store_true", help="skip the Score-CAM rows")
    p.add_argument("--no-peer-scorecam", action="store_true", help="time only xaidash's Score-CAM")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Warm up every contender, then run ``repeats`` rounds in which each runs once, interleaved
    (a load spike on a shared machine then hits all of them alike); keep each one's best time."""
    for fn in fns.values():
        fn()
        _sync(device)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(device)
    gen = torch.Generator().manual_seed(1)
    x_all = torch.randn(args.images, 3, 224, 224, generator=gen).to(device)
    batches = list(x_all.split(args.batch))
    n = args.images
    rows: dict[str, float] = {}
    print(f"device={device} threads={torch.get_num_threads()} images={n} batch={args.batch} "
          f"torch={torch.__version__}", flush=True)

    def plain() -> None:
        with torch.inference_mode():
            for xb in batches:
                model(xb).softmax(1)

    def ours() -> None:
        with CamEngine(model, "layer4", "fc") as eng:
            for xb in batches:
                res = eng.forward(xb, GRADIENT)
                res.logits.softmax(1)

    fns: dict[str, Callable[[], object]] = {
        "(a) xaidash pred+emb+CAM+GradCAM+GradCAM++": ours,
        "(d) plain forward (inference_mode)": plain,
    }

    have_tc = have_pgc = True
    try:
        from torchcam.methods import CAM as TcCAM
        from torchcam.methods import GradCAM as TcGradCAM
        from torchcam.methods import GradCAMpp as TcGradCAMpp
    except ImportError:
        have_tc = False
    try:
        from pytorch_grad_cam import GradCAM as PgGradCAM
        from pytorch_grad_cam import GradCAMPlusPlus as PgGradCAMpp
    except ImportError:
        have_pgc = False

    if have_tc:
        def torchcam_three() -> None:
            for xb in batches:
                with TcCAM(model, "layer4", "fc") as ex:
                    with torch.inference_mode():
                        out = model(xb)
                    ex(class_idx=out.argmax(1).tolist())
                for cls in (TcGradCAM, TcGradCAMpp):
                    with cls(model, "layer4") as ex:
                        out = model(xb)
                        ex(class_idx=out.argmax(1).tolist(), scores=out)

        fns["(b) torch-cam CAM+GradCAM+GradCAMpp"] = torchcam_three
    if have_pgc:
        def pgc_two() -> None:
            for cls in (PgGradCAM, PgGradCAMpp):
                cam = cls(model, [model.layer4])
                for xb in batches:
                    cam(xb, None)  # targets=None: the predicted class
                model.zero_grad(set_to_none=True)

        fns["(c) pytorch-grad-cam GradCAM+GradCAM++"] = pgc_two
    rows = {k: n / t for k, t in timed_rounds(fns, device, args.repeats).items()}

    sc: dict[str, float] = {}
    if not args.no_scorecam:
        m = args.scorecam_images
        xs = x_all[:m]
        with CamEngine(model, "layer4", "fc") as eng:
            res = eng.forward(xs, ())
        acts, pred = res.activations, res.targets["pred"]

        def ours_sc() -> None:
            with CamEngine(model, "layer4", "fc") as eng:
                eng.scorecam(xs, acts, pred, batch_size=args.scorecam_batch)

        # Score-CAM is long: one warm-up forward at the masked batch size, then one timed run.
        def warm(bs: int) -> None:
            with torch.inference_mode():
                model(xs[:1].expand(bs, -1, -1, -1).contiguous())

        def once(fn: Callable[[], object], bs: int) -> float:
            warm(bs)
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            return time.perf_counter() - t0

        sc["xaidash Score-CAM"] = m / once(ours_sc, args.scorecam_batch)
        if not args.no_peer_scorecam and have_tc:
            from torchcam.methods import ScoreCAM as TcScoreCAM

            def tc_sc() -> None:
                with TcScoreCAM(model, "layer4") as ex:  # default batch_size=32
                    with torch.inference_mode():
                        out = model(xs)
                    ex(class_idx=out.argmax(1).tolist())

            sc["torch-cam ScoreCAM"] = m / once(tc_sc, 32)
        if not args.no_peer_scorecam and have_pgc:
            import tqdm
            from pytorch_grad_cam import ScoreCAM as PgScoreCAM

            def pgc_sc() -> None:
                cam = PgScoreCAM(model, [model.layer4])  # default batch_size=16
                cam(xs, None)

            orig = tqdm.tqdm
            tqdm.tqdm = lambda it, *a, **k: it  # silence its per-batch progress bars
            try:
                import pytorch_grad_cam.score_cam as pgc_mod

                pgc_mod.tqdm.tqdm = tqdm.tqdm
                sc["pytorch-grad-cam ScoreCAM"] = m / once(pgc_sc, 16)
            finally:
                tqdm.tqdm = orig
                pgc_mod.tqdm.tqdm = orig

    width = max(len(k) for k in [*rows, *sc])
    print(f"\n{'row':<{width}}  images/s")
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:9.2f}")
    for k, v in sc.items():
        print(f"{k:<{width}}  {v:9.3f}")
    a = rows["(a) xaidash pred+emb+CAM+GradCAM+GradCAM++"]
    d = rows["(d) plain forward (inference_mode)"]
    print("\nratios")
    print(f"(a)/(d) = {a / d:.2f}   (target >= 0.8)")
    if "(b) torch-cam CAM+GradCAM+GradCAMpp" in rows:
        print(f"(a)/(b) = {a / rows['(b) torch-cam CAM+GradCAM+GradCAMpp']:.2f}   (target >= 2.5)")
    if "(c) pytorch-grad-cam GradCAM+GradCAM++" in rows:
        print(f"(a)/(c) = {a / rows['(c) pytorch-grad-cam GradCAM+GradCAM++']:.2f}")
    peers = [v for k, v in sc.items() if not k.startswith("xaidash")]
    if peers:
        ratio = sc["xaidash Score-CAM"] / max(peers)
        print(f"Score-CAM xaidash / fastest peer = {ratio:.2f}   (target >= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
