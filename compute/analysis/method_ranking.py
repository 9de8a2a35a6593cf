"""Which method to trust: per-method means with 95 % bootstrap confidence intervals over images,
paired tests between methods on the images they share, and the ranking rule (docs/METHODS.md,
"Which method should I trust?").

Pure numpy / scipy / pandas over the per-image trust tables (no torch); the global phase calls it
(:mod:`xaidash.compute.pipeline.method_ranking_phase`) and stores what it returns, so the numbers
are seeded and recorded with the run. It is generic over whatever methods the tables contain, and a
method that covers only some images (an attribution sample) is compared on the images both have.

* **Bootstrap** (Efron & Tibshirani 1993): percentile intervals over :data:`RESAMPLES` resamples
  of the images, one resampling shared by every method scored on the same images
  (:func:`resampled_means`). Percentile, not BCa: BCa's jackknife costs n extra means per
  interval, and with hundreds of images the two agree to the digits shown.
* **Paired test**: the paired bootstrap of the mean difference method - other on the common
  images, with the two-sided p-value of a zero difference read off the same resampled means
  (2 x the smaller share on either side of 0). Chosen over Wilcoxon's signed-rank test because it
  tests the *mean*, the number the card ranks and draws, needs no symmetric distribution of the
  differences, and copes with the 0/1 Increase-in-Confidence score and its many zero differences
  (which Wilcoxon discards); chosen over scipy's permutation test because that costs one fresh
  resampling per pair (bench/method_ranking.py), whereas the paired bootstrap over a shared
  resampling costs nothing per pair, and a run compares every pair of up to a dozen methods on six
  metrics.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from xaidash.constants import FAITHFULNESS_DIRECTIONS, FAITHFULNESS_SCORES, METHOD_METRICS, method_label
from xaidash.store.read.trust_tables import beats_baseline

#: Bootstrap resamples of the images, the seed of the resampling, the confidence level and the
#: significance level of the paired tests (recorded in the tables).
RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05
#: Higher is better for every metric but these (Average Drop, Deletion AUC, ROAD MoRF).
LOWER_IS_BETTER = frozenset({"drop", "deletion_auc", "road_morf"})
#: The metrics every pair of methods is tested on (ROAD's MoRF and LeRF are in the gap).
PAIR_METRICS: tuple[str, ...] = ("road_gap", "ins_del", *FAITHFULNESS_SCORES)
#: resampled values held at once (scipy's ``batch``): ~64 MB of float64 whatever the image count
_BATCH_VALUES = 8_000_000

STATS_COLUMNS = ["method", "other", "metric", "n", "mean", "ci_low", "ci_high", "p_value", "resamples",
                 "seed"]
RANKING_COLUMNS = ["method", "position", "tier", "level", "passes_sanity", "sanity_block", "beats_random",
                   "beats_centre", "primary", "tie_metric", "tie_p", "alpha", "reason"]
METRIC_LABELS = {"drop": "Average Drop", "increase": "Increase in Confidence", "deletion_auc": "Deletion AUC",
                 "insertion_auc": "Insertion AUC", "ins_del": "Insertion − Deletion AUC",
                 "road_morf": "ROAD MoRF", "road_lerf": "ROAD LeRF", "road_gap": "ROAD gap"}


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` images with its CI (NaN when undefined), and a pair's p-value."""

    n: int
    mean: float
    low: float
    high: float
    p_value: float | None = None


def row_seed(seed: int, *names: str | None) -> int:
    """A generator seed per row, from the run's ``seed`` and the row's names: the same row gets
    the same resamples whatever else the run contains (crc32: stable across processes, unlike
    ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32("\0".join(n or "" for n in names).encode())) % 2**63


def resampled_means(x: npt.ArrayLike, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, K]``: the means of the ``K`` columns of ``x`` (``[N, K]``, finite) over
    ``resamples`` bootstrap resamples of its ``N`` rows, **the same rows for every column**.

    Hand-written rather than ``scipy.stats.bootstrap`` because of that sharing: scipy draws fresh
    resamples per call, whereas with one draw per image set every pair's paired bootstrap is the
    difference of two of these columns, so a run's M methods cost M resampled means instead of
    M² paired resamplings (bench/method_ranking.py measures both). The interval is the same
    percentile interval (``tests/compute/analysis/test_method_ranking.py`` checks it against scipy's).
    """
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(len(a), -1)
    n, k = a.shape
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, k))
    step = max(1, _BATCH_VALUES // max(1, n * k))  # resamples per batch: bounded memory
    for s in range(0, resamples, step):
        idx = rng.integers(0, n, size=(min(step, resamples - s), n))
        out[s:s + len(idx)] = a[idx].mean(axis=1)
    return out


def _interval(dist: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(dist, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def _single(x: np.ndarray, dist: np.ndarray) -> Estimate:
    """A column's mean and percentile CI from its resampled means (no CI below two values)."""
    if x.size == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    if x.size < 2:
        return Estimate(1, float(x.mean()), math.nan, math.nan)
    return Estimate(int(x.size), float(x.mean()), *_interval(dist))


def _pair(x: np.ndarray, y: np.ndarray, dist_x: np.ndarray, dist_y: np.ndarray) -> Estimate:
    """Mean of ``x - y``, the CI and the two-sided p-value of a zero mean difference from the
    resampled mean differences ``dist_x - dist_y`` (2 x the smaller share on either side of 0):
    identical maps give a difference of exactly 0 everywhere, hence p = 1."""
    if x.size == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float((x - y).mean())
    if x.size < 2:
        return Estimate(1, mean, math.nan, math.nan)
    d = dist_x - dist_y
    p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return Estimate(int(x.size), mean, *_interval(d), p)


def bootstrap_mean(x: npt.ArrayLike, resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """Mean of the finite values of ``x`` and its 95 % percentile bootstrap CI (NaN CI below two
    values; a constant sample's CI is that constant)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    dist = resampled_means(a, resamples, seed)[:, 0] if a.size >= 2 else np.zeros(0)
    return _single(a, dist)


def paired_difference(x: npt.ArrayLike, y: npt.ArrayLike, resamples: int = RESAMPLES,
                      seed: int = SEED) -> Estimate:
    """Mean of ``x - y`` over the pairs where both are finite, its 95 % bootstrap CI and the
    two-sided paired-bootstrap p-value of a zero mean difference (module docstring)."""
    xa, ya = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"paired samples must have the same length, got {xa.size} and {ya.size}")
    both = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[both], ya[both]
    if xa.size < 2:
        return _pair(xa, ya, np.zeros(0), np.zeros(0))
    # the mean of the resampled differences is the difference of the resampled means: one column
    dist = resampled_means(xa - ya, resamples, seed)[:, 0]
    return _pair(xa, ya, dist, np.zeros_like(dist))


# ---- per-image scores -----------------------------------------------------------------------


def per_image_scores(faithfulness: pd.DataFrame, baselines: pd.DataFrame, road: pd.DataFrame) -> pd.DataFrame:
    """Long table ``image_id, method, metric, value`` of every metric in
    :data:`~xaidash.constants.METHOD_METRICS`: the faithfulness scores and Insertion - Deletion AUC
    per image x method (and per image x baseline, the baseline's name as the method), ROAD's MoRF
    and LeRF means over the removal fractions and their gap per image x method."""
    parts = []
    for df, key in ((faithfulness, "method"), (baselines, "baseline")):
        if len(df):
            wide = df.rename(columns={key: "method"})[["image_id", "method", *FAITHFULNESS_SCORES]].copy()
            wide["ins_del"] = wide["insertion_auc"] - wide["deletion_auc"]
            parts.append(wide.melt(id_vars=["image_id", "method"], var_name="metric", value_name="value"))
    if len(road):
        per = (road.groupby(["image_id", "method", "order"], sort=False)["probability"].mean()
               .unstack("order"))
        if "morf" in per and "lerf" in per:
            r = pd.DataFrame({"road_morf": per["morf"], "road_lerf": per["lerf"],
                              "road_gap": per["lerf"] - per["morf"]}).reset_index()
            parts.append(r.melt(id_vars=["image_id", "method"], var_name="metric", value_name="value"))
    if not parts:
        return pd.DataFrame(columns=["image_id", "method", "metric", "value"])
    out = pd.concat(parts, ignore_index=True)
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype(np.float64)
    return out.dropna(subset=["value"]).reset_index(drop=True)


def method_stats(scores: pd.DataFrame, methods: Sequence[str], baselines: Sequence[str],
                 resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """The ``method_stats`` rows (without run_id) of :func:`per_image_scores`' table: every
    method's and baseline's mean and CI per metric, every pair of ``methods`` on
    :data:`PAIR_METRICS` and every method against every baseline on the faithfulness scores and
    Insertion - Deletion AUC, paired on the images both have."""
    rows: list[dict[str, object]] = []

    def add(method: str, other: str | None, metric: str, est: Estimate) -> None:
        rows.append({"method": method, "other": other, "metric": metric, "n": est.n,
                     "mean": _none(est.mean), "ci_low": _none(est.low), "ci_high": _none(est.high),
                     "p_value": est.p_value, "resamples": resamples, "seed": seed})

    for metric in METHOD_METRICS:
        wide = scores[scores["metric"] == metric].pivot_table(
            index="image_id", columns="method", values="value", aggfunc="mean")
        if wide.empty:
            continue
        have = [m for m in (*methods, *baselines) if m in wide]
        # columns with the same images share one resampling of them (resampled_means)
        groups: dict[bytes, list[str]] = {}
        for m in have:
            groups.setdefault(wide[m].notna().to_numpy().tobytes(), []).append(m)
        dist: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        group_of: dict[str, int] = {}
        for g, cols in enumerate(groups.values()):
            block = wide.loc[wide[cols[0]].notna(), cols].to_numpy(np.float64)
            draws = (resampled_means(block, resamples, row_seed(seed, None, cols[0], metric))
                     if len(block) >= 2 else np.zeros((0, len(cols))))
            for j, m in enumerate(cols):
                dist[m], values[m], group_of[m] = draws[:, j], block[:, j], g
                add(m, None, metric, _single(block[:, j], draws[:, j]))
        pairs = ([(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
                 if metric in PAIR_METRICS else [])
        if metric in (*FAITHFULNESS_SCORES, "ins_del"):
            pairs += [(m, b) for m in methods for b in baselines]
        for a, b in pairs:
            if a not in values or b not in values:
                continue
            if group_of[a] == group_of[b]:  # the same images: the shared resampling is the paired one
                add(a, b, metric, _pair(values[a], values[b], dist[a], dist[b]))
            else:  # a subset method: its own paired resampling of the images both have
                add(a, b, metric, paired_difference(wide[a].to_numpy(), wide[b].to_numpy(), resamples,
                                                    row_seed(seed, a, b, metric)))
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def _none(x: float) -> float | None:
    return None if math.isnan(x) else x


# ---- the ranking rule -------------------------------------------------------------------------


class _Lookup:
    """Means and pair tests of a ``method_stats`` frame, by (method, metric) and either pair order."""

    def __init__(self, st: pd.DataFrame) -> None:
        self.single: dict[tuple[str, str], float] = {}
        self.pair: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}
        for r in st.to_dict("records"):
            mean = None if pd.isna(r["mean"]) else float(r["mean"])
            if r["other"] is None or pd.isna(r["other"]):
                if mean is not None:
                    self.single[(str(r["method"]), str(r["metric"]))] = mean
            else:
                p = None if r["p_value"] is None or pd.isna(r["p_value"]) else float(r["p_value"])
                a, b, metric = str(r["method"]), str(r["other"]), str(r["metric"])
                self.pair[(a, b, metric)] = (mean, p)
                self.pair[(b, a, metric)] = (None if mean is None else -mean, p)

    def mean(self, method: str, metric: str) -> float | None:
        return self.single.get((method, metric))

    def p(self, a: str, b: str, metric: str) -> float | None:
        return self.pair.get((a, b, metric), (None, None))[1]

    def margin(self, a: str, b: str, metric: str) -> float | None:
        return self.pair.get((a, b, metric), (None, None))[0]


def _score(lk: _Lookup, m: str, metric: str) -> float:
    """The method's mean on ``metric``, signed so that higher is better (NaN when missing)."""
    v = lk.mean(m, metric)
    return math.nan if v is None else (-v if metric in LOWER_IS_BETTER else v)


def _tiers(lk: _Lookup, ms: list[str], metric: str, alpha: float) -> list[list[str]]:
    """``ms`` best first on ``metric``, cut into tiers: a method joins the tier of the best one
    above it unless their paired test separates them (p < alpha); one without the metric, or
    without images in common, cannot be told apart and joins the tier too, except that methods
    with no score at all come last, in a tier of their own."""
    def key(m: str) -> tuple[bool, float]:
        v = _score(lk, m, metric)
        return math.isnan(v), -np.nan_to_num(v)

    order = sorted(ms, key=key)
    out: list[list[str]] = []
    for m in order:
        if out and not math.isnan(_score(lk, m, metric)):
            p = lk.p(out[-1][0], m, metric)
            if p is None or p >= alpha:
                out[-1].append(m)
                continue
        elif out and math.isnan(_score(lk, out[-1][0], metric)):
            out[-1].append(m)
            continue
        out.append([m])
    return out


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2f}" if p >= 0.01 else f"p = {p:.3f}"


def rank_methods(st: pd.DataFrame, methods: Sequence[str], sanity: Mapping[str, str | None],
                 alpha: float = ALPHA) -> pd.DataFrame:
    """The ``method_ranking`` rows (without run_id) of ``methods`` (docs/METHODS.md):

    1. **Gates**, in order: a method that fails the sanity check (``sanity[m]`` is None: no block's
       randomisation brought its mean Spearman correlation below the pass line) comes last
       (level 2); one that passes but does not beat both baselines (the baseline rule on its paired
       margins over the random map and the centre Gaussian) comes next (level 1); the rest are
       level 0. A method missing from ``sanity`` (not checked) or without baseline scores is not
       held back by that gate.
    2. Within a level, by the **ROAD gap** (LeRF - MoRF, higher is better), cut into tiers by the
       paired tests (:func:`_tiers`); without ROAD scores in the run, by Insertion - Deletion AUC.
    3. Within a ROAD tier, by **Insertion - Deletion AUC**, cut again the same way. Methods left in
       one tier are *indistinguishable*: the card reports them together, not in noise's order.
    """
    lk = _Lookup(st)
    primary = "road_gap" if any(lk.mean(m, "road_gap") is not None for m in methods) else "ins_del"
    secondary = "ins_del" if primary == "road_gap" else None
    facts: dict[str, dict[str, object]] = {}
    for m in methods:
        checked = m in sanity
        passes = (sanity[m] is not None) if checked else None
        beats: dict[str, bool | None] = {}
        for b in ("random", "centre"):
            margins = [None if (v := lk.margin(m, b, s)) is None else d * v
                       for s, d in FAITHFULNESS_DIRECTIONS.items()]
            beats[b] = beats_baseline(margins) if any(v is not None for v in margins) else None
        level = 2 if passes is False else 1 if False in beats.values() else 0
        facts[m] = {"passes_sanity": passes, "sanity_block": sanity.get(m), "beats_random": beats["random"],
                    "beats_centre": beats["centre"], "level": level}
    tiers: list[list[str]] = []
    for level in (0, 1, 2):
        ms = [m for m in methods if facts[m]["level"] == level]
        for t in _tiers(lk, ms, primary, alpha):
            tiers.extend(_tiers(lk, t, secondary, alpha) if secondary and len(t) > 1 else [t])
    rows = []
    position = 0
    prev: tuple[str, object] | None = None  # the previous tier's top and its level
    for k, tier in enumerate(tiers, start=1):
        for j, m in enumerate(tier):
            position += 1
            f = facts[m]
            tie_metric, tie_p = (None, None) if j == 0 else _tie(lk, tier[0], m, (primary, secondary))
            rows.append({"method": m, "position": position, "tier": k, **f, "primary": primary,
                         "tie_metric": tie_metric, "tie_p": tie_p, "alpha": alpha,
                         "reason": _reason(lk, m, f, tier[0], prev, (primary, secondary), alpha)})
        prev = (tier[0], facts[tier[0]]["level"])
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def _tie(lk: _Lookup, top: str, m: str, metrics: tuple[str, str | None]) -> tuple[str, float | None]:
    """The test that keeps ``m`` in ``top``'s tier: on the primary metric, or, where the two have no
    primary scores in common (a pixel attribution without ROAD), on the secondary one."""
    primary, secondary = metrics
    p = lk.p(top, m, primary)
    if p is None and secondary and (p2 := lk.p(top, m, secondary)) is not None:
        return secondary, p2
    return primary, p


def _reason(lk: _Lookup, m: str, f: Mapping[str, object], top: str, prev: tuple[str, object] | None,
            metrics: tuple[str, str | None], alpha: float) -> str:
    """Why ``m`` is where it is: its gates, then how it compares with its tier's ``top`` or, for a
    tier's top, with the top of the tier above (``prev``: its method and level)."""
    primary, secondary = metrics
    if f["passes_sanity"] is False:
        gate = "fails the sanity check (its map survives the randomisation of every block)"
    else:
        sanity = (f"passes the sanity check (at {f['sanity_block']})" if f["passes_sanity"]
                  else "sanity not checked")
        lost = [name for key, name in (("beats_random", "the random map"),
                                       ("beats_centre", "the centre Gaussian")) if f[key] is False]
        known = f["beats_random"] is not None
        gate = sanity + ("; does not beat " + " or ".join(lost) if lost else
                         "; beats both baselines" if known else "; no baseline scores")
    if top != m:
        tests = [f"{METRIC_LABELS[x]} {_fmt_p(p)}" for x in (primary, secondary)
                 if x and (p := lk.p(top, m, x)) is not None]
        return (f"{gate}; indistinguishable from {method_label(top)} "
                f"({', '.join(tests) if tests else 'no scores in common to test'})")
    if prev is None or prev[1] != f["level"]:
        return f"{gate}; best {METRIC_LABELS[primary]} of its gate"
    if lk.mean(m, primary) is None:
        # e.g. a pixel attribution whose small sample missed the ROAD sample: it follows every
        # method with a gap, and one without is ordered on the secondary metric alone
        if lk.mean(prev[0], primary) is not None:
            return f"{gate}; no {METRIC_LABELS[primary]} measured, so after the methods with one"
        if secondary:
            return (f"{gate}; no {METRIC_LABELS[primary]} measured; {METRIC_LABELS[secondary]} below "
                    f"{method_label(prev[0])}'s ({_fmt_p(lk.p(prev[0], m, secondary))})")
    p1 = lk.p(prev[0], m, primary)
    if secondary and (p1 is None or p1 >= alpha):
        return (f"{gate}; {METRIC_LABELS[primary]} indistinguishable from {method_label(prev[0])}'s "
                f"({_fmt_p(p1)}), "
                f"{METRIC_LABELS[secondary]} below it ({_fmt_p(lk.p(prev[0], m, secondary))})")
    return f"{gate}; {METRIC_LABELS[primary]} below {method_label(prev[0])}'s ({_fmt_p(p1)})"
