"""Where copies end and look-alikes begin: the pHash and pixel distances of planted copies
against those of real look-alikes, on Fashion-MNIST (Debian's dataset-fashion-mnist).

Copies: train images re-encoded (JPEG q=70), upscaled 2x, shifted by 1 px, cropped by 5 %
(kept at the cropped size), each at the native 28 px and at 112 px (bicubic, a stand-in for a
larger photo, where a pixel is a smaller part of the picture). Look-alikes: for test images,
the nearest train image of the same class by the same pixel distance (the hardest real
look-alike there is among ``--train`` images). Prints the distributions the thresholds of
``compute/analysis/copies.py`` are read from (docs/METHODS.md, "Copies").

    python bench/copy_thresholds.py                # ~3 min on 2 cores
    python bench/copy_thresholds.py --train 5000 --test 300 --copies 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.copies import PLANTS
from xaidash.compute.analysis.copies import (
    COPY_DISTANCE,
    PHASH_RADIUS,
    hamming,
    pixel_distance,
    tiny_array,
)
from xaidash.compute.analysis.image_facts import ImageFacts, describe
from xaidash.compute.datasets.archives import read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def tinies(fs: list[ImageFacts]) -> np.ndarray:
    return tiny_array(np.stack([np.frombuffer(f.tiny, np.uint8) for f in fs]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--copies", type=int, default=300)
    args = p.parse_args()
    xtr, ytr = (read_idx(FASHION / f"train-{k}-ubyte.gz") for k in ("images-idx3", "labels-idx1"))
    xte, yte = (read_idx(FASHION / f"t10k-{k}-ubyte.gz") for k in ("images-idx3", "labels-idx1"))
    rng = np.random.default_rng(0)
    tri = rng.choice(len(xtr), args.train, replace=False)
    tei = rng.choice(len(xte), args.test, replace=False)
    print(f"thresholds: pHash radius {PHASH_RADIUS}, copy distance {COPY_DISTANCE}")
    for side in (28, 112):
        def rgb(a: np.ndarray, side: int = side) -> Image.Image:
            im = Image.fromarray(a).convert("RGB")
            return im if side == 28 else im.resize((side, side), Image.Resampling.BICUBIC)

        t0 = time.perf_counter()
        ftr = [describe(rgb(xtr[i])) for i in tri]
        per_image = (time.perf_counter() - t0) / len(tri)
        ttr = tinies(ftr)
        htr = np.array([f.phash for f in ftr], np.uint64)
        print(f"\n{side} px: describe() {per_image * 1e3:.2f} ms/image")
        print(f"{'planted copy':12s} {'pHash max':>9s} {'p99':>5s} {'dist max':>8s} {'p99':>7s} "
              f"{'in radius':>9s} {'dist ok':>7s}")
        src = rng.choice(len(tri), args.copies, replace=False)
        for name, fn in PLANTS.items():
            fs = [describe(fn(rgb(xtr[tri[i]]))) for i in src]
            h = hamming(np.array([f.phash for f in fs], np.uint64), htr[src])
            d = pixel_distance(tinies(fs), ttr[src])
            print(f"{name:12s} {h.max():9d} {np.percentile(h, 99):5.0f} {d.max():8.4f} "
                  f"{np.percentile(d, 99):7.4f} {(h <= PHASH_RADIUS).mean():9.1%} "
                  f"{(d <= COPY_DISTANCE).mean():7.1%}")
        fte = [describe(rgb(xte[i])) for i in tei]
        tte = tinies(fte)
        nn = np.empty(len(tei), np.float32)
        nn_h = np.empty(len(tei), np.int64)
        for j in range(len(tei)):
            same = np.nonzero(ytr[tri] == yte[tei[j]])[0]
            d = pixel_distance(np.repeat(tte[j:j + 1], same.size, 0), ttr[same])
            nn[j] = d.min()
            nn_h[j] = hamming(np.uint64(fte[j].phash), htr[same[d.argmin()]])
        flagged = ((nn <= COPY_DISTANCE) & (nn_h <= PHASH_RADIUS)).mean()
        # the neighbour route (the look-alike is the val image's nearest twin): pHash within 24
        by_twin = ((nn <= COPY_DISTANCE) & (nn_h <= 24)).mean()
        print(f"look-alikes: nearest same-class train image among {len(tri)} "
              f"(~{len(tri) // 10} per class): "
              f"distance min {nn.min():.4f}, p1 {np.percentile(nn, 1):.4f}, p5 {np.percentile(nn, 5):.4f}, "
              f"median {np.median(nn):.4f}; its pHash distance median {np.median(nn_h):.0f}; "
              f"called a copy: {flagged:.1%} by the hash route, {by_twin:.1%} if it is the nearest twin")
    photos(rng)
    return 0


def photos(rng: np.random.Generator) -> None:
    """The same plants on scikit-image's sample photographs (when installed)."""
    try:
        import skimage.data as skdata
    except ImportError:
        return
    names = ("chelsea", "astronaut", "coffee", "camera", "rocket", "immunohistochemistry",
             "hubble_deep_field", "coins", "moon", "horse", "retina", "brick", "grass", "gravel",
             "colorwheel", "clock")
    ims = [Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in names]
    orig = tinies([describe(im) for im in ims])
    ph = np.array([describe(im).phash for im in ims], np.uint64)
    print(f"\n{len(ims)} scikit-image sample images (photographs, textures, a silhouette):")
    for name, fn in PLANTS.items():
        fs = [describe(fn(im)) for im in ims]
        h = hamming(np.array([f.phash for f in fs], np.uint64), ph)
        d = pixel_distance(tinies(fs), orig)
        missed = [n for n, v in zip(names, d.tolist(), strict=True) if v > COPY_DISTANCE]
        print(f"{name:12s} pHash max {h.max():3d}, in radius {(h <= PHASH_RADIUS).mean():6.1%}; "
              f"distance max {d.max():.4f}, ok {(d <= COPY_DISTANCE).mean():6.1%} {missed or ''}")
    d_all = [pixel_distance(orig[i:i + 1], orig[j:j + 1])[0]
             for i in range(len(ims)) for j in range(i + 1, len(ims))]
    print(f"distinct images: pixel distance min {min(d_all):.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
