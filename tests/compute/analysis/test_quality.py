"""Known-answer tests of the data-quality step: label flips, leaks, outliers, error clusters.

The label-issue and cluster tests build data whose answer is known by construction (5 flipped
labels; errors drawn from two distinct patterns); the job test runs ``xaidash compute`` on a
generated ImageFolder with 3 val images copied from train and one pure-noise val image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.support.imagegen import make_imagefolder
from tests.support.jobs import small_job
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.compute.analysis.clusters import cluster_cell, error_clusters
from xaidash.compute.analysis.quality import (
    accuracy_without,
    label_issues,
    loo_nearest_within_class,
    percentile_in,
    quantile_rule,
)
from xaidash.compute.datasets.imageset import input_hashes
from xaidash.compute.pipeline.job import JobConfig, run_job
from xaidash.errors import UserError
from xaidash.store.read.reader import open_store


def _blobs(n_per_class: int, n_classes: int, rng: np.random.Generator, spread: float = 1.0) -> tuple[
    np.ndarray, np.ndarray
]:
    centres = rng.normal(0, 4, (n_classes, 8))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, spread, (y.size, 8)), y


def test_five_flipped_labels_rank_at_the_top() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x_train, y_train = _blobs(100, 4, rng)
    centres_rng = np.random.default_rng(0)  # same centres for val: same generating process
    x_val, y_val = _blobs(60, 4, centres_rng)
    probs = LogisticRegression(max_iter=2000).fit(x_train, y_train).predict_proba(x_val)
    assert (probs.argmax(1) == y_val).mean() > 0.95  # the model has learned the data
    flips = rng.choice(y_val.size, 5, replace=False)
    noisy = y_val.copy()
    noisy[flips] = (noisy[flips] + rng.integers(1, 4, 5)) % 4
    li = label_issues(noisy, probs)
    ranked = np.argsort(li.quality, kind="stable")
    assert set(ranked[:5].tolist()) == set(flips.tolist())
    assert li.flagged[flips].all()
    assert li.flagged.sum() <= 8  # few false alarms among the 235 clean labels
    assert (li.suggested[flips] == y_val[flips]).all()  # the data suggests the original class
    assert (li.suggested[~li.flagged] == -1).all()


def test_label_issues_degenerate_inputs() -> None:
    empty = label_issues(np.zeros(0, np.int64), np.zeros((0, 3)))
    assert empty.quality.size == 0
    one_class = label_issues(np.zeros(4, np.int64), np.full((4, 2), 0.5))
    assert not one_class.flagged.any() and np.allclose(one_class.quality, 0.5)


def test_reference_rules_need_enough_images_and_flag_the_far_ones() -> None:
    rng = np.random.default_rng(1)
    # 2 classes of 400 clustered train embeddings; the reference is each one's nearest other
    centres = rng.normal(0, 1, (2, 16)).astype(np.float32) * 4
    y = np.repeat([0, 1], 400)
    train = centres[y] + rng.normal(0, 1, (800, 16)).astype(np.float32)
    ref = loo_nearest_within_class(train, np.zeros(16, np.float32), np.arange(800), y, np.arange(800))
    assert np.isfinite(ref).all() and (ref < 1).all()
    # brute force: the same numbers
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    sim = unit @ unit.T
    sim[~(y[:, None] == y[None, :])] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    assert np.allclose(ref, sim.max(axis=1), atol=1e-5)
    low = quantile_rule("outlier", ref, 0.005)
    assert low.threshold is not None and low.needed == 200 and low.reference == 800
    assert percentile_in([low.threshold - 1e-6], ref)[0] <= 0.005
    few = quantile_rule("outlier", ref[:12], 0.005)
    assert few.threshold is None and few.reference == 12  # 12 images: no quantile, no flags
    assert quantile_rule("lookalike", ref, 0.999).threshold is None  # 800 < 1000
    extreme = quantile_rule("lookalike", ref, 0.999, extreme=True)  # the maximum stands in
    assert extreme.extreme and extreme.threshold == pytest.approx(float(ref.max()))
    assert quantile_rule("lookalike", ref[:12], 0.999, extreme=True).threshold is None
    assert accuracy_without([True, False, True], [False, True, False]) == 1.0
    assert accuracy_without([True], [True]) is None


def test_input_hash_is_per_image_and_exact() -> None:
    import torch

    x = torch.rand(3, 3, 4, 4)
    x[2] = x[0]
    h = input_hashes(x)
    assert h[0] == h[2] != h[1] and all(len(v) == 16 for v in h)


def test_two_patterns_in_one_cell_give_two_clusters() -> None:
    rng = np.random.default_rng(3)
    dim = 32
    pattern_a, pattern_b = np.abs(rng.normal(0, 1, dim)), np.abs(rng.normal(0, 1, dim))
    # 30 correct images of class 0 and 1; 12 + 9 errors 0 -> 1 from two distinct patterns;
    # 7 errors 1 -> 0 from one pattern; 3 errors 0 -> 2 (below the minimum)
    parts = [
        (np.abs(rng.normal(0, 1, (30, dim))), 0, 0),
        (pattern_a + rng.normal(0, 0.05, (12, dim)), 0, 1),
        (pattern_b + rng.normal(0, 0.05, (9, dim)), 0, 1),
        (pattern_a * 0.5 + pattern_b + rng.normal(0, 0.05, (7, dim)), 1, 0),
        (np.abs(rng.normal(0, 1, (3, dim))), 0, 2),
    ]
    vectors = np.concatenate([p[0] for p in parts]).astype(np.float32)
    labels = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    preds = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    cells = {(c.true_class, c.pred_class): c for c in error_clusters(vectors, labels, preds, min_errors=6)}
    assert set(cells) == {(0, 1), (1, 0)}
    cell = cells[(0, 1)]
    assert cell.k == 2 and cell.silhouette is not None and cell.silhouette > 0.5
    a_rows, b_rows = set(range(30, 42)), set(range(42, 51))
    assert [set(m.tolist()) for m in cell.members] == [a_rows, b_rows]  # largest first
    assert set(cell.representatives[0].tolist()) <= a_rows and len(cell.representatives[0]) == 3
    assert cells[(1, 0)].k == 1 and cells[(1, 0)].silhouette is None  # one pattern: one cluster
    k, _, lab = cluster_cell(np.ones((5, 4), np.float32))  # identical rows: nothing to split
    assert k == 1 and lab.tolist() == [0] * 5


# ---------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """An ImageFolder with 3 val images copied from train and one noise image in val."""
    # 100 train images per class: enough for the outlier rule's 0.5 % quantile (200 needed)
    root = make_imagefolder(tmp_path_factory.mktemp("leaky"), CLASSES, n_train=100, n_val=8, size=SIZE)
    copies = {}  # val source -> the train source it copies
    for j in range(3):
        c = CLASSES[j % 2]
        shutil.copy(root / "train" / c / f"{c}_{j:04d}.png", root / "val" / c / f"copy_{j}.png")
        copies[f"val/{c}/copy_{j}.png"] = f"train/{c}/{c}_{j:04d}.png"
    noise = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "val" / "left" / "noise.png")
    return root, copies, "val/left/noise.png"


def test_job_flags_copied_images_as_leaks_and_noise_as_outlier(
    leaky: tuple[Path, dict[str, str], str], tmp_path: Path
) -> None:
    root, copies, noise = leaky
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    # the data-quality rules alone: two methods, no trust checks, no attributions
    cfg = small_job(root, tmp_path / "store", ckpt, batch_size=8, chunk_size=8, methods=("cam", "gradcam"),
                    faithfulness_steps=2, twins=3, cluster_min_errors=2, sanity_images=0, road_fractions=())
    assert run_job(cfg).ok
    with open_store(tmp_path / "store") as r:
        rid = r.latest_run_id()
        assert rid is not None
        run_dir = str(tmp_path / "store" / "runs" / rid)
        q = r.sql(
            "SELECT q.*, i.source, p.correct, p.label, p.pred FROM read_parquet(?) q "
            "JOIN images i USING (image_id) JOIN read_parquet(?) p USING (image_id)",
            [f"{run_dir}/quality.parquet", f"{run_dir}/predictions.parquet"],
        )
        assert len(q) == 8 * 2 + 4
        leaks = q[q["leak"]]
        assert sorted(leaks["source"]) == sorted(copies)
        assert set(leaks["leak_match"]) == {"pixels"} and (leaks["leak_distance"] == 0).all()
        assert not q.loc[q["leak"], "lookalike"].any()  # a copy is a leak, not also a look-alike
        train_src = r.sql("SELECT image_id, source FROM images WHERE split = 'train'")
        by_id = dict(zip(train_src["image_id"], train_src["source"], strict=True))
        for _, row in leaks.iterrows():  # the pair shown is the copy's original
            assert by_id[row["leak_train_id"]] == copies[row["source"]]
        summary = r.quality_summary(rid)
        assert summary["leaks"] == summary["pixel_leaks"] == 3
        expected = q.loc[~q["leak"], "correct"].astype(float).mean()
        assert summary["accuracy_without_leaks"] == pytest.approx(expected)
        assert summary["accuracy"] == pytest.approx(q["correct"].astype(float).mean())
        out = q[q["outlier"]]
        assert noise in set(out["source"])
        rules = r.sql("SELECT * FROM read_parquet(?)", [f"{run_dir}/quality_rules.parquet"]).set_index("rule")
        assert rules.loc["outlier", "reference"] == 200 and rules.loc["outlier", "threshold"] is not None
        # the three copies also give the train set's near-duplicate groups nothing: they are in val
        dups = r.sql("SELECT * FROM read_parquet(?)", [f"{run_dir}/duplicates.parquet"])
        assert set(dups["split"]) <= {"val", "train"}
        assert len(out) <= 2  # an untrained network: the 0.5 % quantile of 200 is their minimum
        assert q.loc[q["source"] == noise, "outlier_score"].iloc[0] == q["outlier_score"].min()
        # label quality is cleanlab's self-confidence p[label] of the stored probabilities
        probs = r.sql("SELECT image_id, label, probabilities FROM read_parquet(?)",
                      [f"{run_dir}/predictions.parquet"])
        pl = {i: float(p[lab]) for i, lab, p in zip(probs["image_id"], probs["label"], probs["probabilities"],
                                                    strict=True)}
        assert np.allclose(q["label_quality"], [pl[i] for i in q["image_id"]], atol=1e-5)
        _check_clusters(r, rid, run_dir, q)


def _check_clusters(r: object, rid: str, run_dir: str, q: pd.DataFrame) -> None:
    """Every clustered cell: sizes add up to its errors, members agree with the quality table,
    and each mean map is the mean of the members' stored maps."""
    cl = r.sql("SELECT * FROM read_parquet(?)", [f"{run_dir}/error_clusters.parquet"])  # type: ignore[attr-defined]
    wrong = q[q["correct"] == False]  # noqa: E712 - pandas
    cells = wrong.groupby(["label", "pred"]).size()
    assert len(cl), "the untrained model makes errors: some cell has >= 2 of them"
    cams = r.sql("SELECT image_id, method, map FROM read_parquet(?) WHERE target_kind = 'pred'",  # type: ignore[attr-defined]
                 [f"{run_dir}/cams.parquet"])
    for (t, p), g in cl.groupby(["true_class", "pred_class"]):
        sizes = g.drop_duplicates("cluster")["size"]
        assert int(sizes.sum()) == int(cells[(t, p)])
        members = wrong[(wrong["label"] == t) & (wrong["pred"] == p)]
        assert members["error_cluster"].notna().all()
        for _, row in g.iterrows():
            ids = set(members.loc[members["error_cluster"] == row["cluster"], "image_id"])
            assert set(row["representative_ids"]) <= ids and len(ids) == row["size"]
            maps = cams[(cams["method"] == row["method"]) & cams["image_id"].isin(ids)]["map"]
            assert np.allclose(np.mean(np.stack(list(maps)), 0), row["mean_map"], atol=1e-5)


def test_quality_options_are_validated_and_keyed() -> None:
    from xaidash.compute.pipeline.config import validate

    base = JobConfig(data="x", store="s", model="resnet18", weights="imagenet")
    assert base.result_args() != JobConfig(data="x", store="s", copy_distance=0.02).result_args()
    assert base.result_args() != JobConfig(data="x", store="s", outlier_quantile=0.01).result_args()
    assert base.result_args() != JobConfig(data="x", store="s", cluster_min_errors=9).result_args()
    for bad in ({"copy_distance": 1.5}, {"copy_distance": float("nan")}, {"lookalike_quantile": 1.0},
                {"outlier_quantile": 0.0}, {"cluster_min_errors": 1}):
        with pytest.raises(UserError, match=r"--copy-distance|--lookalike-quantile|--outlier-quantile|"
                                            r"--cluster-min-errors"):
            validate(JobConfig(data="x", store="s", model="resnet18", weights="imagenet", **bad))  # type: ignore[arg-type]
