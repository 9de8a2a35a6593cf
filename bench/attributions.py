"""The cost of the pixel attributions per image and method, against a plain forward + backward.

One command, one process::

    python bench/attributions.py --threads 2                 # 224 px and the demo's 32 px
    python bench/attributions.py --sizes 224 --lime          # + Captum's Lime / KernelShap, one image

For each input size (ResNet-18, random weights seeded here: nothing is downloaded; at 32 px the
small-input stem the demo trains) and each method of ``compute/methods/attributions.py`` (Integrated
Gradients from a black and a blurred baseline, SmoothGrad; ``--ig-steps`` / ``--smoothgrad-samples``
as the run's defaults), the seconds per image of :meth:`Attributor.maps` - Captum's attribution and
the reduction to the stored map - are timed over ``--images`` images, interleaved with the baseline
in rounds (a load spike on a shared machine hits all rows alike), best round kept. The baseline is
what one gradient map costs: a forward + backward of one image to its input. The ratio is each
method's time over the baseline's: about ``ig_steps`` passes batched into one for IG, so it is below
``ig_steps`` when batching pays.

``--lime`` adds Captum's ``Lime`` and ``KernelShap`` on one image, over a 7 x 7 grid of square
superpixels (the feature mask; SLIC would need scikit-image, a test-only dependency here), with
``--lime-samples`` perturbed forwards each (default 200): the numbers ``docs/METHODS.md`` uses to
say why they are not in the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.compute_vs_peers import describe  # noqa: E402
from xaidash.compute.methods.attributions import AttributionSettings, Attributor  # noqa: E402
from xaidash.compute.model.architectures import build_model  # noqa: E402
from xaidash.constants import (  # noqa: E402
    ATTRIBUTION_IG_STEPS,
    ATTRIBUTION_METHODS,
    ATTRIBUTION_SMOOTHGRAD_SAMPLES,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="224,32", help="input sizes, comma-separated (default 224,32)")
    p.add_argument("--images", type=int, default=2, help="images per timed round (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, best kept (default 3)")
    p.add_argument("--ig-steps", type=int, default=ATTRIBUTION_IG_STEPS)
    p.add_argument("--smoothgrad-samples", type=int, default=ATTRIBUTION_SMOOTHGRAD_SAMPLES)
    p.add_argument("--classes", type=int, default=4, help="classes of the head (default 4, the demo's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--lime", action="store_true", help="also Captum's Lime and KernelShap on one image")
    p.add_argument("--lime-samples", type=int, default=200, help="perturbed forwards of each (default 200)")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rounds(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Warm up each, then ``repeats`` interleaved rounds; each one's best time."""
    for fn in fns.values():
        fn()
        _sync(device)
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def plain_backward(model: torch.nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """One gradient map's cost: forward + backward of one image to its input."""
    xi = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xi)[0, target], xi)
    return grad


def bench_size(size: int, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", args.classes, input_size=size).model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    n = args.images
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    ids = [f"{i:016x}" for i in range(n)]
    with torch.no_grad():
        targets = model(x).argmax(1)
    s = AttributionSettings(ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples)
    fns: dict[str, Callable[[], object]] = {
        "forward+backward": lambda: [plain_backward(model, x[i : i + 1], int(targets[i])) for i in range(n)]}
    for m in ATTRIBUTION_METHODS:
        att = Attributor(model, AttributionSettings(methods=(m,), ig_steps=s.ig_steps,
                                                    smoothgrad_samples=s.smoothgrad_samples), MEAN, STD)
        fns[m] = lambda att=att: att.maps(x, targets, ids)
    best = best_rounds(fns, device, args.repeats)
    base = best["forward+backward"] / n
    print(f"\n{size} px, ResNet-18{' (small-input stem)' if size <= 64 else ''}, {n} images per round, "
          f"best of {args.repeats}; IG {s.ig_steps} points, SmoothGrad {s.smoothgrad_samples} samples")
    print(f"{'method':<18} {'s/img':>9} {'x fwd+bwd':>10}")
    for name, t in best.items():
        print(f"{name:<18} {t / n:>9.4f} {t / n / base:>10.1f}")
    total = sum(best[m] for m in ATTRIBUTION_METHODS) / n
    print(f"{'all three':<18} {total:>9.4f} {total / base:>10.1f}")


def bench_lime(args: argparse.Namespace, device: torch.device, size: int) -> None:
    from captum.attr import KernelShap, Lime

    torch.manual_seed(0)
    model = build_model("resnet18", args.classes, input_size=size).model.eval().to(device)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    cell = -(-size // 7)  # a 7 x 7 grid of square superpixels
    rows = torch.arange(size, device=device) // cell
    mask = (rows.view(-1, 1) * 7 + rows.view(1, -1)).expand(1, 3, size, size)
    target = int(model(x).argmax())
    base = best_rounds({"fb": lambda: plain_backward(model, x, target)}, device, args.repeats)["fb"]
    print(f"\nLIME / KernelSHAP, {size} px, one image, 49 superpixels, {args.lime_samples} samples each")
    for name, cls in (("lime", Lime), ("kernelshap", KernelShap)):
        explainer = cls(model)
        t0 = time.perf_counter()
        explainer.attribute(x, target=target, feature_mask=mask, n_samples=args.lime_samples,
                            perturbations_per_eval=50)
        _sync(device)
        t = time.perf_counter() - t0
        print(f"{name:<18} {t:>9.3f} s/img {t / base:>8.1f} x fwd+bwd")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}: {describe(device)}; torch threads {torch.get_num_threads()}, "
          f"load average {load:.1f} at start")
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    for size in sizes:
        bench_size(size, args, device)
    if args.lime:
        bench_lime(args, device, max(sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
