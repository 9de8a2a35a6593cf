"""The global phase at ImageNet scale: twins and counterfactuals for 50,000 validation images
against 1,281,167 training embeddings (512-d, 1,000 classes), and the 2-D projection, with
synthetic embeddings.

Twins are class-restricted (the nearest training images of the predicted class; the
counterfactuals those of the runner-up and of the true class), so the exact search compares each
query with its target classes' rows only (``compute/analysis/neighbors.py``). The baseline is the dense
search a class-agnostic nearest-neighbour pass would do (every query against every row, then a
per-class mask), timed on a slice and scaled by rows x queries; both are exact.

    python bench/global_phase.py                       # the full size (~3 GB of RAM)
    python bench/global_phase.py --train 128000 --val 5000

``--quality`` measures the data-quality step instead (``compute/pipeline/quality_phase.py``):
its peak memory beyond its inputs (the float32 embeddings, the neighbour table, the image facts),
from the process's resident set, at ``--val`` x ``--train`` with ``--k`` neighbours per val
image. ``--no-copies`` leaves the image facts out (no copy search: it streams by blocks whatever
the size, bench/copy_search.py measures it), so the embedding and neighbour parts can be
measured at the full 1M + 1.28M in minutes.

    python bench/global_phase.py --quality --val 1000000 --train 1281167 --k 10 --no-copies
    python bench/global_phase.py --quality --val 100000 --train 128000 --k 10
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from xaidash.compute.analysis.neighbors import find_neighbors
from xaidash.compute.analysis.projection import project_2d, umap_available


def _dense(q: torch.Tensor, t: torch.Tensor, tl: torch.Tensor, targets: torch.Tensor, k: int) -> None:
    """The class-agnostic baseline: q @ t.T, then per target column mask to the class and top-k."""
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(t, dim=1).T
    for col in range(targets.shape[1]):
        masked = torch.where(tl[None, :] == targets[:, col][:, None], sim, torch.tensor(float("-inf")))
        torch.topk(masked, k, dim=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=int, default=50_000)
    p.add_argument("--train", type=int, default=1_281_167)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quality", action="store_true", help="measure the data-quality step's memory instead")
    p.add_argument("--no-copies", action="store_true", help="--quality without image facts (no copy search)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quality:
        return quality_memory(args)
    rng = np.random.default_rng(0)
    c, d = args.classes, args.dim
    centers = rng.standard_normal((c, d)).astype(np.float32)
    train_labels = rng.integers(0, c, args.train)
    val_labels = rng.integers(0, c, args.val)
    t0 = time.perf_counter()
    noise = rng.standard_normal((args.train, d), dtype=np.float32)
    train = (centers[train_labels] + noise).astype(np.float16)
    val = (centers[val_labels] + rng.standard_normal((args.val, d), dtype=np.float32)).astype(np.float16)
    pred = np.where(rng.random(args.val) < 0.8, val_labels, rng.integers(0, c, args.val))
    runner = (pred + 1) % c
    gen_s = time.perf_counter() - t0
    print(f"synthetic embeddings: {args.val} val x {args.train} train, {d}-d, {c} classes "
          f"(generated in {gen_s:.1f} s); device={args.device} threads={torch.get_num_threads()}")

    # what the global phase holds: float32 vectors read back from the staged fp16 parts
    train32, val32 = train.astype(np.float32), val.astype(np.float32)
    t0 = time.perf_counter()
    tab = find_neighbors(val32, pred, runner, val_labels, train32, train_labels, k=args.k, device=args.device)
    exact_s = time.perf_counter() - t0
    print(f"twins + counterfactuals (exact, class buckets): {exact_s:8.1f} s  ({len(tab)} rows)")

    qs, ts = min(args.val, 2000), min(args.train, 100_000)
    targets = torch.from_numpy(np.stack([pred[:qs], runner[:qs], val_labels[:qs]], 1))
    t0 = time.perf_counter()
    _dense(torch.from_numpy(val32[:qs]), torch.from_numpy(train32[:ts]), torch.from_numpy(train_labels[:ts]),
           targets, args.k)
    dense_s = (time.perf_counter() - t0) * (args.val / qs) * (args.train / ts)
    print(f"dense baseline (timed on {qs} x {ts}, scaled):  {dense_s:8.1f} s")
    print(f"speed-up of the class-bucket search: {dense_s / exact_s:.1f}x")

    allv = np.concatenate([val32, train32])
    t0 = time.perf_counter()
    project_2d(allv, "pca", seed=0)
    print(f"projection pca over {len(allv)} rows:           {time.perf_counter() - t0:8.1f} s")
    if umap_available():
        sub = allv[: min(len(allv), 150_000)]
        t0 = time.perf_counter()
        project_2d(sub, "umap", seed=0)
        umap_s = time.perf_counter() - t0
        print(f"projection umap over {len(sub)} rows (fit 50k + transform): {umap_s:8.1f} s "
              "(the transform part grows linearly with the rows)")
    return 0


def _status(key: str) -> int:
    """A size from /proc/self/status in bytes (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def quality_memory(args: argparse.Namespace) -> int:
    """Peak memory of ``quality_tables`` beyond its inputs (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tests.support.synthetic_quality import synthetic_facts
    from xaidash.compute.pipeline.quality_phase import QualityOptions, quality_tables

    rng = np.random.default_rng(0)
    c, d, k = args.classes, args.dim, args.k
    n = args.val + args.train
    centers = rng.standard_normal((c, d)).astype(np.float32)
    labels = rng.integers(0, c, n)
    vectors = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # generated in blocks: no float64 temporary of the whole matrix
        e = min(n, s + 100_000)
        vectors[s:e] = np.maximum(centers[labels[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32), 0)
    ids = [f"{i:016x}" for i in range(n)]
    split = ["val"] * args.val + ["train"] * args.train
    q = np.repeat(np.arange(args.val), k)
    t = args.val + rng.integers(0, args.train, q.size)
    id_array = pa.array(ids, pa.string())
    neighbors = pa.table({"image_id": pc.take(id_array, pa.array(q)),
                          "kind": pc.take(pa.array(["twin"]), pa.array(np.zeros(q.size, np.int32))),
                          "rank": np.tile(np.arange(1, k + 1), args.val).astype(np.int32),
                          "neighbor_id": pc.take(id_array, pa.array(t)),
                          "neighbor_class": labels[t].astype(np.int32),
                          "similarity": rng.uniform(0.8, 1.0, q.size).astype(np.float32)})
    facts = synthetic_facts(split)
    if args.no_copies:
        facts.has[:] = False
    train_labels = {ids[i]: int(labels[i]) for i in range(args.val, n)}
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident set
        f.write("5")
    t0 = time.perf_counter()
    out = quality_tables(
        staging=None,  # type: ignore[arg-type]  # unused: labels unknown, image facts given
        val_ids=ids[:args.val], labels=[None] * args.val, preds=labels[:args.val].tolist(),
        labels_known=False,
        emb_ids=ids, emb_split=split, vectors=vectors, hashes=[None] * n, neighbors=neighbors,
        train_labels=train_labels, options=QualityOptions(), facts=facts)
    took = time.perf_counter() - t0
    peak = _status("VmHWM")
    q_t = out["quality"]
    print(f"quality step: {args.val} val + {args.train} train, {d}-d float32 embeddings "
          f"({vectors.nbytes / 2**30:.2f} GiB), {k} neighbours per val image, copies "
          f"{'off' if args.no_copies else 'on'}: {took:.1f} s; peak resident memory beyond the inputs "
          f"{(peak - base) / 2**30:.2f} GiB (inputs: {base / 2**30:.2f} GiB resident); "
          f"{sum(q_t.column('outlier').to_pylist())} outliers, {sum(q_t.column('leak').to_pylist())} leaks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
