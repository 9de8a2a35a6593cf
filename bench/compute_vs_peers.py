"""Throughput of xaidash's CAM engine against torch-cam and pytorch-grad-cam.

One command, one process (ratios are taken within the same run, so a noisy shared machine affects
all contenders alike)::

    python bench/compute_vs_peers.py --threads 2                # CPU, the rows and targets below
    python bench/compute_vs_peers.py --threads 2 --prototypes   # + faster masked-forward models
    python bench/compute_vs_peers.py --device cuda --images 256 --batch 64 \\
        --scorecam-images 16 --scorecam-batch 256 --scorecam-repeats 3
    python bench/compute_vs_peers.py --compile-only             # torch.compile vs eager (slow)

Same torchvision ResNet-18 (random weights, seeded, eval mode, ``--size`` px, default 224, target
layer ``layer4``) for everybody. Rows:

(a) xaidash: predictions + embeddings + CAM + Grad-CAM + Grad-CAM++, one ``CamEngine.forward``
    per batch;
(b) torch-cam: ``CAM``, ``GradCAM``, ``GradCAMpp`` run one after another (each its own forward);
(c) pytorch-grad-cam: ``GradCAM`` + ``GradCAMPlusPlus``;
(d) a plain forward pass under ``torch.inference_mode()`` (the floor);
(e) xaidash: (a) plus LayerCAM + XGradCAM + HiResCAM + EigenCAM ("trio-plus-four"), still one
    ``CamEngine.forward`` per batch (one forward, one backward to ``layer4``, one batched SVD);
(f) each new method alone, xaidash (``CamEngine.forward(x, (m,))``: predictions + that map) against
    pytorch-grad-cam's class of the same name (``cam(x, None)``: the predicted class; it also
    upsamples every map to the input size, as it always does);

and Score-CAM (512 masked forwards per image, so fewer images): xaidash in fp32, xaidash in bf16
(``torch.autocast(device_type, dtype=torch.bfloat16)`` around ``CamEngine.scorecam`` only: the
masked forwards; the activations and targets come from the fp32 forward), torch-cam and
pytorch-grad-cam (their defaults, fp32). The bf16 row reports max |Δmap| against xaidash's fp32
maps of the same images.

Targets: (a)/(d) >= 0.95, (e)/(d) >= 0.9 (issue 22), Score-CAM fp32 / faster peer >= 1.2, Score-CAM
bf16 / faster peer >= 3. ``--no-new-methods`` leaves out rows (e) and (f).

The gradient rows get a warm-up run, then the best of ``--repeats`` timed runs, interleaved.
The Score-CAM rows get one warm-up forward at their masked batch size each, then the best of
``--scorecam-repeats`` timed runs, interleaved. On CUDA, TF32 is switched off (fp32 means fp32).

``--compile`` adds the torch.compile measurement of the masked-forward model: a ResNet-18
forward over a Score-CAM-sized batch of masked inputs (channels-last on CPU, as the engine runs
it), eager vs ``torch.compile`` in fp32 and bf16 autocast: compile time (first call), the
recompile for a second batch size (Score-CAM's last, shorter chunk), steady-state ms per batch,
and the largest logit difference to eager. ``--compile-only`` runs just that.

``--prototypes`` adds Score-CAM rows with other masked-forward models handed to the engine's
``ScoreCAM`` (the engine's code unchanged): BatchNorm folded into the convolutions (torch.fx
``fuse``), and ``torch.compile`` with Inductor freezing, each in fp32 and bf16 (compile time is
reported apart: a whole untimed run first).

``--json PATH`` also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xaidash.compute.hostmem import tune_host_allocator
from xaidash.compute.methods.cams import CamEngine
from xaidash.compute.pipeline.precision import masked_forward_model

GRADIENT = ("cam", "gradcam", "gradcampp")
#: issue 22's methods and pytorch-grad-cam's class for each
NEW_METHODS = {"layercam": "LayerCAM", "xgradcam": "XGradCAM", "hirescam": "HiResCAM", "eigencam": "EigenCAM"}
EXTENDED = (*GRADIENT, *NEW_METHODS)
ROW_E = "(e) xaidash trio+LayerCAM+XGradCAM+HiResCAM+EigenCAM"
ROW_A = "(a) xaidash pred+emb+CAM+GradCAM+GradCAM++"
ROW_D = "(d) plain forward (inference_mode)"
ROW_B = "(b) torch-cam CAM+GradCAM+GradCAMpp"
ROW_C = "(c) pytorch-grad-cam GradCAM+GradCAM++"
SC_FP32 = "xaidash Score-CAM fp32"
SC_BF16 = "xaidash Score-CAM bf16 (masked forwards)"
SC_TC = "torch-cam ScoreCAM"
SC_PGC = "pytorch-grad-cam ScoreCAM"
TARGETS = {"trio": 0.95, "extended": 0.9, "scorecam_fp32": 1.2, "scorecam_bf16": 3.0}


def row_alone(method: str) -> str:
    return f"(f) xaidash {NEW_METHODS[method]} alone"


def row_pgc(method: str) -> str:
    return f"(f) pytorch-grad-cam {NEW_METHODS[method]}"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32, help="images for the gradient methods (default 32)")
    p.add_argument("--batch", type=int, default=32, help="batch size for the gradient methods (default 32)")
    p.add_argument("--size", type=int, default=224, help="input side in px (default 224)")
    p.add_argument("--scorecam-images", type=int, default=1, help="images for Score-CAM (default 1)")
    p.add_argument("--scorecam-batch", type=int, default=32,
                   help="xaidash Score-CAM masked-input batch size (default 32, the fastest on the dev CPU)")
    p.add_argument("--scorecam-repeats", type=int, default=3,
                   help="timed Score-CAM runs per row, interleaved; the best is kept (default 3)")
    p.add_argument("--prototypes", action="store_true",
                   help="also time Score-CAM with faster masked-forward models (BN folded, torch.compile)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everything")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs per gradient row, interleaved; the best is kept (default 5)")
    p.add_argument("--no-scorecam", action="store_true", help="skip the Score-CAM rows")
    p.add_argument("--no-new-methods", action="store_true",
                   help="skip rows (e) and (f): issue 22's LayerCAM, XGradCAM, HiResCAM, EigenCAM")
    p.add_argument("--no-peer-scorecam", action="store_true", help="time only xaidash's Score-CAM")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 Score-CAM row")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on the masked forwards")
    p.add_argument("--compile-only", action="store_true", help="only the torch.compile measurement")
    p.add_argument("--compile-iters", type=int, default=8,
                   help="steady-state eager/compiled batch pairs per compile row (default 8)")
    p.add_argument("--compile-variants", default="default,freezing",
                   help="comma-separated: default (torch.compile as is), freezing (Inductor freezing)")
    p.add_argument("--allocator", default="tuned", choices=("tuned", "plain"),
                   help="tuned (default): glibc's thresholds raised as `xaidash compute` does "
                   "(compute/hostmem.py), for every contender; plain: glibc's defaults")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Warm up every contender, then run ``repeats`` rounds in which each runs once, interleaved
    (a load spike on a shared machine then hits all of them alike); each one's times."""
    for fn in fns.values():
        fn()
        _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of speed(a) / speed(b) within the same round."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b], strict=True))


def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def pick_device(name: str) -> torch.device | None:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        return None
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        tf32 = f"matmul={torch.backends.cuda.matmul.allow_tf32} cudnn={torch.backends.cudnn.allow_tf32}"
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}), tf32 {tf32}"
    cap = torch.backends.cpu.get_cpu_capability()
    flags = ""
    with contextlib.suppress(OSError):
        words = set(Path("/proc/cpuinfo").read_text().split())
        flags = " ".join(f for f in ("amx_bf16", "avx512_bf16") if f in words) or "no bf16 flags"
    return f"CPU capability {cap}, {flags}"


# --------------------------------------------------------------------------------------------
# the gradient trio


def gradient_rows(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device,
                  repeats: int, new_methods: bool = True) -> tuple[dict[str, float], dict[str, list[float]]]:
    def plain() -> None:
        with torch.inference_mode():
            for xb in batches:
                model(xb).softmax(1)

    def ours() -> None:
        with CamEngine(model, "layer4", "fc") as eng:
            for xb in batches:
                res = eng.forward(xb, GRADIENT)
                res.logits.softmax(1)

    fns: dict[str, Callable[[], object]] = {ROW_A: ours, ROW_D: plain}
    if new_methods:
        fns.update(new_method_rows(model, batches))
    try:
        from torchcam.methods import CAM as TcCAM
        from torchcam.methods import GradCAM as TcGradCAM
        from torchcam.methods import GradCAMpp as TcGradCAMpp

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

        fns[ROW_B] = torchcam_three
    except ImportError:
        print("torch-cam is not installed: row (b) skipped")
    try:
        from pytorch_grad_cam import GradCAM as PgGradCAM
        from pytorch_grad_cam import GradCAMPlusPlus as PgGradCAMpp

        def pgc_two() -> None:
            for cls in (PgGradCAM, PgGradCAMpp):
                cam = cls(model, [model.layer4])
                for xb in batches:
                    cam(xb, None)  # targets=None: the predicted class
            model.zero_grad(set_to_none=True)

        fns[ROW_C] = pgc_two
    except ImportError:
        print("pytorch-grad-cam is not installed: row (c) skipped")
    n = sum(len(xb) for xb in batches)
    times = timed_rounds(fns, device, repeats)
    return {k: n / min(t) for k, t in times.items()}, times


def new_method_rows(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """Rows (e) and (f): the extended one-pass set, and each new method alone against its peer."""
    def engine_run(methods: tuple[str, ...]) -> Callable[[], object]:
        def run() -> None:
            with CamEngine(model, "layer4", "fc") as eng:
                for xb in batches:
                    eng.forward(xb, methods).logits.softmax(1)
        return run

    fns: dict[str, Callable[[], object]] = {ROW_E: engine_run(EXTENDED)}
    try:
        import pytorch_grad_cam as pgc
    except ImportError:
        print("pytorch-grad-cam is not installed: the peer rows (f) skipped")
        pgc = None
    def peer_run(cls: Any) -> Callable[[], object]:
        def run() -> None:
            cam = cls(model, [model.layer4])
            for xb in batches:
                cam(xb, None)  # targets=None: the predicted class
            model.zero_grad(set_to_none=True)
        return run

    for m, cls_name in NEW_METHODS.items():
        fns[row_alone(m)] = engine_run((m,))
        if pgc is not None:
            fns[row_pgc(m)] = peer_run(getattr(pgc, cls_name))
    return fns


# --------------------------------------------------------------------------------------------
# Score-CAM


@contextlib.contextmanager
def _quiet_pgc_tqdm() -> Any:
    """pytorch-grad-cam's Score-CAM draws a progress bar per batch; silence it while timing."""
    import pytorch_grad_cam.score_cam as pgc_mod

    orig = pgc_mod.tqdm.tqdm
    pgc_mod.tqdm.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        pgc_mod.tqdm.tqdm = orig


def scorecam_rows(model: torch.nn.Module, xs: torch.Tensor, device: torch.device,
                  args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    """images/s per Score-CAM contender, and the bf16 deviation / engine statistics."""
    m = xs.shape[0]
    with CamEngine(model, "layer4", "fc") as eng:
        res = eng.forward(xs, ())
    acts, pred = res.activations, res.targets["pred"]
    maps: dict[str, torch.Tensor] = {}
    stats: dict[str, Any] = {}

    def ours(bf16: bool) -> Callable[[], object]:
        # as `xaidash compute` runs them: bf16 masked forwards on the BN-folded channels-last copy
        bulk = masked_forward_model(model, "bf16" if bf16 else "fp32")

        def run() -> None:
            with CamEngine(model, "layer4", "fc") as eng:
                ctx = bf16_autocast(device) if bf16 else contextlib.nullcontext()
                with ctx:
                    out = eng.scorecam(xs, acts, pred, batch_size=args.scorecam_batch, masked_model=bulk)
                maps[SC_BF16 if bf16 else SC_FP32] = out.float().cpu()
                s = eng.last_scorecam_stats
                stats.update(channels=s.channels, constant_skipped=s.constant_skipped,
                             duplicates=s.duplicates, forwards=s.forwards)
        return run

    # name -> (function, masked batch size for its warm-up forward, bf16 warm-up)
    contenders: dict[str, tuple[Callable[[], object], int, bool]] = {
        SC_FP32: (ours(False), args.scorecam_batch, False)}
    if not args.no_bf16:
        contenders[SC_BF16] = (ours(True), args.scorecam_batch, True)
    first_run: dict[str, float] = {}
    if args.prototypes:
        for name, (proto, bf16) in prototype_models(model, device, args.no_bf16).items():
            fn = prototype_run(proto, bf16, name, xs, acts, pred, device, args.scorecam_batch, maps)
            t0 = time.perf_counter()
            fn()  # a whole untimed run: torch.compile compiles every batch shape it will see
            _sync(device)
            first_run[name] = time.perf_counter() - t0
            contenders[name] = (fn, args.scorecam_batch, bf16)
        import torch._inductor.config as inductor_config

        inductor_config.freezing = False  # every compiled copy has compiled its shapes
    peer_ctx: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not args.no_peer_scorecam:
        try:
            from torchcam.methods import ScoreCAM as TcScoreCAM

            def tc_sc() -> None:
                with TcScoreCAM(model, "layer4") as ex:  # default batch_size=32
                    with torch.inference_mode():
                        out = model(xs)
                    ex(class_idx=out.argmax(1).tolist())

            contenders[SC_TC] = (tc_sc, 32, False)
        except ImportError:
            pass
        try:
            from pytorch_grad_cam import ScoreCAM as PgScoreCAM

            def pgc_sc() -> None:
                cam = PgScoreCAM(model, [model.layer4])  # default batch_size=16
                cam(xs, None)

            contenders[SC_PGC] = (pgc_sc, 16, False)
            peer_ctx = _quiet_pgc_tqdm()
        except ImportError:
            pass

    def warm(bs: int, bf16: bool) -> None:
        """One forward at the masked batch size (oneDNN / cuDNN pick and cache their kernels)."""
        batch = xs[:1].expand(bs, -1, -1, -1).contiguous()
        ctx = bf16_autocast(device) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            model(batch)
            if device.type == "cpu":
                model(batch.contiguous(memory_format=torch.channels_last))

    best = dict.fromkeys(contenders, float("inf"))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with peer_ctx:
        for _ in range(max(1, args.scorecam_repeats)):
            for name, (fn, bs, bf16) in contenders.items():
                if not name.startswith(PROTO):
                    warm(bs, bf16)
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
                best[name] = min(best[name], times[name][-1])
    if SC_BF16 in maps:
        per_image = (maps[SC_BF16] - maps[SC_FP32]).abs().flatten(1).amax(1)
        stats["bf16_max_abs_dmap"] = float(per_image.max())
        stats["bf16_median_image_max_abs_dmap"] = float(per_image.median())
        stats["bf16_mean_abs_dmap"] = float((maps[SC_BF16] - maps[SC_FP32]).abs().mean())
    stats["prototypes"] = {name: {"max_abs_dmap_vs_fp32": float((maps[name] - maps[SC_FP32]).abs().max()),
                                  "first_run_s": first_run[name]} for name in first_run}
    stats["images"] = m
    stats["seconds"] = times
    peers = [k for k in times if k in (SC_TC, SC_PGC)]
    # per round: the faster peer's time in that round over this contender's
    stats["paired_vs_peer"] = {k: statistics.median(min(times[p][i] for p in peers) / times[k][i]
                                                    for i in range(len(times[k])))
                               for k in times if peers}
    return {k: m / t for k, t in best.items()}, stats


PROTO = "(prototype) xaidash Score-CAM"


def prototype_models(model: torch.nn.Module, device: torch.device,
                     no_bf16: bool) -> dict[str, tuple[torch.nn.Module, bool]]:
    """Masked-forward models xaidash could use instead of the hooked eager model (the engine's
    code is unchanged: ``ScoreCAM(model=...)`` takes any module that maps inputs to logits).

    * BN folded: eval-mode BatchNorm folded into the preceding convolution (torch.fx
      ``fuse``): one op less per conv, the same function up to float rounding;
    * torch.compile with Inductor's ``freezing`` (weights as constants: BN folded, oneDNN
      weights pre-packed, conv+ReLU fused); a separate compiled copy per precision.
    """
    import copy

    import torch._inductor.config as inductor_config
    from torch.fx.experimental.optimization import fuse

    out: dict[str, tuple[torch.nn.Module, bool]] = {}
    folded = fuse(copy.deepcopy(model)).eval()
    inductor_config.freezing = True  # read when each compiled copy compiles (its first call)
    for bf16 in (False, True) if not no_bf16 else (False,):
        tag = "bf16 (masked forwards)" if bf16 else "fp32"
        out[f"{PROTO} {tag}, BN folded"] = (folded, bf16)
        out[f"{PROTO} {tag}, torch.compile freezing"] = (
            cast(torch.nn.Module, torch.compile(copy.deepcopy(model))), bf16)
    return out


def prototype_run(proto: torch.nn.Module, bf16: bool, name: str, xs: torch.Tensor, acts: torch.Tensor,
                  pred: torch.Tensor, device: torch.device, batch: int,
                  maps: dict[str, torch.Tensor]) -> Callable[[], object]:
    from xaidash.compute.methods.cams import CamInputs, ScoreCAM

    def run() -> None:
        method = ScoreCAM(proto, batch_size=batch)
        ctx = bf16_autocast(device) if bf16 else contextlib.nullcontext()
        with ctx:
            out = method(CamInputs(activations=acts.float(), targets=pred, inputs=xs))
        maps[name] = out.float().cpu()
    return run


# --------------------------------------------------------------------------------------------
# torch.compile on the masked forwards


def compile_rows(model: torch.nn.Module, x0: torch.Tensor, device: torch.device,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """Eager vs torch.compile of ``model`` on a batch of masked inputs, fp32 and bf16.

    Each variant compiles a fresh copy with a fresh Inductor cache folder (cold compile time).
    Steady state: eager and compiled alternate batch by batch (``--compile-iters`` pairs), so a
    load spike hits both; the best time of each and the median of the per-pair ratios are kept.
    """
    import copy
    import os
    import tempfile

    import torch._dynamo
    import torch._inductor.config as inductor_config

    bs = args.scorecam_batch
    tail = max(1, bs - 13)  # Score-CAM's last chunk is shorter: a second shape
    gen = torch.Generator().manual_seed(2)
    masks = torch.rand(bs, 1, x0.shape[-2], x0.shape[-1], generator=gen).to(device)
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    batch = (x0[:1] * masks).contiguous(memory_format=fmt)
    small = batch[:tail].contiguous(memory_format=fmt)
    out: list[dict[str, Any]] = []
    cache_root = tempfile.mkdtemp(prefix="xaidash-inductor-")
    old_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"

            def call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     bf16: bool = bf16) -> tuple[float, torch.Tensor]:
                _sync(device)
                t0 = time.perf_counter()
                with torch.inference_mode(), bf16_autocast(device) if bf16 else contextlib.nullcontext():
                    y = fn(x).float()
                _sync(device)
                return time.perf_counter() - t0, y

            call(model, batch)
            _, ref = call(model, batch)
            for variant in args.compile_variants.split(","):
                torch._dynamo.reset()
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(dir=cache_root)
                inductor_config.freezing = variant == "freezing"
                row: dict[str, Any] = {"precision": precision, "variant": variant, "batch": bs,
                                       "tail_batch": tail}
                try:
                    compiled = torch.compile(copy.deepcopy(model))
                    row["compile_s"], y = call(compiled, batch)
                    row["recompile_tail_s"], _ = call(compiled, small)
                    call(compiled, batch)
                    eager_t, comp_t = [], []
                    for _ in range(args.compile_iters):
                        eager_t.append(call(model, batch)[0])
                        comp_t.append(call(compiled, batch)[0])
                    row.update(
                        eager_ms_per_batch=min(eager_t) * 1e3, compiled_ms_per_batch=min(comp_t) * 1e3,
                        speedup_best=min(eager_t) / min(comp_t),
                        speedup_paired_median=statistics.median(
                            e / c for e, c in zip(eager_t, comp_t, strict=True)),
                        max_abs_dlogit=float((y - ref).abs().max()), max_abs_logit=float(ref.abs().max()))
                except Exception as e:  # a compiler failure is a result too
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                finally:
                    inductor_config.freezing = False
                out.append(row)
                print(f"  compile {precision} {variant}: {row}", flush=True)
    finally:
        torch._dynamo.reset()
        if old_cache is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_cache
    return out


# --------------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return f"(target >= {target:g}: {'met' if value >= target else 'NOT met'})"


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    # as `xaidash compute` does (process-wide, so the peers in this process get it too)
    allocator = tune_host_allocator() if args.allocator == "tuned" else None
    device = pick_device(args.device)
    if device is None:
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if device.type == "cuda":
        # fp32 rows must be fp32: cuDNN convolutions would otherwise run in TF32 on Ampere+
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(device)
    gen = torch.Generator().manual_seed(1)
    x_all = torch.randn(max(args.images, args.scorecam_images), 3, args.size, args.size,
                        generator=gen).to(device)
    print(f"device={device} [{describe(device)}] threads={torch.get_num_threads()} size={args.size} "
          f"images={args.images} batch={args.batch} torch={torch.__version__}", flush=True)
    print(f"allocator: {allocator}")
    result: dict[str, Any] = {"device": str(device), "device_info": describe(device), "size": args.size,
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "allocator": allocator}

    rows: dict[str, float] = {}
    sc: dict[str, float] = {}
    sc_stats: dict[str, Any] = {}
    if not args.compile_only:
        rows, grad_times = gradient_rows(model, list(x_all[:args.images].split(args.batch)), device,
                                         args.repeats, new_methods=not args.no_new_methods)
        if not args.no_scorecam:
            sc, sc_stats = scorecam_rows(model, x_all[:args.scorecam_images], device, args)
    compiled: list[dict[str, Any]] = []
    if args.compile or args.compile_only:
        print("\ntorch.compile on the masked-forward model (this takes minutes on a CPU)", flush=True)
        compiled = compile_rows(model, x_all[:1], device, args)

    ratios: dict[str, float] = {}
    if rows:
        width = max(len(k) for k in [*rows, *sc])
        print(f"\n{'row':<{width}}  images/s")
        for k, v in rows.items():
            print(f"{k:<{width}}  {v:9.2f}")
        for k, v in sc.items():
            print(f"{k:<{width}}  {v:9.3f}")
        if sc_stats:
            print(f"Score-CAM: {sc_stats['images']} image(s), {sc_stats['channels']} channels, "
                  f"{sc_stats['constant_skipped']} constant (skipped), {sc_stats['duplicates']} duplicate, "
                  f"{sc_stats['forwards']} masked forwards; masked batch {args.scorecam_batch}")
        a, d = rows[ROW_A], rows[ROW_D]
        ratios["trio_vs_plain"] = a / d
        print("\nratios")
        ratios["trio_vs_plain_paired"] = paired(grad_times, ROW_A, ROW_D)
        print(f"(a)/(d) = {a / d:.2f}   gradient trio vs a plain forward {verdict(a / d, TARGETS['trio'])}; "
              f"median of per-round ratios {ratios['trio_vs_plain_paired']:.2f}")
        if ROW_E in rows:
            e = rows[ROW_E]
            ratios["extended_vs_plain"] = e / d
            ratios["extended_vs_plain_paired"] = paired(grad_times, ROW_E, ROW_D)
            print(f"(e)/(d) = {e / d:.2f}   trio-plus-four vs a plain forward "
                  f"{verdict(e / d, TARGETS['extended'])}; median of per-round ratios "
                  f"{ratios['extended_vs_plain_paired']:.2f}; (e)/(a) = {e / a:.2f}")
            for m in NEW_METHODS:
                if row_pgc(m) in rows:
                    r = rows[row_alone(m)] / rows[row_pgc(m)]
                    ratios[f"{m}_vs_pgc"] = r
                    ratios[f"{m}_vs_pgc_paired"] = paired(grad_times, row_alone(m), row_pgc(m))
                    print(f"{NEW_METHODS[m]}: xaidash alone / pytorch-grad-cam = {r:.2f}; median of "
                          f"per-round ratios {ratios[f'{m}_vs_pgc_paired']:.2f}")
        if ROW_B in rows:
            ratios["trio_vs_torchcam"] = a / rows[ROW_B]
            print(f"(a)/(b) = {a / rows[ROW_B]:.2f}   (target >= 2.5)")
        if ROW_C in rows:
            ratios["trio_vs_pgc"] = a / rows[ROW_C]
            print(f"(a)/(c) = {a / rows[ROW_C]:.2f}")
        peers = {k: v for k, v in sc.items() if k in (SC_TC, SC_PGC)}
        if peers:
            fastest = max(peers, key=lambda k: peers[k])
            r32 = sc[SC_FP32] / peers[fastest]
            ratios["scorecam_fp32_vs_peer"] = r32
            pp = sc_stats["paired_vs_peer"]
            print(f"Score-CAM fp32 / faster peer ({fastest}) = {r32:.2f}   "
                  f"{verdict(r32, TARGETS['scorecam_fp32'])}; median of per-round ratios {pp[SC_FP32]:.2f}")
            if SC_BF16 in sc:
                r16 = sc[SC_BF16] / peers[fastest]
                ratios["scorecam_bf16_vs_peer"] = r16
                print(f"Score-CAM bf16 / faster peer ({fastest}) = {r16:.2f}   "
                      f"{verdict(r16, TARGETS['scorecam_bf16'])}; "
                      f"median of per-round ratios {pp[SC_BF16]:.2f}")
        if SC_BF16 in sc:
            ratios["scorecam_bf16_vs_fp32"] = sc[SC_BF16] / sc[SC_FP32]
            print(f"Score-CAM bf16 / fp32 = {sc[SC_BF16] / sc[SC_FP32]:.2f};  bf16 vs fp32 maps: "
                  f"max |Δmap| = {sc_stats['bf16_max_abs_dmap']:.4f} (worst image), "
                  f"median over images of the per-image max = "
                  f"{sc_stats['bf16_median_image_max_abs_dmap']:.4f}, "
                  f"mean |Δ| = {sc_stats['bf16_mean_abs_dmap']:.5f}")
        for name, p in sc_stats.get("prototypes", {}).items():
            vs_peer = (f"{sc[name] / peers[fastest]:.2f}x the faster peer (per round "
                       f"{sc_stats['paired_vs_peer'][name]:.2f}x), " if peers else "")
            print(f"{name}: {vs_peer}{sc[name] / sc[SC_FP32]:.2f}x xaidash fp32; max |Δmap| vs fp32 "
                  f"{p['max_abs_dmap_vs_fp32']:.2e}; first (compiling) run {p['first_run_s']:.1f} s")
    if compiled:
        tail = compiled[0].get("tail_batch", "?")
        print(f"\ntorch.compile, ResNet-18 over {args.scorecam_batch} masked inputs at {args.size} px: "
              f"compile = first call; recompile = first call at batch {tail}; eager and compiled "
              f"alternate {args.compile_iters} times (best ms per batch, and the median of per-pair ratios)")
        print(f"{'precision':<9} {'variant':<9} {'compile s':>9} {'recompile s':>11} {'eager ms':>9} "
              f"{'compiled ms':>11} {'best/best':>9} {'paired':>7} {'max|Δlogit|':>11}")
        for r in compiled:
            if "error" in r:
                print(f"{r['precision']:<9} {r['variant']:<9} failed: {r['error']}")
                continue
            print(f"{r['precision']:<9} {r['variant']:<9} {r['compile_s']:9.1f} "
                  f"{r['recompile_tail_s']:11.1f} {r['eager_ms_per_batch']:9.0f} "
                  f"{r['compiled_ms_per_batch']:11.0f} {r['speedup_best']:9.2f} "
                  f"{r['speedup_paired_median']:7.2f} {r['max_abs_dlogit']:11.2e}")
    if args.json:
        result.update(gradient_images_per_s=rows, scorecam_images_per_s=sc, scorecam=sc_stats,
                      ratios=ratios, targets=TARGETS, compile=compiled)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
