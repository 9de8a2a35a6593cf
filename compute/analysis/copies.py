"""Copies decided in pixel space: train/val leaks and near-duplicates inside a split.

A pair of images is a **copy** when (1) their 64-bit pHashes (:mod:`xaidash.compute.analysis.image_facts`)
differ in at most ``radius`` bits, and (2) their 16x16 grayscale thumbnails, blurred (Gaussian,
sigma 1 px) and aligned over shifts of up to 1 px and scales 0.95 / 1 / 1.05, differ by a mean
absolute difference of at most ``max_distance`` (pixel values in [0, 1]). Nothing here looks
at the model: a copy is a copy whatever a network makes of it. The hash only proposes
candidates; the pixel distance decides, because look-alike items (two plain white trousers)
share most hash bits too. The thresholds and what they were measured on are in docs/METHODS.md
("Copies"), from ``bench/copy_thresholds.py``.

**Candidate search of bounded cost** (multi-index hashing, Norouzi, Punjani & Fleet, CVPR 2012):
the 64 bits are cut into 4 bands of 16; two hashes within ``radius`` bits agree within
``radius // 4`` bits on at least one band (pigeonhole), so each query probes, per band, the
reference band values within ``radius // 4`` bits of its own in a
sorted copy of the reference bands (``searchsorted``; 17 values for the default radius 7). Each
probe takes at most ``max_bucket`` references, so a query costs at most ``4 * 17 * max_bucket``
hash comparisons whatever the
data (a flood of identical bands - blank images hash alike - is cut there; blank images are
caught as exact pixel copies and as low-information images instead). Queries go in blocks, so
memory is bounded by the block, not by the data set (bench/copy_search.py: 50k x 1.28M).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xaidash.compute.analysis.image_facts import TINY

#: pHash bits two copies may differ in for the hash route: 7 keeps each band's probes to the 17
#: values within 1 bit (radius 8..11 would need 137, 8x the candidates: at 50k x 1.28M, 195 s
#: instead of ~25 s on the loaded 2-core dev CPU). Planted JPEG q=70 and 2x-resized copies of
#: photos differ by at most 6 bits, of 28-px Fashion-MNIST items by up to 8 (99 % within 6):
#: those few are still found when the original is the val image's nearest twin
PHASH_RADIUS = 7
#: blurred, aligned 16x16 mean absolute difference at or below which a candidate is a copy:
#: between the planted copies caught (at most 0.0079: a 5 % crop of a photo, JPEG q=70 of a 28-px
#: item) and the nearest real look-alikes (Fashion-MNIST same-class items: 1 % below 0.0087)
COPY_DISTANCE = 0.0085
#: references one probe may return (bounds the cost of a query)
MAX_BUCKET = 64
BANDS = 4
BAND_BITS = 16

Ints = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Floats = npt.NDArray[np.float32]


def _masks(bits: int, radius: int) -> npt.NDArray[np.uint64]:
    """All ``bits``-bit masks with at most ``radius`` bits set (the probes of one band)."""
    out = [0]
    for r in range(1, radius + 1):
        out.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), r))
    return np.array(out, dtype=np.uint64)


def hamming(a: U64, b: U64) -> Ints:
    """Bitwise Hamming distance of two arrays of 64-bit hashes."""
    out: Ints = np.bitwise_count(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64)).astype(np.int64)
    return out


class HashIndex:
    """The reference hashes, one sorted copy per band, for :meth:`candidates`."""

    def __init__(self, hashes: U64, radius: int = PHASH_RADIUS, max_bucket: int = MAX_BUCKET) -> None:
        self.hashes = np.asarray(hashes, np.uint64)
        self.radius = radius
        self.max_bucket = max_bucket
        self.masks = _masks(BAND_BITS, radius // BANDS)
        self.order: list[Ints] = []
        self.sorted: list[U64] = []
        for b in range(BANDS):
            band = (self.hashes >> np.uint64(BAND_BITS * b)) & np.uint64(0xFFFF)
            o = np.argsort(band, kind="stable").astype(np.int64)
            self.order.append(o)
            self.sorted.append(band[o])

    def candidates(self, queries: U64, block: int = 512) -> Iterator[tuple[Ints, Ints]]:
        """(query row, reference row) pairs within ``radius`` bits, each pair once, by blocks of
        ``block`` queries (memory: about ``block * 4 * 17 * max_bucket * 24`` bytes at worst)."""
        q_all = np.asarray(queries, np.uint64)
        for start in range(0, q_all.size, block):
            q = q_all[start:start + block]
            found_q: list[Ints] = []
            found_r: list[Ints] = []
            for b in range(BANDS):
                band = (q >> np.uint64(BAND_BITS * b)) & np.uint64(0xFFFF)
                keys = (band[:, None] ^ self.masks[None, :]).ravel()
                lo = np.searchsorted(self.sorted[b], keys, side="left")
                hi = np.searchsorted(self.sorted[b], keys, side="right")
                cnt = np.minimum(hi - lo, self.max_bucket)
                total = int(cnt.sum())
                if not total:
                    continue
                qrow = np.repeat(np.arange(keys.size, dtype=np.int64) // self.masks.size, cnt)
                first = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
                ref = self.order[b][first + np.arange(total, dtype=np.int64)]
                near = hamming(q[qrow], self.hashes[ref]) <= self.radius
                found_q.append(qrow[near])
                found_r.append(ref[near])
            if not found_q:
                continue
            pairs = np.unique(np.concatenate(found_q) * self.hashes.size + np.concatenate(found_r))
            yield pairs // self.hashes.size + start, pairs % self.hashes.size


def _blur(x: Floats) -> Floats:
    """Separable Gaussian blur, sigma 1 px (5 taps), edges repeated: ``[N, n, n]``."""
    k = np.array([0.0545, 0.2442, 0.4026, 0.2442, 0.0545], np.float32)
    pad = np.pad(x, ((0, 0), (2, 2), (0, 0)), mode="edge")
    x = sum(k[i] * pad[:, i:i + x.shape[1]] for i in range(5))
    pad = np.pad(x, ((0, 0), (0, 0), (2, 2)), mode="edge")
    out: Floats = sum(k[i] * pad[:, :, i:i + x.shape[2]] for i in range(5)).astype(np.float32)
    return out


def _warped(x: Floats, scale: float, dy: Floats | float, dx: Floats | float) -> Floats:
    """``[N, n, n]`` zoomed by ``scale`` about the centre and shifted by ``(dy, dx)`` pixels (one
    shift for all, or one per image), bilinear with edges repeated, the same size."""
    m, n = x.shape[0], x.shape[1]

    def taps(shift: Floats | float) -> tuple[Ints, Ints, Floats]:
        base = (np.arange(n, dtype=np.float32) + 0.5 - n / 2) / scale + n / 2 - 0.5
        src = np.clip(base[None, :] - np.broadcast_to(np.asarray(shift, np.float32), (m,))[:, None], 0, n - 1)
        i0 = np.floor(src).astype(np.int64)
        return i0, np.minimum(i0 + 1, n - 1), (src - i0).astype(np.float32)

    y0, y1, fy = taps(dy)
    x0, x1, fx = taps(dx)
    rows = (np.take_along_axis(x, y0[:, :, None], axis=1) * (1 - fy)[:, :, None]
            + np.take_along_axis(x, y1[:, :, None], axis=1) * fy[:, :, None])
    out = (np.take_along_axis(rows, x0[:, None, :], axis=2) * (1 - fx)[:, None, :]
           + np.take_along_axis(rows, x1[:, None, :], axis=2) * fx[:, None, :])
    return out.astype(np.float32, copy=False)


#: the alignments a copy is compared under: zooms about the centre and shifts in thumbnail pixels
#: (half-pixel steps: a 1-px shift of a 112-px image is 0.14 px at 16)
SCALES = (1.0, 0.95, 1.05)
SHIFTS = (-1.0, -0.5, 0.0, 0.5, 1.0)
#: border (thumbnail pixels) left out of the comparison, where a shift or crop moves content in or out
BORDER = 1


def tiny_array(tiny: npt.NDArray[np.uint8]) -> Floats:
    """Stored thumbnails (``[N, TINY * TINY]`` bytes) as ``[N, TINY, TINY]`` floats in [0, 1]."""
    out: Floats = np.asarray(tiny, np.uint8).reshape(-1, TINY, TINY).astype(np.float32) / 255.0
    return out


def _centroid(x: Floats) -> tuple[Floats, Floats]:
    """Per thumbnail ``[N, n, n]``, the (row, column) centre of mass of its contrast to its own
    mean (so a dark object on light ground and a light one on dark ground both have one)."""
    n = x.shape[1]
    w = np.abs(x - x.mean(axis=(1, 2), keepdims=True))
    total = np.clip(w.sum(axis=(1, 2)), 1e-6, None)
    idx = np.arange(n, dtype=np.float32)
    cy: Floats = (w.sum(axis=2) * idx).sum(axis=1) / total
    cx: Floats = (w.sum(axis=1) * idx).sum(axis=1) / total
    return cy, cx


def unaligned_distance(a: Floats, b: Floats) -> Floats:
    """Per pair of thumbnails ``[N, n, n]``: the blurred mean absolute difference as they are (a
    cheap bound before :func:`pixel_distance`'s alignment search)."""
    out: Floats = np.abs(_blur(a) - _blur(b)).mean(axis=(1, 2))
    return out


def pixel_distance(a: Floats, b: Floats) -> Floats:
    """Per pair of thumbnails ``[N, n, n]``: the blurred mean absolute difference inside a
    ``BORDER``-pixel margin, minimised over the zooms ``SCALES`` of ``a`` and its shifts: the
    fixed grid ``SHIFTS`` and, around the shift that puts the centres of mass on top of each
    other, quarter-pixel steps (a shift or crop of a few percent moves the content by a
    fraction of a thumbnail pixel, and steep edges make that fraction count)."""
    a, b = _blur(a), _blur(b)
    n = a.shape[1]
    inner = slice(BORDER, n - BORDER)
    bb = b[:, inner, inner]
    by, bx = _centroid(b)
    best = np.full(a.shape[0], np.inf, np.float32)
    fine = (-0.25, 0.0, 0.25)
    for scale in SCALES:
        z = _warped(a, scale, 0.0, 0.0) if scale != 1.0 else a
        zy, zx = _centroid(z)
        est_y, est_x = np.clip(by - zy, -1.5, 1.5), np.clip(bx - zx, -1.5, 1.5)
        for dy, dx in itertools.product(SHIFTS, repeat=2):
            w = _warped(a, scale, dy, dx)[:, inner, inner]
            best = np.minimum(best, np.abs(w - bb).mean(axis=(1, 2)))
        for fy, fx in itertools.product(fine, repeat=2):
            w = _warped(a, scale, est_y + fy, est_x + fx)[:, inner, inner]
            best = np.minimum(best, np.abs(w - bb).mean(axis=(1, 2)))
    return best


@dataclass(frozen=True)
class Copies:
    """Confirmed copy pairs: ``query`` rows, ``ref`` rows and their pixel distance."""

    query: Ints
    ref: Ints
    distance: Floats


def find_copies(q_hash: U64, q_tiny: npt.NDArray[np.uint8], index: HashIndex, r_tiny: npt.NDArray[np.uint8],
                max_distance: float = COPY_DISTANCE, same_set: bool = False) -> Copies:
    """Copy pairs between queries and the indexed references (thumbnails ``[N, TINY * TINY]``
    uint8, rows of ``q_hash`` and of the index; converted to floats only for the candidates).
    ``same_set``: the queries are the references, and each unordered pair of different rows is
    reported once, ``query < ref``."""
    qs: list[Ints] = []
    rs: list[Ints] = []
    ds: list[Floats] = []
    for qi, ri in index.candidates(q_hash):
        if same_set:
            keep = qi < ri
            qi, ri = qi[keep], ri[keep]
        if not qi.size:
            continue
        d = pixel_distance(tiny_array(q_tiny[qi]), tiny_array(r_tiny[ri]))
        ok = d <= max_distance
        qs.append(qi[ok])
        rs.append(ri[ok])
        ds.append(d[ok])
    if not qs:
        return Copies(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Copies(np.concatenate(qs), np.concatenate(rs), np.concatenate(ds))


def groups(n: int, a: Ints, b: Ints) -> Ints:
    """Connected components of the pairs ``(a[i], b[i])`` over ``n`` rows (union-find): per
    row the smallest row of its group, or -1 for rows in no pair."""
    parent = np.arange(n, dtype=np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    out = np.full(n, -1, np.int64)
    touched = np.unique(np.concatenate([a, b])) if a.size else np.zeros(0, np.int64)
    for i in touched.tolist():
        out[i] = root(i)
    return out
