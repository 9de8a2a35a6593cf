"""Cost of the method ranking (compute/analysis/method_ranking.py) in the global phase.

1. One paired test on its own resampling (``paired_difference``) against scipy's paired
   permutation test (``permutation_test``, sign flips) on the same 1000-image differences and the
   same number of resamples: milliseconds per pair and the ratio.
2. The whole ranking (every bootstrap CI, every paired test, the rule) for N images x M methods
   with ROAD on every image, as the global phase runs it (one resampling shared by the methods
   on the same images), against the same number of pairs each resampled on its own (measured on
   the road_gap metric's pairs, extrapolated to every pair).

    python bench/method_ranking.py [N] [M]      # default 1000 images, 11 methods
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xaidash.compute.analysis.method_ranking import RESAMPLES, paired_difference
from xaidash.compute.pipeline.method_ranking_phase import ranking_frames


def per_pair(n: int = 1000, repeats: int = 10) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.2, n)
    y = x + rng.normal(0.01, 0.1, n)
    t = time.perf_counter()
    for i in range(repeats):
        ours = paired_difference(x, y, RESAMPLES, i)
    t_ours = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for i in range(repeats):
        peer = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis),
                                      permutation_type="samples", vectorized=True, n_resamples=RESAMPLES,
                                      random_state=i)
    t_peer = (time.perf_counter() - t) / repeats
    print(f"one pair, {n} images, {RESAMPLES} resamples: paired bootstrap {1000 * t_ours:.1f} ms "
          f"(p = {ours.p_value:.3f}), scipy permutation_test {1000 * t_peer:.1f} ms (p = {peer.pvalue:.3f}): "
          f"{t_peer / t_ours:.1f}x")


def whole(n: int, m: int) -> None:
    rng = np.random.default_rng(1)
    ids = [f"{i:016x}" for i in range(n)]
    methods = [f"m{k}" for k in range(m)]
    faith = pd.DataFrame({"image_id": np.repeat(ids, m), "method": np.tile(methods, n),
                          "drop": rng.random(n * m), "increase": (rng.random(n * m) < 0.2).astype(float),
                          "deletion_auc": rng.random(n * m), "insertion_auc": rng.random(n * m)})
    base = pd.DataFrame({"image_id": np.repeat(ids, 2), "baseline": np.tile(["random", "centre"], n),
                         "drop": rng.random(2 * n), "increase": np.zeros(2 * n),
                         "deletion_auc": rng.random(2 * n), "insertion_auc": rng.random(2 * n)})
    fr = (0.1, 0.3, 0.5, 0.7, 0.9)
    k = n * m * 2 * len(fr)
    road = pd.DataFrame({"image_id": np.repeat(ids, m * 2 * len(fr)),
                         "method": np.tile(np.repeat(methods, 2 * len(fr)), n),
                         "order": np.tile(np.repeat(["morf", "lerf"], len(fr)), n * m),
                         "fraction": np.tile(fr, n * m * 2), "probability": rng.random(k)})
    t = time.perf_counter()
    st, rk = ranking_frames(faith, base, road, pd.DataFrame(columns=["image_id", "method", "step", "block",
                                                                     "spearman"]), methods)
    dt = time.perf_counter() - t
    pairs = int(st["other"].notna().sum())
    gap = road.groupby(["image_id", "method", "order"])["probability"].mean().unstack("order")
    gap = (gap["lerf"] - gap["morf"]).unstack("method")
    t = time.perf_counter()
    own = 0
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            paired_difference(gap[a].to_numpy(), gap[b].to_numpy(), RESAMPLES, own)
            own += 1
    per_pair_s = (time.perf_counter() - t) / own
    print(f"whole ranking, {n} images x {m} methods (+2 baselines), ROAD on all: {dt:.2f} s "
          f"({len(st) - pairs} CIs, {pairs} paired tests, {rk['tier'].nunique()} tiers); every pair on its "
          f"own resampling: {per_pair_s * pairs:.2f} s ({1000 * per_pair_s:.1f} ms x {pairs}, extrapolated): "
          f"{per_pair_s * pairs / dt:.1f}x")


if __name__ == "__main__":
    per_pair()
    whole(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 11)
