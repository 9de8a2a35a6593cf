"""Beyond the maps: likely label errors, look-alikes of train images and outliers.

Everything here is plain numpy over the run's stored outputs (no store access), so the global
phase (:mod:`xaidash.compute.pipeline.quality_phase`) and the tests call the same code. Copies
(leaks and near-duplicates) are decided in pixel space, without the model, in
:mod:`xaidash.compute.analysis.copies`; image-property issues in
:mod:`xaidash.compute.analysis.image_issues`. Definitions (also in docs/METHODS.md, "Data quality"):

* **Label issues** - confident learning (Northcutt, Jiang & Chuang, *Confident Learning:
  Estimating Uncertainty in Dataset Labels*, JAIR 2021) on the stored softmax probabilities of
  the validation images, which the model never trained on, i.e. out-of-sample as the method
  needs. We use cleanlab, the authors' implementation, rather than writing it again:
  ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``) gives the flag,
  ``cleanlab.rank.get_label_quality_scores`` (self-confidence, ``p[label]``) the score, and the
  suggested class is the most probable one.
* **The reference distribution** - for a sample of train images, the cosine similarity of the
  mean-centred embedding to the nearest *other* train image of the same class (leave one out,
  :func:`loo_nearest_within_class`): how close an ordinary image of this data set, seen
  through this model, comes to its nearest training image.
* **Look-alikes** - a val image whose nearest train image is more similar than the
  ``LOOKALIKE_QUANTILE`` (99.9th percentile) of the reference: closer than almost any train
  image comes to another. A soft signal (an easy class maps its members close together), never
  a leak.
* **Outliers** - a val image whose nearest train image is less similar than the
  ``OUTLIER_QUANTILE`` (0.5th percentile) of the reference; with fewer than ``1 / quantile``
  reference images that quantile is not estimable and nothing is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: quantile of the reference above which a val image is a look-alike of its nearest train image
LOOKALIKE_QUANTILE = 0.999
#: quantile of the reference below which a val image is an outlier
OUTLIER_QUANTILE = 0.005
#: train images sampled for the reference (each costs one within-class search)
REFERENCE_SAMPLE = 20_000

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LabelIssues:
    """Per val image: cleanlab's label-quality score, its flag and the suggested class (-1: none)."""

    quality: Floats
    flagged: Bools
    suggested: Ints


def label_issues(labels: npt.ArrayLike, probs: npt.ArrayLike) -> LabelIssues:
    """Confident learning over ``probs [N, C]`` (rows sum to 1) and ``labels [N]``.

    cleanlab needs at least one image per class it estimates a noise rate for, and two classes;
    with fewer (a tiny or one-class run) nothing is flagged, and the scores are still returned.
    """
    from cleanlab.filter import find_label_issues  # ~0.5 s to import: only when a run has labels
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    n = y.shape[0]
    if n == 0:
        return LabelIssues(np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)  # float32 rows sum to 1 +- 1e-7
    quality = np.asarray(get_label_quality_scores(y, p, method="self_confidence"), dtype=np.float64)
    flagged = np.zeros(n, dtype=bool)
    if p.shape[1] >= 2 and np.unique(y).size >= 2:
        flagged = np.asarray(
            find_label_issues(y, p, filter_by="prune_by_noise_rate", n_jobs=1, verbose=False), dtype=bool
        )
    suggested = np.where(flagged, p.argmax(axis=1), -1).astype(np.int64)
    return LabelIssues(quality, flagged, suggested)


def loo_nearest_within_class(
    vectors: npt.NDArray[np.floating], mean: npt.NDArray[np.float32], train_rows: npt.ArrayLike,
    train_labels: npt.ArrayLike, sample: npt.ArrayLike, block: int = 4096,
) -> npt.NDArray[np.float32]:
    """Per sampled train image (``sample``: positions in ``train_rows``): the cosine similarity
    of its centred embedding (``vectors[row] - mean``) to the most similar *other* train image of
    the same label; NaN when its class has no other image. Streams in float32, class by class
    and ``block`` rows at a time, centring and normalising each block as it goes: memory is two
    ``block x K`` blocks and one ``block x block`` similarity matrix, whatever the data set."""
    rows = np.asarray(train_rows, np.int64)
    y = np.asarray(train_labels, np.int64)
    pick = np.asarray(sample, np.int64)
    out = np.full(pick.size, np.nan, np.float32)
    for c in np.unique(y[pick]).tolist():
        members = np.nonzero(y == c)[0]  # positions in train_rows
        if members.size < 2:
            continue
        mine = np.nonzero(y[pick] == c)[0]  # positions in pick
        for s in range(0, mine.size, block):
            qpos = pick[mine[s:s + block]]
            q = unit_rows(vectors, rows[qpos], mean)
            best = np.full(qpos.size, -np.inf, np.float32)
            for t in range(0, members.size, block):
                tpos = members[t:t + block]
                sim = q @ unit_rows(vectors, rows[tpos], mean).T
                sim[qpos[:, None] == tpos[None, :]] = -np.inf
                best = np.maximum(best, sim.max(axis=1))
            out[mine[s:s + block]] = np.where(np.isfinite(best), best, np.nan)
    return out


def unit_rows(vectors: npt.NDArray[np.floating], rows: npt.ArrayLike,
              mean: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``vectors[rows] - mean``, L2-normalized, float32 (zero rows stay zero).

    Post-ReLU pooled activations are all positive, so raw cosines crowd near 1 (the demo's
    ResNet-18: median 0.994 to the nearest train image); subtracting the mean train embedding
    spreads them over the sphere, which separates a close look-alike from an ordinary image."""
    x = np.asarray(vectors[np.asarray(rows, np.int64)], np.float32) - mean
    out: npt.NDArray[np.float32] = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return out


@dataclass(frozen=True)
class QuantileRule:
    """A threshold read from the reference distribution, as recorded in the run."""

    rule: str
    quantile: float
    threshold: float | None  #: None: not enough reference images
    reference: int  #: reference similarities it was estimated from
    needed: int  #: fewest reference similarities the quantile needs
    extreme: bool = False  #: too few for the quantile: the reference's maximum stands in


#: fewest reference values whose maximum may stand in for a high quantile (look-alikes)
MIN_EXTREME = 100


def quantile_rule(rule: str, reference: npt.ArrayLike, quantile: float,
                  extreme: bool = False) -> QuantileRule:
    """The ``quantile`` of the finite ``reference`` values, when there are at least
    ``ceil(1 / min(q, 1 - q))`` of them (below that the sample has no such tail). ``extreme``
    (a high quantile only): with fewer, but at least ``MIN_EXTREME``, the maximum stands in,
    i.e. "closer than any train image comes to another" - a stricter rule, never a looser one."""
    ref = np.asarray(reference, np.float64)
    ref = ref[np.isfinite(ref)]
    needed = int(np.ceil(1.0 / min(quantile, 1.0 - quantile) - 1e-9))
    if ref.size >= needed:
        return QuantileRule(rule, quantile, float(np.quantile(ref, quantile)), int(ref.size), needed)
    if extreme and quantile > 0.5 and ref.size >= MIN_EXTREME:
        return QuantileRule(rule, quantile, float(ref.max()), int(ref.size), needed, extreme=True)
    return QuantileRule(rule, quantile, None, int(ref.size), needed)


def above(values: npt.ArrayLike, rule: QuantileRule) -> Bools:
    s = np.asarray(values, np.float64)
    return np.zeros(s.shape, bool) if rule.threshold is None else np.isfinite(s) & (s > rule.threshold)


def below(values: npt.ArrayLike, rule: QuantileRule) -> Bools:
    s = np.asarray(values, np.float64)
    return np.zeros(s.shape, bool) if rule.threshold is None else np.isfinite(s) & (s < rule.threshold)


def percentile_in(values: npt.ArrayLike, reference: npt.ArrayLike) -> Floats:
    """Per value, the fraction of the finite reference values below it (NaN stays NaN)."""
    ref = np.sort(np.asarray(reference, np.float64)[np.isfinite(np.asarray(reference, np.float64))])
    s = np.asarray(values, np.float64)
    out = np.full(s.shape, np.nan)
    ok = np.isfinite(s)
    if ref.size:
        out[ok] = np.searchsorted(ref, s[ok], side="left") / ref.size
    return out


def accuracy_without(correct: npt.ArrayLike, drop: npt.ArrayLike) -> float | None:
    """Accuracy over the images not in ``drop`` (None when none is left)."""
    c = np.asarray(correct, dtype=bool)
    keep = ~np.asarray(drop, dtype=bool)
    return float(c[keep].mean()) if keep.any() else None
