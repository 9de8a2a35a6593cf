"""The copy search at ImageNet scale: 50,000 val x 1,281,167 train synthetic perceptual hashes.

Times :class:`~xaidash.compute.analysis.copies.HashIndex` (multi-index hashing over 4 bands of
16 bits) and :func:`~xaidash.compute.analysis.copies.find_copies` (candidates, then the pixel
distance on 16x16 thumbnails), and the train-train near-duplicate search, and reports the peak
memory the search adds (tracemalloc: numpy's allocations) and the recall of planted copies.

Two hash distributions: ``uniform`` (random bits: buckets of ~20 per band value) and
``clustered`` (train hashes drawn around 20,000 centres with 6 of 64 bits flipped, so many
pHashes share bands, as real photos of similar scenes do; the per-probe cap bounds their cost).

    python bench/copy_search.py                    # the full size
    python bench/copy_search.py --train 128000 --val 5000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from xaidash.compute.analysis.copies import PHASH_RADIUS, HashIndex, find_copies
from xaidash.compute.analysis.image_facts import TINY


def flip(h: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    out = h.copy()
    for _ in range(bits):
        pos = rng.integers(0, 64, h.size).astype(np.uint64)
        out ^= np.uint64(1) << pos
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=int, default=50_000)
    p.add_argument("--train", type=int, default=1_281_167)
    p.add_argument("--planted", type=int, default=1000)
    p.add_argument("--dist", choices=("uniform", "clustered", "both"), default="both")
    p.add_argument("--train-train", action="store_true", help="also time the train-train duplicate search")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    dists = ("uniform", "clustered") if args.dist == "both" else (args.dist,)
    for dist in dists:
        if dist == "uniform":
            train = rng.integers(0, 2**63, args.train, dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
                rng.integers(0, 2, args.train).astype(np.uint64)
        else:
            centres = rng.integers(0, 2**63, 20_000, dtype=np.int64).astype(np.uint64)
            train = flip(centres[rng.integers(0, centres.size, args.train)], 6, rng)
        val = rng.integers(0, 2**63, args.val, dtype=np.int64).astype(np.uint64)
        src = rng.choice(args.train, args.planted, replace=False)
        val[:args.planted] = flip(train[src], 4, rng)  # copies: 4 of 64 bits changed
        t_tiny = rng.integers(0, 256, (args.train, TINY * TINY), dtype=np.uint8)
        v_tiny = rng.integers(0, 256, (args.val, TINY * TINY), dtype=np.uint8)
        v_tiny[:args.planted] = t_tiny[src]
        tracemalloc.start()
        t0 = time.perf_counter()
        index = HashIndex(train)
        t_index = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_cand = 0
        for qi, _ in index.candidates(val):
            n_cand += qi.size
        t_cand = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = find_copies(val, v_tiny, index, t_tiny)
        t_find = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ok = {(int(q), int(r)) for q, r in zip(found.query.tolist(), found.ref.tolist(), strict=True)}
        recall = np.mean([(i, int(s)) in ok for i, s in enumerate(src.tolist())])
        print(f"{dist}: {args.val} val x {args.train} train hashes, radius {PHASH_RADIUS}: "
              f"index {t_index:.1f} s, "
              f"candidate search {t_cand:.1f} s ({n_cand} pairs within the radius), "
              f"search + pixel confirmation {t_find:.1f} s; planted copies found {recall:.1%}, "
              f"other pairs confirmed {len(ok) - int(recall * args.planted)}; "
              f"peak memory of the search {peak / 2**20:.0f} MiB (beyond the hashes and thumbnails: "
              f"{(train.nbytes + t_tiny.nbytes) / 2**20:.0f} MiB for train)", flush=True)
        if args.train_train:
            tracemalloc.start()
            t0 = time.perf_counter()
            tt = find_copies(train, t_tiny, index, t_tiny, same_set=True)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"{dist}: train-train near-duplicates {time.perf_counter() - t0:.1f} s, "
                  f"{tt.query.size} pairs, peak {peak / 2**20:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
