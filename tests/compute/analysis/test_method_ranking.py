"""Known answers of the method ranking: the bootstrap CI's coverage, the paired test, the rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaidash.compute.analysis.method_ranking import (
    bootstrap_mean,
    method_stats,
    paired_difference,
    per_image_scores,
    rank_methods,
    row_seed,
)
from xaidash.compute.pipeline.method_ranking_phase import ranking_frames, sanity_blocks
from xaidash.dashboard.pages.overview.recommendation import recommendation_sentence


def test_bootstrap_ci_covers_the_true_mean_in_about_95_percent_of_seeded_trials() -> None:
    # a skewed distribution (exponential, mean 2) so the percentile interval is really tested
    rng = np.random.default_rng(123)
    trials, hits = 200, 0
    for t in range(trials):
        est = bootstrap_mean(rng.exponential(2.0, 80), resamples=1000, seed=t)
        hits += est.low <= 2.0 <= est.high
    assert 0.91 <= hits / trials <= 0.99


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap() -> None:
    x = np.random.default_rng(9).gamma(2.0, 1.0, 300)
    ours = bootstrap_mean(x, resamples=4000, seed=0)
    ci = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile",
                         random_state=0).confidence_interval
    width = ci.high - ci.low
    assert ours.low == pytest.approx(ci.low, abs=0.05 * width)
    assert ours.high == pytest.approx(ci.high, abs=0.05 * width)


def test_shared_resampling_gives_every_pair_its_paired_bootstrap() -> None:
    # method_stats pairs methods on one shared resampling; a pair's own resampling agrees with it
    rng = np.random.default_rng(3)
    ids = [f"{i:016x}" for i in range(250)]
    base = rng.normal(0.5, 0.2, 250)
    scores = pd.DataFrame({"image_id": ids * 2, "method": ["a"] * 250 + ["b"] * 250, "metric": "ins_del",
                           "value": np.concatenate([base, base - 0.03 + rng.normal(0, 0.1, 250)])})
    st = method_stats(scores, ["a", "b"], [], resamples=4000)
    pair = st[st["other"] == "b"].iloc[0]
    own = paired_difference(base, scores["value"].to_numpy()[250:], 4000, 1)
    assert pair["mean"] == pytest.approx(own.mean)
    assert pair["ci_low"] == pytest.approx(own.low, abs=0.004)
    assert pair["ci_high"] == pytest.approx(own.high, abs=0.004)
    assert pair["p_value"] == pytest.approx(own.p_value, abs=0.02)


def test_bootstrap_is_seeded_and_handles_tiny_samples() -> None:
    x = np.random.default_rng(0).normal(size=50)
    assert bootstrap_mean(x, 500, 7) == bootstrap_mean(x, 500, 7)
    assert bootstrap_mean(x, 500, 7) != bootstrap_mean(x, 500, 8)
    one = bootstrap_mean([0.3, np.nan], 500, 0)
    assert one.n == 1 and one.mean == pytest.approx(0.3) and np.isnan(one.low)
    const = bootstrap_mean([0.5] * 10, 500, 0)
    assert (const.low, const.mean, const.high) == (0.5, 0.5, 0.5)
    assert bootstrap_mean([], 500, 0).n == 0


def test_paired_test_finds_no_difference_between_a_method_and_itself() -> None:
    x = np.random.default_rng(1).beta(2, 5, 300)
    est = paired_difference(x, x.copy(), 1000, 0)
    assert est.n == 300 and est.mean == 0 and (est.low, est.high) == (0, 0) and est.p_value == 1.0


def test_paired_test_separates_a_real_difference_and_agrees_with_a_t_test() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 0.2, 400)
    y = x - 0.05 + rng.normal(0, 0.1, 400)  # y is worse by 0.05 on every image, with noise
    est = paired_difference(x, y, 2000, 0)
    assert est.p_value is not None and est.p_value < 0.001
    assert est.low < 0.05 < est.high
    # with no true difference the bootstrap p-value is close to the paired t-test's
    z = x + rng.normal(0, 0.1, 400)
    est0 = paired_difference(x, z, 4000, 0)
    assert est0.p_value == pytest.approx(stats.ttest_rel(x, z).pvalue, abs=0.05)


def test_paired_test_uses_only_the_images_both_have() -> None:
    x = np.array([0.1, 0.2, 0.3, np.nan, 0.5])
    y = np.array([0.0, np.nan, 0.1, 0.4, 0.2])
    assert paired_difference(x, y, 200, 0).n == 3
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0], 200, 0)


def test_row_seed_is_stable_and_distinct() -> None:
    assert row_seed(0, "gradcam", None, "drop") == row_seed(0, "gradcam", None, "drop")
    assert row_seed(0, "gradcam", None, "drop") != row_seed(0, "gradcam", "cam", "drop")
    assert row_seed(0, "a", None, "drop") != row_seed(1, "a", None, "drop")


# ---- a constructed case -----------------------------------------------------------------------

EFFECT = {"best": 0.5, "mid1": 0.3, "mid2": 0.3, "weak": 0.05, "frozen": 0.45}


def constructed(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    """``best`` > ``mid1`` ~ ``mid2`` on every score; ``weak`` does not beat the centre Gaussian;
    ``frozen`` is good on ROAD but its map survives randomisation (fails the sanity check)."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:016x}" for i in range(n)]
    faith, road, sanity, base = [], [], [], []
    for m, e in EFFECT.items():
        for i in ids:
            faith.append({"image_id": i, "method": m, "drop": 0.5 - e / 2 + rng.normal(0, 0.1),
                          "increase": float(rng.random() < e),
                          "deletion_auc": 0.5 - e * 0.3 + rng.normal(0, 0.1),
                          "insertion_auc": 0.5 + e * 0.3 + rng.normal(0, 0.1)})
            for order, sign in (("morf", -1), ("lerf", 1)):
                for f in (0.1, 0.5, 0.9):
                    road.append({"image_id": i, "method": m, "order": order, "fraction": f,
                                 "probability": 0.5 + sign * e / 2 + rng.normal(0, 0.2)})
            for step, block in ((1, "fc"), (2, "layer4")):
                rho = 0.95 if m == "frozen" else 0.9 - 0.35 * step
                sanity.append({"image_id": i, "method": m, "step": step, "block": block,
                               "spearman": rho + rng.normal(0, 0.05)})
    for b, e in (("random", 0.0), ("centre", 0.15)):
        for i in ids:
            base.append({"image_id": i, "baseline": b, "drop": 0.5 - e / 2 + rng.normal(0, 0.1),
                         "increase": float(rng.random() < e),
                         "deletion_auc": 0.5 - e * 0.3 + rng.normal(0, 0.1),
                         "insertion_auc": 0.5 + e * 0.3 + rng.normal(0, 0.1)})
    return pd.DataFrame(faith), pd.DataFrame(base), pd.DataFrame(road), pd.DataFrame(sanity)


def test_ranking_rule_orders_a_constructed_case() -> None:
    faith, base, road, sanity = constructed()
    st, rk = ranking_frames(faith, base, road, sanity, list(EFFECT), resamples=1000)
    r = rk.set_index("method")
    assert list(rk["method"][:1]) == ["best"]
    assert set(rk["method"][1:3]) == {"mid1", "mid2"}  # indistinguishable: one tier, either order
    assert list(rk["method"][3:]) == ["weak", "frozen"]  # the gates, whatever their ROAD gap
    assert r.loc["mid1", "tier"] == r.loc["mid2", "tier"] == 2
    assert r.loc["best", "tier"] == 1 and r.loc["weak", "tier"] == 3 and r.loc["frozen", "tier"] == 4
    assert r.loc["frozen", "level"] == 2 and not r.loc["frozen", "passes_sanity"]
    assert r.loc["weak", "level"] == 1 and r.loc["weak", "beats_random"] and not r.loc["weak", "beats_centre"]
    assert all(r.loc[m, "passes_sanity"] and r.loc[m, "sanity_block"] == "layer4" for m in ("best", "mid1"))
    second = rk["method"].iloc[2]
    assert r.loc[second, "tie_metric"] == "road_gap" and r.loc[second, "tie_p"] >= 0.05
    assert "indistinguishable from" in r.loc[second, "reason"]
    assert "fails the sanity check" in r.loc["frozen", "reason"]
    assert "does not beat the centre Gaussian" in r.loc["weak", "reason"]
    # the frozen method's ROAD gap is second best: only the gate puts it last
    gap = st[(st["metric"] == "road_gap") & st["other"].isna()].set_index("method")["mean"]
    assert gap["frozen"] > gap["mid1"]
    # every CI holds its mean, and the resampling is recorded
    single = st[st["other"].isna()]
    assert ((single["ci_low"] <= single["mean"]) & (single["mean"] <= single["ci_high"])).all()
    assert set(st["resamples"]) == {1000} and set(st["seed"]) == {0}


def test_road_ties_are_broken_by_deletion_insertion() -> None:
    faith, base, road, sanity = constructed(n=150, seed=4)
    # same ROAD for two methods; mid2 clearly better on deletion/insertion
    mid2_road = road.loc[road["method"] == "mid2", "probability"].to_numpy()
    road.loc[road["method"] == "mid1", "probability"] = mid2_road
    faith.loc[faith["method"] == "mid2", "insertion_auc"] += 0.2
    _, rk = ranking_frames(faith, base, road, sanity, list(EFFECT), resamples=1000)
    r = rk.set_index("method")
    assert r.loc["mid2", "position"] < r.loc["mid1", "position"]
    assert r.loc["mid2", "tier"] < r.loc["mid1", "tier"]
    assert "Insertion − Deletion AUC below" in r.loc["mid1", "reason"]


def test_without_road_or_sanity_the_rule_falls_back_and_subsets_pair_on_common_images() -> None:
    faith, base, _, _ = constructed(n=120, seed=5)
    # an attribution method scored on a sample of 30 images only
    sample = faith[faith["method"] == "best"].head(30).assign(method="ig_black")
    faith = pd.concat([faith, sample], ignore_index=True)
    scores = per_image_scores(faith, base, pd.DataFrame())
    assert "road_gap" not in set(scores["metric"])
    methods = [*EFFECT, "ig_black"]
    st = method_stats(scores, methods, ["random", "centre"], resamples=500)
    pair = st[(st["method"] == "best") & (st["other"] == "ig_black") & (st["metric"] == "ins_del")].iloc[0]
    assert pair["n"] == 30 and pair["mean"] == 0 and pair["p_value"] == 1.0  # the same maps
    rk = rank_methods(st, methods, {})
    assert set(rk["primary"]) == {"ins_del"}
    assert rk["passes_sanity"].isna().all()  # not checked: no method is held back by that gate
    assert "sanity not checked" in rk["reason"].iloc[0]
    assert set(rk[rk["tier"] == 1]["method"]) >= {"best", "ig_black"}


def test_methods_without_road_follow_the_rest_and_tie_on_deletion_insertion() -> None:
    """The demo's case: ROAD on the CAMs, two pixel attributions on a sample that missed the ROAD
    sample. They come after every method with a ROAD gap, say why, and a tie between them is
    reported with the test that made it (Insertion - Deletion AUC), not as "p n/a"."""
    faith, base, road, sanity = constructed(n=120, seed=6)
    sample = faith[faith["method"] == "mid1"].head(40)
    better = faith[faith["method"] == "best"].head(40).assign(method="ig_blur")
    better["insertion_auc"] += 0.3
    faith = pd.concat([faith, sample.assign(method="ig_black"), sample.assign(method="smoothgrad"), better],
                      ignore_index=True)
    methods = [*EFFECT, "ig_black", "smoothgrad", "ig_blur"]
    st, rk = ranking_frames(faith, base, road, sanity, methods, resamples=500)
    r = rk.set_index("method")
    assert set(rk[rk["level"] == 0]["method"].iloc[-3:]) == {"ig_black", "smoothgrad", "ig_blur"}
    first, second = rk[rk["method"].isin(["ig_black", "smoothgrad"])]["method"]
    assert r.loc[first, "tier"] == r.loc[second, "tier"] == r.loc["ig_blur", "tier"] + 1
    assert "no ROAD gap measured, so after the methods with one" in r.loc["ig_blur", "reason"]
    below = "no ROAD gap measured; Insertion − Deletion AUC below IG (blur)'s (p < 0.001)"
    assert below in r.loc[first, "reason"]
    assert r.loc[second, "tie_metric"] == "ins_del" and r.loc[second, "tie_p"] == 1.0  # the same maps
    assert "ROAD gap p n/a" not in r.loc[second, "reason"]
    assert "p n/a" not in " ".join(rk["reason"])
    assert "Insertion − Deletion AUC p = 1.00" in r.loc[second, "reason"]
    sentence = recommendation_sentence(st, rk)
    assert "IG (black) and SmoothGrad are indistinguishable (Insertion − Deletion AUC p = 1.00)" in sentence \
        or "SmoothGrad and IG (black) are indistinguishable (Insertion − Deletion AUC p = 1.00)" in sentence
    assert "p n/a" not in sentence and "ig_black" not in sentence


def test_sanity_blocks_apply_the_dashboards_rule_to_per_step_means() -> None:
    sanity = pd.DataFrame({"image_id": ["a", "b"] * 4, "method": ["m"] * 4 + ["k"] * 4,
                           "step": [1, 1, 2, 2] * 2, "block": ["fc", "fc", "layer4", "layer4"] * 2,
                           "spearman": [0.5, 0.3, 0.35, 0.2, 0.9, 0.9, 0.8, None]})
    # m: step means 0.40, 0.275 -> passes at layer4 (one image's 0.3 alone does not count); k never
    assert sanity_blocks(sanity) == {"m": "layer4", "k": None}
