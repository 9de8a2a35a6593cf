"""Beyond the maps: likely label errors, train/val leaks and outliers, from what a run already has.

Everything here is plain numpy over the run's stored outputs (no torch, no store access; the
input hash a leak compares is taken per batch, :func:`xaidash.compute.datasets.imageset.input_hashes`), so the
global phase (:mod:`xaidash.compute.pipeline.quality_phase`) and the tests' synthetic store call the same
code. Definitions (also in docs/METHODS.md, "Data quality"):

* **Label issues** — confident learning (Northcutt, Jiang & Chuang, *Confident Learning:
  Estimating Uncertainty in Dataset Labels*, JAIR 2021) on the stored softmax probabilities of
  the validation images, which the model never trained on, i.e. out-of-sample as the method
  needs. We use cleanlab, the authors' implementation, rather than writing it again:
  ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``) gives the flag,
  ``cleanlab.rank.get_label_quality_scores`` (self-confidence, ``p[label]``) the score, and the
  suggested class is the most probable one.
* **Leaks** — a val image is a leak when the model's input tensor hashes equal to a train
  image's (``match = 'pixels'``), or when its nearest train image has cosine similarity >= the
  threshold (default 0.99, ``match = 'embedding'``).
* **Outliers** — the modified z-score (Iglewicz & Hoaglin, 1993) of ``-log(1 - s)``, ``s`` the
  cosine similarity to the nearest stored neighbour as the twins show it (i.e. of the log
  distance, sign flipped), below -3.5: far from every training image relative to the run's own
  distribution (a fixed similarity cut-off would mean something different for every model).
* The leak threshold applies to cosines of **mean-centred** embeddings (the mean train embedding
  subtracted, :func:`xaidash.compute.pipeline.quality_phase.centred`): raw post-ReLU features crowd near
  cosine 1 (the demo: median 0.994), so an absolute cut-off needs the centring; the outlier rule
  is relative and uses the raw cosine, whose geometry the centring on a small train set distorts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: default cosine similarity at or above which a val image counts as a copy of a train image
LEAK_THRESHOLD = 0.99
#: modified z-score below which a val image is an outlier (Iglewicz & Hoaglin's 3.5)
OUTLIER_Z = -3.5

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


def modified_z(values: npt.ArrayLike) -> Floats:
    """``0.6745 (x - median) / MAD`` (NaN stays NaN); with MAD = 0 the mean absolute deviation
    times 1.2533 stands in (IBM SPSS's rule), and with no spread at all every score is 0."""
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if not ok.any():
        return out
    med = float(np.median(x[ok]))
    dev = np.abs(x[ok] - med)
    mad = float(np.median(dev))
    if mad > 0:
        out[ok] = 0.6745 * (x[ok] - med) / mad
        return out
    mean_ad = float(dev.mean())
    out[ok] = (x[ok] - med) / (1.253314 * mean_ad) if mean_ad > 0 else 0.0
    return out


@dataclass(frozen=True)
class LeaksOutliers:
    leak: Bools
    match: list[str | None]  # 'pixels' | 'embedding' | None
    outlier_score: Floats
    outlier: Bools


def leaks_and_outliers(
    similarity: npt.ArrayLike,
    pixel_match: npt.ArrayLike,
    threshold: float = LEAK_THRESHOLD,
    raw_similarity: npt.ArrayLike | None = None,
) -> LeaksOutliers:
    """Leaks and outliers of val images from the (centred) cosine similarity to their nearest
    train image (NaN: none known), whether their input hash equals a train image's, and the raw
    cosine of the nearest stored neighbour the outlier score is taken over (default: the same)."""
    s = np.asarray(similarity, dtype=np.float64)
    raw = s if raw_similarity is None else np.asarray(raw_similarity, dtype=np.float64)
    pix = np.asarray(pixel_match, dtype=bool)
    by_emb = np.isfinite(s) & (s >= threshold)
    leak = pix | by_emb
    match: list[str | None] = [
        "pixels" if a else ("embedding" if b else None)
        for a, b in zip(pix.tolist(), by_emb.tolist(), strict=True)
    ]
    # the log distance to the nearest train image: distances are right-skewed (bounded at 0, a
    # long tail of far images), which on raw similarities makes the MAD rule flag the tail's
    # ordinary images (16 % of the demo's); the log makes the bulk near-symmetric
    z = modified_z(-np.log(np.clip(1.0 - raw, 1e-6, None)))
    outlier = np.isfinite(z) & (z < OUTLIER_Z)
    return LeaksOutliers(leak, match, z, outlier)


def accuracy_without(correct: npt.ArrayLike, drop: npt.ArrayLike) -> float | None:
    """Accuracy over the images not in ``drop`` (None when none is left)."""
    c = np.asarray(correct, dtype=bool)
    keep = ~np.asarray(drop, dtype=bool)
    return float(c[keep].mean()) if keep.any() else None
