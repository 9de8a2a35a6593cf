"""How much faster bf16 can make Score-CAM's masked forwards on this machine: the ceiling.

One command, one process::

    python bench/bf16_ceiling.py --threads 2
    python bench/bf16_ceiling.py --threads 2 --fp32-vs-peer 1.37   # + the bound on bf16 vs the peer

It measures, interleaved round by round (best of ``--rounds``):

* the peak of the matrix units: a square GEMM (``--gemm`` side) in fp32 and in bf16, GFLOP/s;
* the masked-forward model exactly as a run uses it (ResNet-18, random weights, ``--size`` px, a
  batch of ``--batch`` channels-last inputs): fp32 on the model itself, bf16 under autocast on
  :func:`xaidash.compute.pipeline.precision.masked_forward_model` (BatchNorm folded, channels-last weights).
  Its GFLOP/s count 2 FLOPs per multiply-add of every convolution and linear layer (forward hooks
  count them; pooling, ReLU and additions are not counted).

Score-CAM's cost is its masked forwards (cProfile: 49 of 52 s in ``conv2d``), so its bf16 speed-up
over fp32 is at most ``bf16 GEMM peak / fp32 forward`` even if the convolutions reached the GEMM
peak. ``--fp32-vs-peer R`` (Score-CAM fp32 / the faster peer, from ``compute_vs_peers.py``) turns
that into the bound on Score-CAM bf16 vs the peer: ``R x`` that ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaidash.compute.hostmem import tune_host_allocator
from xaidash.compute.pipeline.precision import masked_forward_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everything")
    p.add_argument("--size", type=int, default=224, help="input side in px (default 224)")
    p.add_argument("--batch", type=int, default=32, help="masked inputs per forward (default 32, as on CPU)")
    p.add_argument("--gemm", type=int, default=2048, help="side of the square GEMM (default 2048)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds; the best is kept")
    p.add_argument("--fp32-vs-peer", type=float, default=None,
                   help="Score-CAM fp32 / faster peer from compute_vs_peers.py, for the bound vs the peer")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    return p


def forward_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d and Linear in one forward of ``x``."""
    total = 0

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def best_of(rows: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for fn in rows.values():
        fn()  # warm-up (oneDNN picks and caches its kernels on the first call)
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(rounds):
        for name, fn in rows.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"allocator": tune_host_allocator()}
    torch.manual_seed(0)
    n = args.gemm
    a, b = torch.randn(n, n), torch.randn(n, n)
    ab, bb = a.bfloat16(), b.bfloat16()
    model = torchvision.models.resnet18().eval().to(memory_format=torch.channels_last)
    bulk = masked_forward_model(model, "bf16")
    x = torch.rand(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    macs = forward_macs(model, x)

    def fp32_forward() -> object:
        with torch.inference_mode():
            return model(x)

    def bf16_forward() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return bulk(x)

    t = best_of({"gemm_fp32": lambda: a @ b, "gemm_bf16": lambda: ab @ bb,
                 "forward_fp32": fp32_forward, "forward_bf16": bf16_forward}, args.rounds)
    gemm_flop = 2 * n**3
    fwd_flop = 2 * macs
    flop = {"gemm_fp32": gemm_flop, "gemm_bf16": gemm_flop,
            "forward_fp32": fwd_flop, "forward_bf16": fwd_flop}
    gf = {k: flop[k] / t[k] / 1e9 for k in flop}
    speedup = t["forward_fp32"] / t["forward_bf16"]
    ceiling = gf["gemm_bf16"] / gf["forward_fp32"]
    print(f"threads={torch.get_num_threads()} size={args.size} batch={args.batch} torch={torch.__version__} "
          f"settings={settings}")
    print(f"ResNet-18 forward: {macs / args.batch / 1e9:.3f} GMAC per image (conv + linear)")
    print(f"{'row':38s} {'GFLOP/s':>9s} {'ms/img':>8s}")
    print(f"{f'GEMM fp32 {n}x{n}':38s} {gf['gemm_fp32']:9.0f}")
    print(f"{f'GEMM bf16 {n}x{n}':38s} {gf['gemm_bf16']:9.0f}")
    print(f"{'masked forward fp32 (the model)':38s} {gf['forward_fp32']:9.0f} "
          f"{t['forward_fp32'] * 1e3 / args.batch:8.2f}")
    print(f"{'masked forward bf16 (folded copy)':38s} {gf['forward_bf16']:9.0f} "
          f"{t['forward_bf16'] * 1e3 / args.batch:8.2f}")
    # torch's fp32 GEMM is not the fp32 peak here (oneDNN's fp32 convolutions beat it), so the
    # ceiling below divides by the fp32 forward itself: what a bf16 run is compared with
    print(f"bf16 forward runs at {gf['forward_bf16'] / gf['gemm_bf16']:.0%} of the bf16 GEMM peak")
    print(f"bf16 / fp32 masked forward = {speedup:.2f}x; "
          f"ceiling (bf16 GEMM peak / fp32 forward) = {ceiling:.2f}x")
    result: dict[str, object] = {"gflops": gf, "seconds": t, "macs_per_image": macs / args.batch,
                                 "bf16_speedup": speedup, "bf16_ceiling": ceiling, "settings": settings}
    if args.fp32_vs_peer:
        r = args.fp32_vs_peer
        print(f"Score-CAM bf16 / faster peer: about {r * speedup:.2f}x now, at most {r * ceiling:.2f}x "
              f"if every convolution ran at the bf16 GEMM peak (Score-CAM fp32 / peer = {r:.2f})")
        result.update(fp32_vs_peer=r, bf16_vs_peer_now=r * speedup, bf16_vs_peer_ceiling=r * ceiling)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
