"""The calibration and ranking tables through the store: written by publish, read by StoreReader.ranking,
absent (empty results) in a run computed before them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.support.synthetic import build_synthetic_store
from xaidash.store import open_store


def test_tables_round_trip(tmp_path: Path) -> None:
    (run_id,) = build_synthetic_store(
        tmp_path / "s", n_val=300, n_train=50, runs=1, emb_dim=8, with_thumbnails=False
    )
    (old,) = build_synthetic_store(
        tmp_path / "old", n_val=50, n_train=20, runs=1, emb_dim=8, with_thumbnails=False, ranking=False
    )
    with open_store(tmp_path / "s") as reader:
        rr = reader.ranking
        cal = rr.calibration(run_id)
        assert len(cal) == 15 and int(cal["bins"].iloc[0]) == 15 and int(cal["count"].sum()) == 300
        scores = rr.scores(run_id)
        assert set(scores) >= {"ece", "mce", "macro_roc_auc", "top1_accuracy", "top5_accuracy"}
        preds = reader.sql("SELECT label, probabilities, correct FROM predictions WHERE run_id = ?", [run_id])
        probs = np.stack(preds["probabilities"].to_numpy())
        y = preds["label"].to_numpy()
        assert scores["top1_accuracy"] == pytest.approx(preds["correct"].mean(), abs=1e-9)
        cr = rr.class_ranking(run_id)
        assert cr["roc_auc"].iloc[3] == pytest.approx(roc_auc_score(y == 3, probs[:, 3]), abs=1e-9)
        curves = rr.curves(run_id)
        assert set(curves["curve"]) == {"roc", "pr"}
        assert curves.groupby(["class", "curve"]).size().max() <= 201
        assert rr.has_ranking(run_id)
    with open_store(tmp_path / "old") as reader:
        rr = reader.ranking
        assert rr.scores(old) == {} and len(rr.calibration(old)) == 0 and not rr.has_ranking(old)
        assert rr.scores("nope") == {}
