"""The overview's and the report's "Which method should I trust?" card, and its sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.dashboard.app import create_app, render
from xaidash.dashboard.figures_trust import plot_method_ranking
from xaidash.dashboard.pages.overview.recommendation import recommendation_sentence
from xaidash.dashboard.report.build import build_report
from xaidash.store import open_store

STATS_COLS = ["method", "other", "metric", "n", "mean", "ci_low", "ci_high", "p_value", "resamples", "seed"]


def text_of(component: Any) -> str:
    return json.dumps(component, cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)


def constructed() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score-CAM first; Grad-CAM and Grad-CAM++ tied in tier 2; CAM fails the sanity check."""
    stats = pd.DataFrame([
        ["scorecam", None, "road_gap", 100, 0.44, 0.41, 0.47, None, 2000, 0],
        ["gradcam", None, "road_gap", 100, 0.30, 0.27, 0.33, None, 2000, 0],
        ["gradcampp", None, "road_gap", 100, 0.29, 0.26, 0.32, None, 2000, 0],
        ["cam", None, "road_gap", 100, 0.50, 0.45, 0.55, None, 2000, 0],
        ["gradcam", "gradcampp", "road_gap", 100, 0.01, -0.02, 0.04, 0.41, 2000, 0],
    ], columns=STATS_COLS)
    ranking = pd.DataFrame({
        "method": ["scorecam", "gradcam", "gradcampp", "cam"], "position": [1, 2, 3, 4],
        "tier": [1, 2, 2, 3], "level": [0, 0, 0, 2], "passes_sanity": [True, True, True, False],
        "sanity_block": ["layer4", "layer4", "layer3", None], "beats_random": [True] * 4,
        "beats_centre": [True] * 4, "primary": ["road_gap"] * 4, "tie_metric": [None, None, "road_gap", None],
        "tie_p": [None, None, 0.41, None], "alpha": [0.05] * 4, "reason": ["r1", "r2", "r3", "r4"]})
    return stats, ranking


def test_sentence_names_the_most_faithful_and_the_indistinguishable() -> None:
    stats, ranking = constructed()
    assert recommendation_sentence(stats, ranking) == (
        "Score-CAM is the most faithful for this model (ROAD gap 0.44 ± 0.03); Grad-CAM and Grad-CAM++ "
        "are indistinguishable (p = 0.41); CAM fails the sanity check.")
    # a tie at the top is reported as a tie, not as a winner
    tied = ranking.assign(tier=[1, 1, 2, 3], tie_p=[None, 0.2, None, None])
    assert recommendation_sentence(stats, tied).startswith(
        "Score-CAM and Grad-CAM are the most faithful for this model and indistinguishable "
        "(ROAD gap 0.44 ± 0.03, 0.30 ± 0.03; p = 0.20)")
    # nobody through both gates: said so
    gated = ranking.assign(level=[1, 1, 1, 2])
    assert recommendation_sentence(stats, gated).startswith(
        "No method passes the sanity check and beats both baselines; Score-CAM comes first of the rest")
    assert recommendation_sentence(stats, ranking.iloc[0:0]) == ""


def test_figure_draws_the_cis_as_error_bars_in_rule_order() -> None:
    stats, ranking = constructed()
    fig = plot_method_ranking(stats, ranking)
    points = {x: (y, e, em) for tr in fig.data for x, y, e, em in
              zip(tr.x, tr.y, tr.error_y.array, tr.error_y.arrayminus, strict=True)}
    assert fig.layout.xaxis.categoryarray[0].startswith("Score-CAM")
    score = next(v for k, v in points.items() if k.startswith("Score-CAM"))
    assert score == pytest.approx((0.44, 0.03, 0.03))  # mean, then the CI above and below it
    cam = next(tr for tr in fig.data if any(str(x).startswith("CAM<") for x in tr.x))
    assert cam.marker.color == "#e74c3c"  # the sanity failure is drawn in the failure colour


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a store whose run has the method ranking, one computed before it existed)."""
    new = tmp_path_factory.mktemp("recommend")
    build_synthetic_store(new, n_val=60, n_train=30, runs=1, seed=11, emb_dim=8, trust=True)
    old = tmp_path_factory.mktemp("recommend-old")
    build_synthetic_store(old, n_val=40, n_train=20, runs=1, seed=12, emb_dim=8, ranking=False)
    return new, old


def _overview(path: Path, tmp: Path) -> str:
    app = create_app(path, selections_dir=tmp)
    return text_of(render(app.server.config["XAIDASH_STATE"], "/", ""))


def test_overview_card_renders_the_runs_sentence(stores: tuple[Path, Path], tmp_path: Path) -> None:
    new, _ = stores
    page = _overview(new, tmp_path)
    with open_store(new) as reader:
        run_id = str(reader.latest_run_id())
        stats, ranking = reader.ranking.method_stats(run_id), reader.ranking.method_ranking(run_id)
    assert len(ranking) == 4 and set(stats["resamples"]) == {300}
    sentence = recommendation_sentence(stats, ranking)
    assert "Which method should I trust?" in page and "overview-recommend-figure" in page
    assert json.dumps(sentence, ensure_ascii=False) in page
    # the synthetic CAM survives randomisation: the sentence and the table say so
    assert "CAM fails the sanity check" in sentence
    assert "error_y" in page and "overview-recommend-table" in page


def test_old_run_without_the_ranking_still_renders(stores: tuple[Path, Path], tmp_path: Path) -> None:
    _, old = stores
    page = _overview(old, tmp_path)
    assert "Recompute to get the ranking" in page
    assert "Most faithful for this model" in page  # the mean-rank fallback is still there


def test_report_has_the_card(stores: tuple[Path, Path]) -> None:
    new, old = stores
    with open_store(new) as reader:
        run_id = str(reader.latest_run_id())
        sentence = recommendation_sentence(reader.ranking.method_stats(run_id),
                                           reader.ranking.method_ranking(run_id))
        doc = build_report(reader, "latest", top_errors=0).html
    assert "Which method should I trust?" in doc
    assert sentence.replace("&", "&amp;") in doc
    with open_store(old) as reader:
        assert "Recompute to get the ranking" in build_report(reader, "latest", top_errors=0).html
