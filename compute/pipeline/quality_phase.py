"""The global phase's data-quality step: the ``quality``, ``duplicates``, ``quality_rules`` and
``error_clusters`` tables.

Runs after the neighbours, from what the run already computed: the staged probabilities, the
embeddings and their input hashes, the per-image facts the chunks measured on the decoded images
(``image_facts``: perceptual hash, 16x16 thumbnail, statistics), the twins and counterfactuals
just found, and the staged maps. The definitions live in :mod:`xaidash.compute.analysis.quality`
(label issues, the reference distribution, look-alikes, outliers),
:mod:`xaidash.compute.analysis.copies` (leaks and near-duplicates, in pixel space),
:mod:`xaidash.compute.analysis.image_issues` and :mod:`xaidash.compute.analysis.clusters`.

Memory is bounded at scale (bench/global_phase.py, docs/PERFORMANCE.md): nothing here copies
the embeddings. Centred, normalised rows are made block by block in float32 when a similarity
needs them (:func:`~xaidash.compute.analysis.quality.unit_rows`), neighbour pairs are scored
``PAIR_BLOCK`` at a time, their ids are matched as Arrow indices (no Python string per pair),
and the copy search holds one block of candidates.

"Nearest training image" is the best of the stored neighbours: the nearest train images of the
predicted class (twins), of the runner-up and, for errors, of the true class (counterfactuals).
An exhaustive any-class search would cost C times the class-bucketed one; the classes it skips
are ones the model itself gives little probability. Without neighbours (``--twins 0``,
unlabeled train) no image is a look-alike or an outlier; copies need no neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from xaidash.compute.analysis.clusters import CellClusters, error_clusters
from xaidash.compute.analysis.copies import (
    COPY_DISTANCE,
    PHASH_RADIUS,
    HashIndex,
    find_copies,
    groups,
    hamming,
    pixel_distance,
    tiny_array,
    unaligned_distance,
)
from xaidash.compute.analysis.image_facts import TINY
from xaidash.compute.analysis.image_issues import ISSUES, IssueRules, image_issues, issue_rules
from xaidash.compute.analysis.quality import (
    LOOKALIKE_QUANTILE,
    OUTLIER_QUANTILE,
    REFERENCE_SAMPLE,
    QuantileRule,
    above,
    below,
    label_issues,
    loo_nearest_within_class,
    percentile_in,
    quantile_rule,
    unit_rows,
)
from xaidash.constants import ATTRIBUTION_METHODS
from xaidash.store import Staging
from xaidash.store.builder import table

log = logging.getLogger(__name__)

#: neighbour pairs scored at once (two ``PAIR_BLOCK x K`` float32 blocks: 128 MiB at K = 512)
PAIR_BLOCK = 32768
#: the cheap checks a val image's nearest neighbour passes before it is aligned (see copies())
NEIGHBOUR_PHASH = 24
NEIGHBOUR_UNALIGNED = 0.1
#: the statistics image_facts holds, as read for the property checks
FACT_STATS = ("bright_p05", "bright_p99", "sharpness", "entropy", "colour", "width", "height")


@dataclass(frozen=True)
class QualityOptions:
    """The data-quality thresholds a user may set (``xaidash compute`` options)."""

    copy_distance: float = COPY_DISTANCE
    phash_radius: int = PHASH_RADIUS
    lookalike_quantile: float = LOOKALIKE_QUANTILE
    outlier_quantile: float = OUTLIER_QUANTILE
    reference_sample: int = REFERENCE_SAMPLE
    cluster_min_errors: int = 6


@dataclass(frozen=True)
class Facts:
    """The staged image facts aligned to the embedding rows (``has``: a row has facts)."""

    has: npt.NDArray[np.bool_]
    phash: npt.NDArray[np.uint64]
    tiny: npt.NDArray[np.uint8]  #: [N, TINY * TINY]
    stats: dict[str, npt.NDArray[np.float64]]

    @classmethod
    def empty(cls, n: int) -> Facts:
        return cls(np.zeros(n, bool), np.zeros(n, np.uint64), np.zeros((n, TINY * TINY), np.uint8),
                   {k: np.full(n, np.nan) for k in FACT_STATS})


def _binary_rows(col: pa.ChunkedArray | pa.Array, width: int) -> npt.NDArray[np.uint8]:
    """A binary column of ``width``-byte values as ``[N, width]`` uint8, from its data buffer."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, width), np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    if arr.null_count == 0 and np.all(np.diff(offsets) == width):
        return data[offsets[0]:offsets[-1]].reshape(n, width)
    out = np.zeros((n, width), np.uint8)
    for i, v in enumerate(arr.to_pylist()):
        if v is not None and len(v) == width:
            out[i] = np.frombuffer(v, np.uint8)
    return out


def read_facts(staging: Staging, emb_ids: Sequence[str]) -> Facts:
    """The staged ``image_facts`` in embedding-row order (runs staged before facts existed, or
    rows without them: ``has`` false)."""
    facts = Facts.empty(len(emb_ids))
    ids = pa.array(list(emb_ids), pa.string())
    for b in staging.iter_table("image_facts", columns=["image_id", "phash", "tiny", *FACT_STATS]):
        if not b.num_rows:
            continue
        rows = pc.fill_null(pc.index_in(b.column("image_id"), value_set=ids), -1).to_numpy(
            zero_copy_only=False).astype(np.int64)
        ok = rows >= 0
        r = rows[ok]
        facts.has[r] = True
        facts.phash[r] = b.column("phash").to_numpy(zero_copy_only=False)[ok].astype(np.uint64)
        facts.tiny[r] = _binary_rows(b.column("tiny"), TINY * TINY)[ok]
        for k in FACT_STATS:
            facts.stats[k][r] = b.column(k).to_numpy(zero_copy_only=False).astype(np.float64)[ok]
    return facts


def read_probabilities(staging: Staging, val_ids: Sequence[str]) -> npt.NDArray[np.float32]:
    """The staged probabilities ``[N, C]`` in the order of ``val_ids``."""
    ids: list[str] = []
    parts: list[npt.NDArray[np.float32]] = []
    for b in staging.iter_table("predictions", columns=["image_id", "probabilities"]):
        ids.extend(b.column("image_id").to_pylist())
        col = b.column("probabilities")
        if len(col):
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            parts.append(flat.reshape(len(col), flat.size // len(col)))
    probs = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    if ids != list(val_ids):
        at = {i: r for r, i in enumerate(ids)}
        probs = probs[np.array([at[i] for i in val_ids], dtype=np.int64)]
    return probs


def train_mean(vectors: npt.NDArray[np.floating], train_rows: npt.NDArray[np.int64],
               block: int = 65536) -> npt.NDArray[np.float32]:
    """The mean train embedding, accumulated block by block (no float64 copy of the matrix)."""
    k = vectors.shape[1] if vectors.ndim == 2 else 0
    total = np.zeros(k, np.float64)
    for s in range(0, train_rows.size, block):
        total += np.asarray(vectors[train_rows[s:s + block]], np.float32).sum(axis=0, dtype=np.float64)
    return (total / max(1, train_rows.size)).astype(np.float32)


@dataclass(frozen=True)
class Nearest:
    """Per val image: the most similar stored neighbour by centred cosine (row, -1: none), that
    similarity (NaN: none) and the best raw (stored) cosine."""

    row: npt.NDArray[np.int64]
    centred: npt.NDArray[np.float32]
    raw: npt.NDArray[np.float32]


def nearest_train(q_pos: npt.NDArray[np.int64], t_row: npt.NDArray[np.int64], raw: npt.NDArray[np.float32],
                  n_val: int, val_rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.floating],
                  mean: npt.NDArray[np.float32]) -> Nearest:
    """:class:`Nearest` from neighbour pairs (``q_pos``: val position, ``t_row``: embedding row of
    the neighbour, ``raw``: its stored cosine), scored ``PAIR_BLOCK`` pairs at a time."""
    best_row = np.full(n_val, -1, np.int64)
    best = np.full(n_val, -np.inf, np.float32)
    raw_best = np.full(n_val, np.nan, np.float32)
    ok = (q_pos >= 0) & (t_row >= 0)
    q_pos, t_row, raw = q_pos[ok], t_row[ok], raw[ok]
    sims = np.empty(q_pos.size, np.float32)
    for s in range(0, q_pos.size, PAIR_BLOCK):
        a = unit_rows(vectors, val_rows[q_pos[s:s + PAIR_BLOCK]], mean)
        b = unit_rows(vectors, t_row[s:s + PAIR_BLOCK], mean)
        sims[s:s + PAIR_BLOCK] = np.einsum("ij,ij->i", a, b)
    if q_pos.size:
        order = np.lexsort((-sims, q_pos))  # per val image, most similar first
        first = np.ones(order.size, bool)
        first[1:] = q_pos[order][1:] != q_pos[order][:-1]
        top = order[first]
        best[q_pos[top]] = sims[top]
        best_row[q_pos[top]] = t_row[top]
        np.fmax.at(raw_best, q_pos, raw)
    return Nearest(best_row, np.where(np.isfinite(best), best, np.nan).astype(np.float32), raw_best)


def _neighbour_pairs(neighbors: pa.Table | None, val_ids: Sequence[str], emb_ids: Sequence[str]) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]
]:
    """(val position, neighbour's embedding row, stored cosine) per neighbour row, as Arrow
    index lookups (-1: unknown id)."""
    if neighbors is None or neighbors.num_rows == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32)

    def index(col: str, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        got = pc.index_in(neighbors.column(col), value_set=pa.array(list(ids), pa.string()))
        out: npt.NDArray[np.int64] = pc.fill_null(got, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return out

    raw = neighbors.column("similarity").to_numpy(zero_copy_only=False).astype(np.float32)
    return index("image_id", val_ids), index("neighbor_id", emb_ids), raw


@dataclass(frozen=True)
class CopyResult:
    """Per val image: the train row it copies (-1: none), how ('pixels' / 'copy') and the pixel
    distance; near-duplicate groups (smallest member's row, -1: none) per val and train image."""

    leak_row: npt.NDArray[np.int64]
    match: list[str | None]
    distance: npt.NDArray[np.float32]
    val_group: npt.NDArray[np.int64]
    train_group: npt.NDArray[np.int64]


def copies(val_rows: npt.NDArray[np.int64], train_rows: npt.NDArray[np.int64], facts: Facts,
           hashes: Sequence[str | None], opts: QualityOptions,
           neighbours: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None) -> CopyResult:
    """Leaks (val copies of train images) and near-duplicate groups inside val and inside train.

    Candidates are the train images within the pHash radius and, when given, each val image's
    nearest stored neighbour (``neighbours``: val position, embedding row per val image, -1:
    none): a crop of a few percent moves more pHash bits than the radius allows (up to 22 of 64
    on photos, bench/copy_thresholds.py), while the network, trained to ignore such changes,
    puts the original first among the twins. A neighbour is aligned only when it passes two
    cheap checks that every planted copy passes (pHash within ``NEIGHBOUR_PHASH`` bits, where
    unrelated images differ by 32 +- 4; blurred unaligned distance within ``NEIGHBOUR_UNALIGNED``,
    a 5 % crop's 0.085 with margin), so the alignment search runs on few pairs. Either way the
    pixel distance alone decides."""
    n = val_rows.size
    leak_row = np.full(n, -1, np.int64)
    dist = np.full(n, np.nan, np.float32)
    match: list[str | None] = [None] * n
    # the same model input as a train image, whatever its class (also without facts)
    train_by_hash: dict[str, int] = {}
    for r in train_rows.tolist():
        h = hashes[r] if r < len(hashes) else None
        if h is not None:
            train_by_hash.setdefault(h, r)
    for q, vr in enumerate(val_rows.tolist()):
        h = hashes[vr] if vr < len(hashes) else None
        tr = train_by_hash.get(h) if h is not None else None
        if tr is not None:
            leak_row[q], dist[q], match[q] = tr, 0.0, "pixels"
    vf = val_rows[facts.has[val_rows]]
    tf = train_rows[facts.has[train_rows]]
    vpos = np.nonzero(facts.has[val_rows])[0]
    q_all: list[npt.NDArray[np.int64]] = []  # val positions
    t_all: list[npt.NDArray[np.int64]] = []  # embedding rows
    d_all: list[npt.NDArray[np.float32]] = []
    if vf.size and tf.size:
        index = HashIndex(facts.phash[tf], radius=opts.phash_radius)
        found = find_copies(facts.phash[vf], facts.tiny[vf], index, facts.tiny[tf], opts.copy_distance)
        q_all.append(vpos[found.query])
        t_all.append(tf[found.ref])
        d_all.append(found.distance)
    if neighbours is not None and neighbours[0].size:
        qn, tn = neighbours
        ok = (qn >= 0) & (tn >= 0)
        qn, tn = qn[ok], tn[ok]
        ok = facts.has[val_rows[qn]] & facts.has[tn]
        ok &= hamming(facts.phash[val_rows[qn]], facts.phash[tn]) <= NEIGHBOUR_PHASH
        qn, tn = qn[ok], tn[ok]
        for s in range(0, qn.size, PAIR_BLOCK):
            qs, ts = qn[s:s + PAIR_BLOCK], tn[s:s + PAIR_BLOCK]
            a, b = tiny_array(facts.tiny[val_rows[qs]]), tiny_array(facts.tiny[ts])
            close = unaligned_distance(a, b) <= NEIGHBOUR_UNALIGNED
            qs, ts, a, b = qs[close], ts[close], a[close], b[close]
            d = pixel_distance(a, b)
            keep = d <= opts.copy_distance
            q_all.append(qs[keep])
            t_all.append(ts[keep])
            d_all.append(d[keep])
    if q_all:
        qq, tt, dd = np.concatenate(q_all), np.concatenate(t_all), np.concatenate(d_all)
        seen: set[int] = set()
        for j in np.lexsort((dd, qq)).tolist():  # per val image, the closest copy first
            q = int(qq[j])
            if q in seen or match[q] == "pixels":
                continue
            seen.add(q)
            leak_row[q], dist[q], match[q] = int(tt[j]), float(dd[j]), "copy"
    return CopyResult(leak_row, match, dist, _groups_in(val_rows, facts, opts),
                      _groups_in(train_rows, facts, opts))


def _groups_in(rows: npt.NDArray[np.int64], facts: Facts, opts: QualityOptions) -> npt.NDArray[np.int64]:
    """Near-duplicate groups among ``rows`` (positions in ``rows``; -1: in none)."""
    out = np.full(rows.size, -1, np.int64)
    pos = np.nonzero(facts.has[rows])[0]
    if pos.size < 2:
        return out
    r = rows[pos]
    index = HashIndex(facts.phash[r], radius=opts.phash_radius)
    found = find_copies(facts.phash[r], facts.tiny[r], index, facts.tiny[r], opts.copy_distance,
                        same_set=True)
    g = groups(pos.size, found.query, found.ref)
    out[pos[g >= 0]] = pos[g[g >= 0]]
    return out


def _group_numbers(group: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Groups numbered 0.. by first member, and each member's group size (-1 / 0 for none)."""
    num = np.full(group.size, -1, np.int64)
    size = np.zeros(group.size, np.int64)
    keys = np.unique(group[group >= 0])
    if keys.size:
        num[group >= 0] = np.searchsorted(keys, group[group >= 0])
        counts = np.bincount(num[group >= 0], minlength=keys.size)
        size[group >= 0] = counts[num[group >= 0]]
    return num, size


def rules_table(copy_n: int, opts: QualityOptions, look: QuantileRule, out: QuantileRule,
                 issues: IssueRules) -> pa.Table:
    rows: list[dict[str, object]] = [
        {"rule": "copy", "statistic": "pHash Hamming distance, then blurred aligned 16x16 mean |difference|",
         "threshold": opts.copy_distance, "reference": copy_n, "needed": 0,
         "note": f"a leak is a val image that is a copy of a train image: pHash within {opts.phash_radius} "
                 f"of 64 bits and pixel distance <= {opts.copy_distance:g} (or the same model input)"},
    ]
    for rule, word, side in ((look, "look-alike", "above"), (out, "outlier", "below")):
        if rule.threshold is None:
            note = (f"not enough images to judge {word}s: {rule.reference} train reference similarities, "
                    f"{rule.needed} needed for the {rule.quantile:g} quantile")
        else:
            which = (f"the largest of {rule.reference} (fewer than the {rule.needed} the {rule.quantile:g} "
                     f"quantile needs)" if rule.extreme
                     else f"the {rule.quantile:g} quantile of {rule.reference}")
            note = (f"{word} when the {'centred' if rule is look else 'raw'} cosine to the nearest train "
                    f"image is {side} {rule.threshold:.4f}, {which} train images' leave-one-out "
                    f"nearest-neighbour similarities within their class")
        space = "centred" if rule is look else "raw"
        rows.append({"rule": rule.rule, "statistic": f"{space} cosine to the nearest train image",
                     "quantile": rule.quantile, "threshold": rule.threshold, "reference": rule.reference,
                     "needed": rule.needed, "note": note})
    stat = {"dark": "bright_p99", "overexposed": "1 - bright_p05", "blurry": "sharpness",
            "low_information": "entropy", "odd_size": "median area (x10 either way)",
            "odd_aspect": "median aspect (x2 either way)", "grayscale": "colour"}
    for k in ISSUES:
        thr = issues.thresholds.get(k)
        rows.append({"rule": k, "statistic": stat[k], "threshold": thr, "reference": issues.images,
                     "needed": 10, "note": f"{k}: {stat[k]} vs {thr if thr is None else round(thr, 4)}"})
    cols = {k: [r.get(k) for r in rows] for k in
            ("rule", "statistic", "quantile", "threshold", "reference", "needed", "note")}
    return table("quality_rules", cols)


def quality_tables(
    *,
    staging: Staging,
    val_ids: Sequence[str],
    labels: Sequence[int | None],
    preds: Sequence[int],
    labels_known: bool,
    emb_ids: Sequence[str],
    emb_split: Sequence[str],
    vectors: npt.NDArray[np.float32],
    hashes: Sequence[str | None],
    neighbors: pa.Table | None,
    train_labels: Mapping[str, int | None],
    options: QualityOptions,
    facts: Facts | None = None,
) -> dict[str, pa.Table]:
    """The run's ``quality`` (one row per val image), ``duplicates``, ``quality_rules`` and
    ``error_clusters`` tables (``train_labels``: label per train image id; ``facts``: the image
    facts in embedding-row order, by default the staged ones)."""
    n = len(val_ids)
    if n == 0:
        return {}
    opts = options
    row_of = {iid: i for i, iid in enumerate(emb_ids)}
    val_rows = np.array([row_of[i] for i in val_ids], dtype=np.int64)
    split = np.array(emb_split)
    train_rows = np.nonzero(split == "train")[0].astype(np.int64)
    facts = read_facts(staging, emb_ids) if facts is None else facts
    mean = train_mean(vectors, train_rows)
    pairs = _neighbour_pairs(neighbors, val_ids, emb_ids)
    near = nearest_train(*pairs, n, val_rows, vectors, mean)

    # the reference: leave-one-out nearest-train similarity of sampled train images
    got = [train_labels.get(emb_ids[r]) for r in train_rows.tolist()]
    tl = np.array([-1 if v is None else int(v) for v in got], np.int64)
    labelled = np.nonzero(tl >= 0)[0]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(labelled, min(opts.reference_sample, labelled.size), replace=False))
    # look-alikes on centred cosines (what tells a close look-alike from an ordinary image),
    # outliers on raw ones, as the twins show them: on a small train set the centring spreads
    # ordinary images apart as much as it separates a far one (the tests' noise image: 0.61
    # centred among ordinary 0.49..0.83, but the farthest by raw cosine)
    ref = ref_raw = np.zeros(0, np.float32)
    if sample.size and near.row.max(initial=-1) >= 0:  # without neighbours nothing to compare
        ref = loo_nearest_within_class(vectors, mean, train_rows, tl, sample)
        ref_raw = loo_nearest_within_class(vectors, np.zeros_like(mean), train_rows, tl, sample)
    look = quantile_rule("lookalike", ref, opts.lookalike_quantile, extreme=True)
    out_rule = quantile_rule("outlier", ref_raw, opts.outlier_quantile)

    cp = copies(val_rows, train_rows, facts, hashes, opts, (np.arange(n, dtype=np.int64), near.row))
    leak = cp.leak_row >= 0
    lookalike = above(near.centred, look) & ~leak
    outlier = below(near.raw, out_rule)
    score = percentile_in(near.raw, ref_raw) if out_rule.threshold is not None else np.full(n, np.nan)

    has_stats = facts.has
    stats_all = {k: v[has_stats] for k, v in facts.stats.items()}
    irules = issue_rules(stats_all)
    val_has = facts.has[val_rows]
    val_issues: list[list[str] | None] = [None] * n
    if val_has.any():
        per = image_issues({k: v[val_rows[val_has]] for k, v in facts.stats.items()}, irules)
        for q, iss in zip(np.nonzero(val_has)[0].tolist(), per, strict=True):
            val_issues[q] = iss
    vnum, vsize = _group_numbers(cp.val_group)
    tnum, tsize = _group_numbers(cp.train_group)

    y = np.array([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    quality: list[float | None] = [None] * n
    flagged: list[bool | None] = [None] * n
    suggested: list[int | None] = [None] * n
    cells: list[CellClusters] = []
    if labels_known:
        li = label_issues(y, read_probabilities(staging, val_ids))
        quality = li.quality.tolist()
        flagged = li.flagged.tolist()
        suggested = [int(s) if s >= 0 else None for s in li.suggested.tolist()]
        cells = error_clusters(vectors[val_rows], y, p, opts.cluster_min_errors)
    member_cluster: list[int | None] = [None] * n
    for cell in cells:
        for c, rows in enumerate(cell.members):
            for r in rows.tolist():
                member_cluster[r] = c

    def ids_of(rows: npt.NDArray[np.int64]) -> list[str | None]:
        return [emb_ids[r] if r >= 0 else None for r in rows.tolist()]

    def floats(x: npt.NDArray[np.floating]) -> list[float | None]:
        return [None if not np.isfinite(v) else float(v) for v in x.tolist()]

    near_id = ids_of(near.row)
    for q in np.nonzero(leak & (near.row < 0))[0].tolist():
        near_id[q] = emb_ids[int(cp.leak_row[q])]  # no neighbour, but the copy is the nearest
    tables = {
        "quality": table("quality", {
            "image_id": list(val_ids), "label_quality": quality, "mislabelled": flagged,
            "suggested_class": suggested, "nearest_train_id": near_id,
            "nearest_train_similarity": floats(near.centred),
            "leak": leak.tolist(), "leak_match": cp.match, "leak_train_id": ids_of(cp.leak_row),
            "leak_distance": floats(cp.distance), "lookalike": lookalike.tolist(),
            "outlier_score": floats(score), "outlier": outlier.tolist(),
            "duplicate_group": [int(g) if g >= 0 else None for g in vnum.tolist()],
            "duplicate_count": [int(c) if c > 0 else None for c in vsize.tolist()],
            "image_issues": val_issues, "error_cluster": member_cluster,
        }),
        "quality_rules": rules_table(int(train_rows.size), opts, look, out_rule, irules),
    }
    dup_rows = [(val_ids[q], "val", int(vnum[q]), int(vsize[q])) for q in np.nonzero(vnum >= 0)[0].tolist()]
    dup_rows += [(emb_ids[int(train_rows[t])], "train", int(tnum[t]), int(tsize[t]))
                 for t in np.nonzero(tnum >= 0)[0].tolist()]
    tables["duplicates"] = table("duplicates", {
        "image_id": [d[0] for d in dup_rows], "split": [d[1] for d in dup_rows],
        "group": [d[2] for d in dup_rows], "size": [d[3] for d in dup_rows]})
    if cells:
        tables["error_clusters"] = _cluster_table(staging, cells, list(val_ids))
    log.info("quality: %d label issues, %d leaks (%d pixel-identical), %d look-alikes, %d outliers%s, "
             "%d val / %d train near-duplicate groups, %d val images with property issues, "
             "%d clustered cells",
             sum(1 for f in flagged if f), int(leak.sum()), sum(1 for m in cp.match if m == "pixels"),
             int(lookalike.sum()), int(outlier.sum()),
             "" if out_rule.threshold is not None else " (not enough images to judge outliers)",
             int(vnum.max(initial=-1) + 1), int(tnum.max(initial=-1) + 1),
             sum(1 for i in val_issues if i), len(cells))
    return tables


def _mean_maps(staging: Staging, member_ids: set[str]) -> dict[str, tuple[int, int, dict[str, np.ndarray]]]:
    """Per method: (h, w, {image_id: map}) of the members' predicted-class maps (staged cams)."""
    maps: dict[str, tuple[int, int, dict[str, np.ndarray]]] = {}
    want = pa.array(sorted(member_ids), pa.string())
    for b in staging.iter_table("cams", columns=["image_id", "method", "target_kind", "h", "w", "map"]):
        t = pa.Table.from_batches([b])
        keep = pc.and_(pc.is_in(t.column("image_id"), value_set=want),
                       pc.equal(t.column("target_kind"), "pred"))
        # the CAMs only: the pixel attributions cover a sample of the members (and have their own size)
        keep = pc.and_(keep, pc.invert(pc.is_in(t.column("method"), value_set=pa.array(ATTRIBUTION_METHODS))))
        t = t.filter(keep)
        if not t.num_rows:
            continue
        flat = t.column("map").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        hs, ws = t.column("h").to_pylist(), t.column("w").to_pylist()
        mat = flat.reshape(t.num_rows, -1)
        for i, (iid, m) in enumerate(zip(t.column("image_id").to_pylist(), t.column("method").to_pylist(),
                                         strict=True)):
            entry = maps.setdefault(m, (int(hs[i]), int(ws[i]), {}))
            entry[2][iid] = mat[i]
    return maps


def _cluster_table(staging: Staging, cells: list[CellClusters], val_ids: list[str]) -> pa.Table:
    member_ids = {val_ids[r] for cell in cells for rows in cell.members for r in rows.tolist()}
    maps = _mean_maps(staging, member_ids)
    cols: dict[str, list[object]] = {k: [] for k in (
        "true_class", "pred_class", "cluster", "k", "silhouette", "size", "representative_ids",
        "method", "h", "w", "mean_map")}
    for cell in cells:
        for c, (rows, reps) in enumerate(zip(cell.members, cell.representatives, strict=True)):
            ids = [val_ids[r] for r in rows.tolist()]
            per_method: list[tuple[str | None, int | None, int | None, list[float] | None]] = []
            for m, (h, w, by_id) in maps.items():
                got = [by_id[i] for i in ids if i in by_id]
                if got:
                    per_method.append((m, h, w, np.mean(got, axis=0).astype(np.float32).tolist()))
            for method, mh, mw, mean in per_method or [(None, None, None, None)]:
                for key, value in (("true_class", cell.true_class), ("pred_class", cell.pred_class),
                                   ("cluster", c), ("k", cell.k), ("silhouette", cell.silhouette),
                                   ("size", len(ids)), ("representative_ids", [val_ids[r] for r in reps]),
                                   ("method", method), ("h", mh), ("w", mw), ("mean_map", mean)):
                    cols[key].append(value)
    return table("error_clusters", cols)
