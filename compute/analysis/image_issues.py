"""Image-property issues of val images, with thresholds relative to the data set.

The statistics are measured per image in the chunk (:mod:`xaidash.compute.analysis.image_facts`);
here each is compared with the data set's own median (train and val images together), as
CleanVision does for sizes, because a fixed cut-off would call every image of a night-sky or an
X-ray data set dark. An image gets an issue when:

* ``dark``: its 99th brightness percentile is below ``RATIO`` times the data set's median one;
* ``overexposed``: ``1 - p5`` of its brightness is below ``RATIO`` times the median ``1 - p5``;
* ``blurry``: its sharpness (Laplacian std / grayscale std) is below ``RATIO`` times the median;
* ``low_information``: its grayscale entropy is below ``RATIO`` times the median (a constant
  image has 0 bits);
* ``odd_size``: its area is more than ``SIZE_FACTOR`` times larger or smaller than the median
  area (CleanVision's factor 10);
* ``odd_aspect``: its aspect ratio (w / h) differs from the median one by more than a factor
  ``ASPECT_FACTOR``;
* ``grayscale``: it has no colour (``colour < GRAY_COLOUR``) while most of the data set has
  (median ``colour >= COLOUR_DATASET``): a grayscale data set flags nothing.

With fewer than ``MIN_IMAGES`` images no threshold is set (a median of a handful is no norm).
The thresholds actually used are returned as :class:`IssueRules` and recorded in the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from xaidash.constants import IMAGE_ISSUES

#: fraction of the data set's median below which a statistic is an issue
RATIO = 0.35
SIZE_FACTOR = 10.0
ASPECT_FACTOR = 2.0
#: mean channel spread below which an image has no colour, and the median above which a data set is in colour
GRAY_COLOUR = 0.01
COLOUR_DATASET = 0.05
MIN_IMAGES = 10
ISSUES = IMAGE_ISSUES

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class IssueRules:
    """Per issue, the statistic it is read from and its threshold (None: not judged)."""

    thresholds: dict[str, float | None] = field(default_factory=dict)
    images: int = 0


def _median(x: Floats) -> float | None:
    ok = x[np.isfinite(x)]
    return float(np.median(ok)) if ok.size else None


def issue_rules(facts: dict[str, Floats]) -> IssueRules:
    """The thresholds from the data set's statistics (``facts``: arrays over all its images,
    keys ``bright_p05 bright_p99 sharpness entropy colour width height``)."""
    n = int(facts["entropy"].size)
    if n < MIN_IMAGES:
        return IssueRules({k: None for k in ISSUES}, n)
    t: dict[str, float | None] = {}
    med = _median(facts["bright_p99"])
    t["dark"] = None if med is None else RATIO * med
    med = _median(1.0 - facts["bright_p05"])
    t["overexposed"] = None if med is None else RATIO * med
    med = _median(facts["sharpness"])
    t["blurry"] = None if med is None else RATIO * med
    med = _median(facts["entropy"])
    t["low_information"] = None if not med else RATIO * med
    area = facts["width"] * facts["height"]
    med = _median(area)
    t["odd_size"] = med or None
    aspect = facts["width"] / np.clip(facts["height"], 1, None)
    t["odd_aspect"] = _median(aspect)
    med = _median(facts["colour"])
    t["grayscale"] = GRAY_COLOUR if med is not None and med >= COLOUR_DATASET else None
    return IssueRules(t, n)


def image_issues(facts: dict[str, Floats], rules: IssueRules) -> list[list[str]]:
    """Per image of ``facts`` (same keys as :func:`issue_rules`), the issues it has, in ``ISSUES`` order."""
    n = int(facts["entropy"].size)
    t = rules.thresholds
    flags: dict[str, npt.NDArray[np.bool_]] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        dark = t.get("dark")
        flags["dark"] = facts["bright_p99"] < dark if dark is not None else np.zeros(n, bool)
        over = t.get("overexposed")
        flags["overexposed"] = (1.0 - facts["bright_p05"]) < over if over is not None else np.zeros(n, bool)
        blur = t.get("blurry")
        flags["blurry"] = facts["sharpness"] < blur if blur is not None else np.zeros(n, bool)
        low = t.get("low_information")
        flags["low_information"] = facts["entropy"] < low if low is not None else np.zeros(n, bool)
        area_med = t.get("odd_size")
        area = facts["width"] * facts["height"]
        flags["odd_size"] = (np.abs(np.log(area / area_med)) > np.log(SIZE_FACTOR)
                             if area_med else np.zeros(n, bool))
        aspect_med = t.get("odd_aspect")
        aspect = facts["width"] / np.clip(facts["height"], 1, None)
        flags["odd_aspect"] = (np.abs(np.log(aspect / aspect_med)) > np.log(ASPECT_FACTOR)
                               if aspect_med else np.zeros(n, bool))
        gray = t.get("grayscale")
        flags["grayscale"] = facts["colour"] < gray if gray is not None else np.zeros(n, bool)
    return [[k for k in ISSUES if bool(flags[k][i])] for i in range(n)]
