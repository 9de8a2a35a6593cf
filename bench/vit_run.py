"""The cost of a ViT run, per stage, and Grad-CAM + Grad-CAM++ against pytorch-grad-cam on it.

One command, one process::

    python bench/vit_run.py --threads 2                       # CPU defaults below
    python bench/vit_run.py --model vit_small_patch16_224 --images 64 --device cuda

Both parts use the same timm ViT (``--model``, default ``vit_tiny_patch16_224`` at 224 px, random
weights seeded by xaidash: nothing is downloaded) and the same images.

1. **A ``compute`` run** (``--model timm:NAME``) over ``--images`` generated val images (and as
   many train images for the twins) with every method, faithfulness, the trust checks and the
   data-quality flags at their defaults: the job's own per-stage wall times (``timings_json``),
   in milliseconds per val image. Score-CAM is exact (one masked forward per channel: 192 for
   ViT-Tiny).
2. **Grad-CAM + Grad-CAM++ images/s**, interleaved rounds, best of ``--repeats``: xaidash's
   ``CamEngine.forward`` (predictions, embeddings, Grad-CAM and Grad-CAM++ from one forward and
   one backward) on the layer xaidash finds (``blocks[-1].norm1``), against pytorch-grad-cam's
   ``GradCAM`` then ``GradCAMPlusPlus`` on the same layer with its documented ViT
   ``reshape_transform``. The ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.compute_vs_peers import describe, paired, timed_rounds  # noqa: E402
from xaidash.compute.methods.cams import CamEngine  # noqa: E402
from xaidash.compute.model.layers import discover  # noqa: E402

ROW_OURS = "xaidash: predictions + embeddings + Grad-CAM + Grad-CAM++"
ROW_PGC = "pytorch-grad-cam: GradCAM + GradCAMPlusPlus"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT (default vit_tiny_patch16_224)")
    p.add_argument("--images", type=int, default=16, help="val images of the compute run (default 16)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--sanity-images", type=int, default=2,
                   help="images of the sanity cascade (default 2: 15 steps of every map each for ViT-Tiny)")
    p.add_argument("--gradient-images", type=int, default=32, help="images of the peer rows (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the peer rows (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--skip-run", action="store_true", help="only the peer rows")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    return p


def compute_run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """ms per val image of each stage of a ``compute`` run on the ViT."""
    from tests.support.imagegen import make_imagefolder
    from xaidash.compute.pipeline.job import JobConfig, run_job
    from xaidash.store.read.reader import open_store

    per_class = max(1, args.images // 2)
    data = make_imagefolder(work / "data", ("left", "right"), n_train=per_class, n_val=per_class, size=224)
    cfg = JobConfig(data=f"imagefolder:{data}", store=str(work / "store"), model=f"timm:{args.model}",
                    classes=("left", "right"), device=args.device, batch_size=args.batch, workers=0,
                    projection="pca", sanity_images=args.sanity_images, road_images=4)
    t0 = time.perf_counter()
    res = run_job(cfg)
    wall = time.perf_counter() - t0
    assert res.ok and res.run_id
    with open_store(work / "store") as r:
        run = r.runs().iloc[0]
    n = int(run["num_val"])
    timings = json.loads(run["timings_json"])
    out = {k: 1000 * float(v) / n for k, v in sorted(timings.items()) if isinstance(v, (int, float))}
    out["wall (whole job)"] = 1000 * wall / n
    cfg_json = json.loads(run["config_json"])
    print(f"compute run: {n} val + {int(run['num_train'])} train images, target layer "
          f"{cfg_json['model']['target']['name']} ({cfg_json['model']['target']['reason']})")
    return out


def peer_rows(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, float], float]:
    import timm
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000).eval().to(device)
    size = int(model.patch_embed.img_size[0])
    gh, gw = (int(v) for v in model.patch_embed.grid_size)
    target = discover(model, size, 1000)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(args.gradient_images, 3, size, size, generator=gen).to(device)
    batches = list(xs.split(args.batch))
    layer = model.get_submodule(target.name)

    def reshape_transform(t: torch.Tensor) -> torch.Tensor:
        # pytorch-grad-cam's documented ViT recipe (tutorials/vision_transformers.md)
        result = t[:, model.num_prefix_tokens:, :].reshape(t.size(0), gh, gw, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    def grads(on: bool) -> None:
        for p in model.parameters():
            p.requires_grad_(on)

    def ours() -> None:
        grads(False)  # as the job leaves them (for_inference): only A is differentiated
        with CamEngine(model, target.name, target.linear_head, layout=target.layout,
                       embedding_layer=target.head) as eng:
            for xb in batches:
                eng.forward(xb, ("gradcam", "gradcampp")).logits.softmax(1)

    def pgc() -> None:
        grads(True)  # pytorch-grad-cam gets its gradients through the parameters' graph
        for cls in (GradCAM, GradCAMPlusPlus):
            with cls(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
                for xb in batches:
                    cam(input_tensor=xb, targets=None)
        model.zero_grad(set_to_none=True)

    times = timed_rounds({ROW_OURS: ours, ROW_PGC: pgc}, device, args.repeats)
    n = xs.shape[0]
    return {k: n / min(t) for k, t in times.items()}, paired(times, ROW_OURS, ROW_PGC)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{describe(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"timm:{args.model}")
    result: dict[str, object] = {}
    if not args.skip_run:
        with tempfile.TemporaryDirectory(prefix="xaidash-vit-bench-") as tmp:
            stages = compute_run(args, Path(tmp))
        print("\nstage (ms per val image)")
        for k, v in stages.items():
            print(f"  {k:<32} {v:10.1f}")
        result["stages_ms_per_val_image"] = stages
    rows, ratio = peer_rows(args, device)
    print(f"\nGrad-CAM + Grad-CAM++ on the same ViT, {args.gradient_images} images, batch {args.batch}")
    for k, v in rows.items():
        print(f"  {k:<58} {v:8.2f} images/s")
    print(f"  ratio xaidash / pytorch-grad-cam (median of paired rounds): {ratio:.2f}")
    result.update(rows=rows, ratio=ratio, device=describe(device), model=args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
