"""Results store: round trips, reader queries, safety against SQL-shaped input, schema versions,
thumbnail dedup, resume, and the ``xaidash runs`` CLI."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.cli import main as cli_main
from xaidash.errors import UserError
from xaidash.store import SCHEMA_VERSION, GalleryQuery, Store, open_store
from xaidash.store.builder import staged_schema
from xaidash.store.schema import RUN_TABLES, TABLES, markdown
from xaidash.store.write.staging import Staging

N_VAL, N_TRAIN, N_CLASSES = 300, 200, 5


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("synth") / "store"
    ids = build_synthetic_store(
        path, n_val=N_VAL, n_train=N_TRAIN, n_classes=N_CLASSES, emb_dim=64, chunk_size=128
    )
    return path, ids


def _snapshot(path: Path) -> dict[str, tuple[int, str]]:
    """Every file under the store with size and content hash (to prove nothing changed)."""
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != ".lock":
            out[str(f.relative_to(path))] = (f.stat().st_size, hashlib.sha1(f.read_bytes()).hexdigest())
    return out


def _iid(i: int) -> str:
    return hashlib.sha1(f"t:{i}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ writer


def _tiny_tables(ids: list[str]) -> dict[str, pa.Table]:
    n = len(ids)
    probs = np.full((n, 3), 0.2, np.float32)
    probs[:, 0] = 0.6
    maps = np.linspace(0, 1, 4, dtype=np.float32)
    return {
        "predictions": pa.table(
            {
                "image_id": ids,
                "split": ["val"] * n,
                "label": [0, 1][:n] + [0] * (n - 2),
                "label_name": ["a", "b"][:n] + ["a"] * (n - 2),
                "pred": [0] * n,
                "pred_name": ["a"] * n,
                "confidence": [0.6] * n,
                "probabilities": [p.tolist() for p in probs],
                "correct": [True, False][:n] + [True] * (n - 2),
                "loss": [0.51, 1.6][:n] + [0.51] * (n - 2),
                "runner_up": [1] * n,
                "cam_disagreement": [0.1] * n,
            }
        ),
        "cams": pa.table(
            {
                "image_id": ids,
                "method": ["gradcam"] * n,
                "target_kind": ["pred"] * n,
                "target_class": [0] * n,
                "h": [2] * n,
                "w": [2] * n,
                "map": [maps.tolist()] * n,
            }
        ),
        "embeddings": pa.table(
            {
                "image_id": ids,
                "split": ["val"] * n,
                "vector": [[1.0, 0.5, 0.25]] * n,
            }
        ),
        "faithfulness": pa.table(
            {
                "image_id": ids,
                "method": ["gradcam"] * n,
                "drop": [0.25] * n,
                "increase": [0.0] * n,
                "deletion_auc": [0.2] * n,
                "insertion_auc": [0.7] * n,
            }
        ),
    }


def _complete_embeddings(st: Staging, xy: dict[str, tuple[float, float]] | None = None) -> pa.Table:
    """What the global phase hands to publish: the staged vectors plus their 2-D projection."""
    cols = ["image_id", "split", "vector"]
    batches = list(st.iter_table("embeddings", cols))
    t = pa.Table.from_batches(batches) if batches else staged_schema("embeddings").empty_table().select(cols)
    xy = xy or {}
    pts = [xy.get(i, (0.0, 0.0)) for i in t.column("image_id").to_pylist()]
    x = pa.array([p[0] for p in pts], pa.float32())
    return t.append_column("x", x).append_column("y", pa.array([p[1] for p in pts], pa.float32()))


RUN_ROW = {
    "dataset_spec": "imagefolder:/data",
    "dataset_fingerprint": "fp1",
    "dataset_kind": "imagefolder",
    "arch": "resnet18",
    "class_names": ["a", "b", "c"],
    "methods": ["gradcam"],
    "target_layer": "layer4",
    "map_h": 2,
    "map_w": 2,
    "num_val": 2,
    "num_train": 1,
    "num_failed": 1,
    "accuracy": 0.5,
    "config_json": json.dumps({"model": {"arch": "resnet18"}}),
    "versions_json": "{}",
    "timings_json": "{}",
    "device": "cpu",
}


def test_round_trip_every_table(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    ids = sorted([_iid(1), _iid(2)])
    train = _iid(3)
    st = store.staging("job-1")
    st.write_chunk("c0", _tiny_tables(ids))
    st.write_chunk(
        "t0", {"embeddings": pa.table({"image_id": [train], "split": ["train"], "vector": [[0.0, 1.0, 0.0]]})}
    )
    assert st.done_chunks() == {"c0", "t0"}
    assert sum(b.num_rows for b in st.iter_table("embeddings", ["image_id"])) == 3
    store.add_images(
        "fp1",
        pa.table(
            {
                "image_id": [*ids, train],
                "split": ["val", "val", "train"],
                "label": [0, 1, 2],
                "label_name": ["a", "b", "c"],
                "source": ["v/0.png", "v/1.png", "t/2.png"],
                "width": [32] * 3,
                "height": [24] * 3,
                "thumbnail": [b"\x89PNG-0", b"\x89PNG-1", b"\x89PNG-2"],
            }
        ),
    )
    projection = {ids[0]: (1.0, -1.0), ids[1]: (2.0, -2.0), train: (3.0, -3.0)}
    globals_ = {
        "embeddings": _complete_embeddings(st, projection),
        "neighbors": pa.table(
            {
                "image_id": [ids[0], ids[0]],
                "kind": ["twin", "counterfactual"],
                "rank": [1, 1],
                "neighbor_id": [train, train],
                "neighbor_class": [2, 2],
                "similarity": [0.9, 0.5],
            }
        ),
        "class_metrics": pa.table(
            {
                "class": [0, 1, 2],
                "class_name": ["a", "b", "c"],
                "precision": [0.5, 0.0, 0.0],
                "recall": [1.0, 0.0, 0.0],
                "f1": [2 / 3, 0.0, 0.0],
                "support": [1, 1, 0],
            }
        ),
        "confusion": pa.table({"true_class": [0, 1], "pred_class": [0, 0], "count": [1, 1]}),
        "failures": pa.table(
            {"image_id": [_iid(9)], "split": ["val"], "source": ["v/bad.jpg"], "reason": ["truncated"]}
        ),
    }
    run_id = st.publish(RUN_ROW, globals_)
    run_dir = tmp_path / "s" / "runs" / run_id
    assert (run_dir / "manifest.json").is_file()
    assert not any((tmp_path / "s" / "_staging").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["job_key"] == "job-1"

    # Every file has exactly the schema of store/schema.py and run_id everywhere.
    for name in RUN_TABLES:
        t = pq.read_table(run_dir / f"{name}.parquet")
        assert t.schema.remove_metadata().equals(TABLES[name].schema.remove_metadata()), name
        assert set(t.column("run_id").to_pylist()) <= {run_id}
    emb = pq.read_table(run_dir / "embeddings.parquet").to_pylist()
    assert [r["image_id"] for r in emb] == [train, *ids]  # clustered by (split, image_id)
    assert [r["x"] for r in emb] == [3.0, 1.0, 2.0]  # the complete table publish was given
    assert np.allclose(emb[1]["vector"], [1.0, 0.5, 0.25])

    r = open_store(tmp_path / "s")
    assert r.runs()["run_id"].tolist() == [run_id]
    info = r.run(run_id)
    assert info is not None and info.class_names == ["a", "b", "c"] and info.labeled and info.map_h == 2
    assert info.config["model"]["arch"] == "resnet18"
    h = r.headline(run_id)
    assert h["n"] == 2 and h["accuracy"] == 0.5 and h["errors"] == 1 and h["failed"] == 1
    assert math.isclose(h["macro_precision"], 0.5 / 3)
    assert r.class_metrics(run_id)["support"].tolist() == [1, 1, 0]
    assert r.confusion(run_id)["count"].tolist() == [1, 1]
    hist = r.confidence_histogram(run_id, bins=10)
    assert hist["count"].sum() == 2 and hist["bin_start"].iloc[0] == pytest.approx(0.6)
    fs = r.faithfulness_summary(run_id)
    assert fs["method"].tolist() == ["gradcam"] and fs["n"].iloc[0] == 2
    det = r.image(run_id, ids[1])
    assert det is not None and det.prediction["correct"] is False and det.topk[0][:2] == (0, "a")
    assert det.source == "v/1.png" and det.width == 32 and det.height == 24
    np.testing.assert_allclose(det.cams[("gradcam", "pred")][1], np.linspace(0, 1, 4).reshape(2, 2))
    np.testing.assert_allclose(r.cam(run_id, ids[0], "gradcam"), np.linspace(0, 1, 4).reshape(2, 2))
    assert r.cam(run_id, ids[0], "scorecam") is None
    assert r.thumbnail(run_id, ids[1]) == b"\x89PNG-1"
    assert r.thumbnails(run_id, [*ids, "' OR 1=1 --"]) == {ids[0]: b"\x89PNG-0", ids[1]: b"\x89PNG-1"}
    batch = r.cams_batch(run_id, [*ids, "--"], ["gradcam", "x'; DROP"])
    assert set(batch) == {(ids[0], "gradcam"), (ids[1], "gradcam")} and batch[(ids[0], "gradcam")].shape == (
        2,
        2,
    )
    nb = r.neighbors(run_id, ids[0])
    assert nb["kind"].tolist() == ["twin", "counterfactual"] and nb["neighbor_class_name"].tolist() == [
        "c",
        "c",
    ]
    pts = r.embedding_points(run_id, include_train=True)
    assert pts["split"].tolist() == ["val", "val", "train"] and pts["label"].tolist() == [0, 1, 2]
    tids, tlabels, tvec = r.train_embeddings(run_id)
    assert tids == [train] and tlabels.tolist() == [2] and tvec.shape == (1, 3) and tvec.dtype == np.float32
    assert r.failures(run_id)["reason"].tolist() == ["truncated"]
    train_detail = r.image(run_id, train)
    assert train_detail is not None and train_detail.prediction == {} and train_detail.split == "train"
    assert r.sql("SELECT count(*) AS n FROM images")["n"].iloc[0] == 3
    r.close()


def test_publish_takes_the_complete_embeddings_table(tmp_path: Path) -> None:
    """The staged embeddings are global-phase input: the run holds the table publish was given."""
    st = Store.create(tmp_path / "s", durable=False).staging("job")
    ids = sorted([_iid(1), _iid(2)])
    st.write_chunk("c0", _tiny_tables(ids))
    xy_only = pa.table({"image_id": ids, "x": [1.0, 2.0], "y": [3.0, 4.0]})
    with pytest.raises(ValueError, match=r"complete .embeddings. table.*missing split, vector"):
        st.publish(RUN_ROW, {"embeddings": xy_only})
    with pytest.raises(ValueError, match="missing image_id, split, vector, x, y"):
        st.publish(RUN_ROW, {})
    one = _complete_embeddings(st, {ids[0]: (5.0, 6.0)}).slice(0, 1)
    run_id = st.publish(RUN_ROW, {"embeddings": one})
    emb = pq.read_table(tmp_path / "s" / "runs" / run_id / "embeddings.parquet").to_pylist()
    assert [(r["run_id"], r["image_id"], r["x"], r["y"]) for r in emb] == [(run_id, ids[0], 5.0, 6.0)]


def test_conform_rejects_unknown_and_missing_columns(tmp_path: Path) -> None:
    st = Store.create(tmp_path / "s").staging("j")
    with pytest.raises(ValueError, match="unknown columns"):
        st.write_chunk("c", {"failures": pa.table({"image_id": [_iid(1)], "split": ["val"], "bogus": [1]})})
    with pytest.raises(ValueError, match="required column 'split'"):
        st.write_chunk("c", {"failures": pa.table({"image_id": [_iid(1)]})})
    with pytest.raises(ValueError, match="chunk tables"):
        st.write_chunk("c", {"confusion": pa.table({"true_class": [0]})})
    with pytest.raises(ValueError, match="invalid chunk id"):
        st.write_chunk("../evil", {})
    assert st.done_chunks() == set()


def test_store_create_refuses_foreign_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not an xaidash store"):
        Store.create(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        Store.create(tmp_path / "file")
    with pytest.raises(UserError, match="not an xaidash store"):
        open_store(tmp_path / "data")


def test_publish_twice_refused_until_deleted(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    st = store.staging("job")
    st.write_chunk("c0", _tiny_tables([_iid(1), _iid(2)]))
    run_id = st.publish(RUN_ROW, {"embeddings": _complete_embeddings(st)})
    with pytest.raises(UserError, match="already published"):
        store.staging("job")
    r = open_store(tmp_path / "s")
    assert r.latest_run_id() == run_id
    store.delete(run_id)
    assert r.runs().empty and r.run(run_id) is None  # the reader notices without reopening
    store.staging("job").abort()  # the key is free again
    assert not (tmp_path / "s" / "runs" / run_id).exists()
    assert not any((tmp_path / "s" / "_trash").iterdir())


def test_second_live_writer_same_job_refused(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    st = store.staging("job")
    with pytest.raises(UserError, match="being written by another process"):
        store.staging("job")
    st.close()
    store.staging("job").abort()


def test_resume_reuses_done_chunks(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    ids = sorted(_iid(i) for i in range(6))
    st = store.staging("resumable")
    st.write_chunk("c0", _tiny_tables(ids[0:2]))
    st.write_chunk("c1", _tiny_tables(ids[2:4]))
    # A chunk killed midway: its parts exist but its marker does not.
    (st.dir / "parts" / "predictions" / "c2.parquet").write_bytes(b"garbage from a killed write")
    st.close()  # the process "dies" here (close == lock released)

    st2 = store.staging("resumable")
    assert st2.done_chunks() == {"c0", "c1"}
    st2.write_chunk("c2", _tiny_tables(ids[4:6]))
    run_id = st2.publish(RUN_ROW, {"embeddings": _complete_embeddings(st2)})
    r = open_store(tmp_path / "s")
    assert r.headline(run_id)["n"] == 6
    got = r.sql("SELECT image_id FROM predictions ORDER BY image_id")["image_id"].tolist()
    assert got == ids  # compacted and sorted by image_id across chunks


def test_gc_removes_dead_staging_keeps_live_and_resumable(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s")
    live = store.staging("live")
    dead = store.staging("dead")
    dead.write_chunk("c0", _tiny_tables([_iid(1), _iid(2)]))
    dead.close()
    empty_dead = store.staging("empty")
    empty_dead.close()
    assert store.gc(grace_s=3600) == []  # too young
    removed = store.gc(keep_resumable=True)
    assert removed == [str(empty_dead.dir)]
    assert store.gc(dry_run=True) == [str(dead.dir)] and dead.dir.exists()
    assert store.gc() == [str(dead.dir)]
    assert live.dir.exists() and not dead.dir.exists()
    live.abort()


def test_concurrent_shard_owners_share_staging_publish_once(tmp_path: Path) -> None:
    from xaidash.store.write.writer import AlreadyPublished

    store = Store.create(tmp_path / "s", durable=False)
    ids = sorted(_iid(i) for i in range(4))
    a = store.staging("job", owner="shard-0-of-2")
    b = store.staging("job", owner="shard-1-of-2")  # a second shard runs at the same time
    with pytest.raises(UserError, match="being written by another process"):
        store.staging("job", owner="shard-0-of-2")  # the same shard twice
    with pytest.raises(UserError, match="being written by another process"):
        store.staging("job")  # an exclusive writer next to live shards
    a.write_chunk("c0", _tiny_tables(ids[:2]))
    b.write_chunk("c1", _tiny_tables(ids[2:]))
    a.close()  # shard 0 is dead, shard 1 alive: gc keeps the staging
    assert store.gc() == [] and b.dir.is_dir()
    a = store.staging("job", owner="shard-0-of-2")  # shard 0 restarted
    assert a.done_chunks() == b.done_chunks() == {"c0", "c1"}
    run_id = b.publish(RUN_ROW, {"embeddings": _complete_embeddings(b)})
    # the loser of the publish race learns the run
    with pytest.raises(AlreadyPublished) as exc, a.publishing():
        pass
    assert exc.value.run_id == run_id
    with pytest.raises(AlreadyPublished):
        a.write_chunk("c2", _tiny_tables(ids[:2]))
    a.close()
    r = open_store(tmp_path / "s")
    assert r.runs()["run_id"].tolist() == [run_id] and r.headline(run_id)["n"] == 4
    assert not any((tmp_path / "s" / "_staging").iterdir())


def test_gc_keeps_temp_file_of_a_live_image_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from xaidash.store import files

    store = Store.create(tmp_path / "s", durable=False)
    images = pa.table({"image_id": [_iid(1), _iid(2)], "split": ["val", "val"], "label": [0, 1]})
    writing, resume = threading.Event(), threading.Event()
    orig = files.write_parquet_atomic

    def slow_write(path: Path, table: pa.Table, rgs: int, durable: bool) -> None:
        # the temp file exists and add_images holds the fingerprint lock: gc runs right now
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(b"half-written part")
        writing.set()
        assert resume.wait(30)
        assert tmp.exists(), "gc removed the temp file of a live add_images"
        orig(path, table, rgs, durable)

    monkeypatch.setattr(files, "write_parquet_atomic", slow_write)
    errors: list[BaseException] = []

    def append() -> None:
        try:
            store.add_images("fp1", images)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=append)
    t.start()
    try:
        assert writing.wait(30)
        assert store.gc() == []  # grace 0, but the append is live
    finally:
        resume.set()
        t.join(30)
    assert not errors, errors
    assert store.thumbnail_ids("fp1") == {_iid(1), _iid(2)}
    # a temp file left by a dead append (lock free) is still cleaned up
    dead = tmp_path / "s" / "images" / "fp1" / ".part-x.parquet.tmp-999999"
    dead.write_bytes(b"left over")
    assert store.gc() == [str(dead)] and not dead.exists()


# ------------------------------------------------------------------------------------ reader


def test_synthetic_store_is_realistic(synth: tuple[Path, list[str]]) -> None:
    path, ids = synth
    r = open_store(path)
    assert len(ids) == 2 and r.latest_run_id() == ids[-1]
    runs = r.runs()
    assert runs["run_id"].tolist() == ids[::-1]  # newest first
    for run_id in ids:
        h = r.headline(run_id)
        assert h["n"] == N_VAL and 0.7 < h["accuracy"] < 0.95
        p = r.sql(
            "SELECT probabilities, confidence, pred, label, correct FROM predictions WHERE run_id = ?",
            [run_id],
        )
        sums = np.array([np.sum(x) for x in p["probabilities"]])
        assert np.allclose(sums, 1, atol=1e-5)
        assert (p["correct"] == (p["pred"] == p["label"])).all()
        maps = r.sql("SELECT map FROM cams WHERE run_id = ? LIMIT 50", [run_id])["map"]
        arr = np.stack([np.asarray(m) for m in maps])
        assert arr.min() >= 0 and arr.max() <= 1 and arr.shape[1] == 49
        nb = r.sql("SELECT DISTINCT neighbor_id FROM neighbors WHERE run_id = ?", [run_id])["neighbor_id"]
        train = set(
            r.sql("SELECT image_id FROM embeddings WHERE run_id = ? AND split = 'train'", [run_id])[
                "image_id"
            ]
        )
        assert set(nb) <= train
        assert r.confusion(run_id)["count"].sum() == N_VAL
    d = r.diff(ids[0], ids[1])
    assert set(d.flips["change"]) <= {"fixed", "broke", "changed"} and len(d.flips) > 0
    assert set(d.metrics["metric"]) >= {"accuracy", "macro_f1"}
    assert d.confusion_delta["delta"].sum() == 0
    some = d.flips["image_id"].iloc[0]
    hist = r.image_history(ids[1], some)
    assert hist["run_id"].tolist() == ids and hist["pred"].iloc[0] != hist["pred"].iloc[1]
    # Train Grad-CAMs exist so twins can show theirs.
    tid = r.neighbors(ids[1], some)["neighbor_id"].iloc[0]
    assert r.cam(ids[1], tid, "gradcam") is not None and r.thumbnail(ids[1], tid)


def test_gallery_filters_sort_pagination(synth: tuple[Path, list[str]]) -> None:
    path, ids = synth
    r = open_store(path)
    run_id = ids[-1]
    preds = r.sql("SELECT * FROM predictions WHERE run_id = ?", [run_id])
    df, total = r.gallery(run_id, GalleryQuery(page_size=1000))
    assert total == N_VAL and len(df) == N_VAL
    assert df["confidence"].is_monotonic_increasing
    wrong, total_wrong = r.gallery(
        run_id, GalleryQuery(outcome="wrong", sort="loss", descending=True, page_size=50)
    )
    assert total_wrong == int((~preds["correct"]).sum()) and not wrong["correct"].any()
    assert wrong["loss"].is_monotonic_decreasing and (wrong["sort_value"] == wrong["loss"]).all()
    q = GalleryQuery(true_class=1, pred_class=2, conf_min=0.2, conf_max=0.9)
    _, n = r.gallery(run_id, q)
    expect = ((preds["label"] == 1) & (preds["pred"] == 2) & preds["confidence"].between(0.2, 0.9)).sum()
    assert n == expect
    # Pages tile the full ordering exactly, ties broken by image_id.
    pages = [r.gallery(run_id, GalleryQuery(sort="disagreement", page=p, page_size=7))[0] for p in range(50)]
    allrows = pd.concat(pages)
    assert len(allrows) == N_VAL and allrows["image_id"].is_unique
    ref = preds.sort_values(["cam_disagreement", "image_id"])["image_id"].tolist()
    assert allrows["image_id"].tolist() == ref
    # faithfulness sort = insertion_auc - deletion_auc of the chosen method
    f = r.sql(
        "SELECT image_id, insertion_auc - deletion_auc AS s FROM faithfulness WHERE run_id = ? AND "
        "method = 'scorecam'",
        [run_id],
    ).set_index("image_id")["s"]
    top, _ = r.gallery(
        run_id, GalleryQuery(sort="faithfulness", method="scorecam", descending=True, page_size=5)
    )
    assert np.allclose(top["sort_value"].to_numpy(), np.sort(f.to_numpy())[::-1][:5], atol=1e-6)
    sel = tuple(preds["image_id"].iloc[:10])
    df, n = r.gallery(run_id, GalleryQuery(image_ids=sel, page_size=24))
    assert n == 10 and set(df["image_id"]) == set(sel)
    past, n = r.gallery(run_id, GalleryQuery(page=10_000))
    assert past.empty and n == N_VAL
    with pytest.raises(UserError, match="unknown sort"):
        r.gallery(run_id, GalleryQuery(sort="name"))
    with pytest.raises(UserError, match="unknown outcome"):
        r.gallery(run_id, GalleryQuery(outcome="maybe"))


EVIL = ["' OR 1=1 --", "x'; DROP TABLE predictions; --", "--", "1; DELETE FROM runs", '"; ATTACH', "*", "%"]


def test_sql_shaped_input_returns_nothing_and_changes_nothing(synth: tuple[Path, list[str]]) -> None:
    path, ids = synth
    before = _snapshot(path)
    r = open_store(path)
    run_id = ids[-1]
    img = r.gallery(run_id, GalleryQuery())[0]["image_id"].iloc[0]
    for s in EVIL:
        assert r.run(s) is None
        assert r.headline(s)["n"] is None
        assert r.class_metrics(s).empty and r.confusion(s).empty and r.failures(s).empty
        assert r.gallery(s, GalleryQuery())[1] == 0
        assert r.gallery(run_id, GalleryQuery(image_ids=(s,)))[1] == 0
        assert r.gallery(run_id, GalleryQuery(image_ids=(s, img)))[1] == 1
        assert r.gallery(run_id, GalleryQuery(sort="faithfulness", method=s))[1] == N_VAL
        assert r.image(run_id, s) is None and r.image(s, img) is None
        assert r.cam(run_id, img, s) is None and r.cam(run_id, s, "gradcam") is None
        assert r.cam(run_id, img, "gradcam", target_kind=s) is None
        assert r.thumbnail(run_id, s) is None and r.neighbors(run_id, s).empty
        assert r.embedding_points(s).empty and r.train_embeddings(s)[0] == []
        assert r.diff(s, run_id).flips.empty and r.image_history(run_id, s).empty
        assert r.sql("SELECT count(*) AS n FROM predictions WHERE image_id = ?", [s])["n"].iloc[0] == 0
        with pytest.raises(UserError):
            Store.open(path).delete(s)
    for bad in [
        "DROP TABLE predictions",
        "SELECT 1; DROP TABLE predictions",
        "COPY predictions TO 'x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH 'x.db'",
        "SET threads = 1",
    ]:
        with pytest.raises(UserError):
            r.sql(bad)
    assert r.headline(run_id)["n"] == N_VAL
    assert r.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 2 * N_VAL
    r.close()
    assert _snapshot(path) == before


def test_older_schema_version_is_skipped_with_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ids = build_synthetic_store(
        path, n_val=40, n_train=20, n_classes=3, emb_dim=8, runs=2, with_thumbnails=False
    )
    mf = path / "runs" / ids[0] / "manifest.json"
    m = json.loads(mf.read_text())
    m["schema_version"] = 0
    m["run"]["versions_json"] = json.dumps({"xaidash": "0.0.9"})
    mf.write_text(json.dumps(m))
    r = open_store(path)
    assert r.runs()["run_id"].tolist() == [ids[1]]  # listing does not crash, the old run is skipped
    msg = r.skipped_runs()[ids[0]]
    assert f"run {ids[0]} was written by schema v0; this xaidash reads v{SCHEMA_VERSION}" in msg
    assert "recompute it or install xaidash 0.0.9" in msg
    with pytest.raises(UserError, match="schema v0"):
        r.run(ids[0])
    with pytest.raises(UserError, match="schema v0"):
        r.headline(ids[0])
    assert r.sql("SELECT DISTINCT run_id FROM predictions")["run_id"].tolist() == [ids[1]]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["run"].pop("created"),
        lambda m: m["run"].__setitem__("created", "not a timestamp"),
        lambda m: m["run"].__setitem__("created", None),
        lambda m: m["run"].__setitem__("num_val", "many"),
        lambda m: m.__setitem__("run", ["not", "an", "object"]),
    ],
    ids=["no-created", "bad-created", "null-created", "bad-type", "run-not-object"],
)
def test_malformed_manifest_is_skipped_not_fatal(
    tmp_path: Path, breakage: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = build_synthetic_store(
        path, n_val=20, n_train=10, n_classes=3, emb_dim=8, runs=2, with_thumbnails=False
    )
    mf = path / "runs" / ids[0] / "manifest.json"
    m = json.loads(mf.read_text())
    breakage(m)  # type: ignore[operator]
    mf.write_text(json.dumps(m))  # valid JSON, but not a valid run
    r = open_store(path)
    assert r.runs()["run_id"].tolist() == [ids[1]]  # the good run is still listed
    assert "malformed manifest" in r.skipped_runs()[ids[0]]
    assert r.headline(ids[1])["n"] == 20
    with pytest.raises(UserError, match="malformed manifest"):
        r.run(ids[0])
    assert cli_main(["runs", "list", "--store", str(path)]) == 0
    captured = capsys.readouterr()
    assert ids[1] in captured.out and f"skipped {ids[0]}" in captured.err


@pytest.fixture(scope="module")
def six_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("six") / "store"
    ids = build_synthetic_store(path, n_val=40, n_train=10, n_classes=3, emb_dim=8, runs=6)
    return path, ids


def test_cache_eviction_never_drops_a_table_in_use(
    six_runs: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: while a query of one run is about to read its cache table, another thread
    caches 4 other runs (cache_runs=4), which used to evict and drop that table (Catalog Error)."""
    import threading

    import xaidash.store.read.cache as cache_mod
    from xaidash.store.read.reader import StoreReader

    path, ids = six_runs
    # The DuckDB cache tables (and their pins) serve runs whose files need the SQL join; runs
    # laid out as the writer lays them out are read with Arrow and never race. Force the join.
    monkeypatch.setattr(cache_mod, "light_table", lambda e, methods: None)
    r = StoreReader(path, cache_runs=4)
    image_id = r.gallery(ids[0], GalleryQuery(page_size=1))[0]["image_id"].iloc[0]
    orig = StoreReader._arrow
    fired: list[bool] = []

    def racing_arrow(self: StoreReader, query: str, params: object = None) -> pa.Table:
        if 'cache."l_' in query and not fired and threading.current_thread() is threading.main_thread():
            fired.append(True)
            other = threading.Thread(target=lambda: [r.warm(i) for i in ids[1:5]])
            other.start()
            other.join(60)
        return orig(self, query, params)  # type: ignore[arg-type]

    monkeypatch.setattr(StoreReader, "_arrow", racing_arrow)
    detail = r.image(ids[0], image_id)
    assert fired and detail is not None and detail.image_id == image_id
    monkeypatch.setattr(StoreReader, "_arrow", orig)
    assert len(r._run_cache.cached) <= 4  # trimmed back to the limit once the query ended
    fired.clear()
    monkeypatch.setattr(StoreReader, "_arrow", racing_arrow)
    assert r.headline(ids[5])["n"] == 40
    monkeypatch.setattr(StoreReader, "_arrow", orig)
    assert r.diff(ids[0], ids[5]).metrics.shape[0] == 8
    r.close()


def test_cache_eviction_race_with_threads(six_runs: tuple[Path, list[str]]) -> None:
    import random
    import threading

    from xaidash.store.read.reader import StoreReader

    path, ids = six_runs
    r = StoreReader(path, cache_runs=4)
    image_ids = {i: r.gallery(i, GalleryQuery(page_size=3))[0]["image_id"].tolist() for i in ids}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                run_id = rng.choice(ids)
                assert r.image(run_id, rng.choice(image_ids[run_id])) is not None
                assert r.headline(run_id)["n"] == 40
                assert not r.confidence_histogram(run_id).empty
                assert len(r.embedding_points(run_id)) == 40
                a, b = rng.sample(ids, 2)
                r.diff(a, b)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(r._run_cache.cached) <= 4
    r.close()


def test_thumbnails_stored_once_per_fingerprint(synth: tuple[Path, list[str]]) -> None:
    path, ids = synth
    r = open_store(path)
    counts = r.sql(
        "SELECT count(*) AS n, count(DISTINCT image_id) AS d, count(DISTINCT dataset_fingerprint) AS f "
        "FROM images"
    )
    assert counts["n"].iloc[0] == counts["d"].iloc[0] == N_VAL + N_TRAIN and counts["f"].iloc[0] == 1
    store = Store.open(path)
    fp = r.run(ids[0]).dataset_fingerprint
    parts = sorted((path / "images" / fp).glob("part-*.parquet"))
    again = pq.read_table(parts[0])
    store.add_images(fp, again.drop_columns(["dataset_fingerprint"]))
    assert sorted((path / "images" / fp).glob("part-*.parquet")) == parts  # nothing new written
    assert store.thumbnail_ids(fp) == set(r.sql("SELECT image_id FROM images")["image_id"])


def test_reader_refreshes_when_runs_appear(tmp_path: Path) -> None:
    path = tmp_path / "s"
    Store.create(path)
    r = open_store(path)
    assert r.runs().empty and r.latest_run_id() is None
    assert r.headline("20260101-000000-abcdef")["n"] is None
    ids = build_synthetic_store(path, n_val=30, n_train=10, n_classes=3, emb_dim=8, runs=1)
    assert r.latest_run_id() == ids[0]
    assert r.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 30


def test_schema_docs_cover_every_column() -> None:
    md = markdown()
    for spec in TABLES.values():
        for field in spec.schema:
            assert field.metadata and field.metadata[b"doc"], (spec.name, field.name)
            assert f"`{field.name}`" in md
    doc = Path(__file__).resolve().parents[2] / "docs" / "STORE.md"
    if doc.exists():
        assert md in doc.read_text(), "docs/STORE.md is stale: regenerate with python -m store.schema"


# ------------------------------------------------------------------------------------ CLI


def test_cli_runs_list_show_delete_gc(
    synth: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    ids = build_synthetic_store(path, n_val=40, n_train=20, n_classes=3, emb_dim=8, runs=2)
    assert cli_main(["runs", "list", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out and out.index(ids[1]) < out.index(ids[0])
    assert cli_main(["runs", "list", "--store", str(path), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["run_id"] for x in lines] == ids[::-1]
    assert cli_main(["runs", "show", "--store", str(path), ids[0]]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and "accuracy=" in out and "predictions" in out
    assert cli_main(["runs", "show", "--store", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == ids[1]
    assert cli_main(["runs", "show", "--store", str(path), "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert cli_main(["runs", "delete", "--store", str(path), "x'; DROP TABLE predictions; --"]) == 2
    assert "invalid run id" in capsys.readouterr().err
    assert cli_main(["runs", "list", "--store", str(tmp_path / "nostore")]) == 2
    assert "not an xaidash store" in capsys.readouterr().err

    st = Store.open(path).staging("dead-job")
    st.close()
    assert cli_main(["runs", "gc", "--store", str(path), "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and st.dir.exists()
    assert cli_main(["runs", "gc", "--store", str(path)]) == 0
    assert "removed" in capsys.readouterr().out and not st.dir.exists()
    assert cli_main(["runs", "gc", "--store", str(path)]) == 0
    assert "nothing to clean up" in capsys.readouterr().out

    assert cli_main(["runs", "delete", "--store", str(path), ids[0]]) == 0
    assert f"deleted {ids[0]}" in capsys.readouterr().out
    assert open_store(path).runs()["run_id"].tolist() == [ids[1]]
    assert cli_main(["runs", "delete", "--store", str(path), ids[0]]) == 2
    assert "no run" in capsys.readouterr().err
    # all or nothing: one missing id deletes none of the others
    assert cli_main(["runs", "delete", "--store", str(path), ids[1], ids[0]]) == 2
    assert "nothing was deleted" in capsys.readouterr().err
    assert open_store(path).runs()["run_id"].tolist() == [ids[1]]


def test_point_lookup_finds_ids_in_overlapping_files(tmp_path: Path) -> None:
    """Thumbnail part files overlap in id range (one per chunk, train and val interleave)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xaidash.store.read.index import RowGroupIndex

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"image_id": ["10", "30"], "v": [1, 3]}), a)
    pq.write_table(pa.table({"image_id": ["20", "25"], "v": [2, 2]}), b)
    index = RowGroupIndex([a, b])
    for image_id, v in (("10", 1), ("20", 2), ("25", 2), ("30", 3)):
        got = index.read([image_id], ["image_id", "v"]).to_pydict()
        assert got == {"image_id": [image_id], "v": [v]}
    assert index.read(["99", "00"], ["image_id", "v"]).num_rows == 0


def test_create_while_another_process_is_creating_the_store(tmp_path: Path) -> None:
    """Two shards start at once: one may see the other's marker temp file before the marker."""
    from xaidash.store.write.writer import MARKER, Store

    path = tmp_path / "s"
    path.mkdir()
    (path / f".{MARKER}.tmp-99999").write_bytes(b"{}")
    assert Store.create(path).path == path.absolute()
    assert (path / MARKER).is_file()


def test_arrow_built_cache_and_diff_match_the_sql_definitions(synth: tuple[Path, list[str]]) -> None:
    """The run cache built from Arrow columns (no join) holds what the SQL join built, and the
    numpy diff lists exactly the flips the SQL join of the two runs lists (cold start)."""
    from xaidash.store.read.light import light_table_sql

    path, run_ids = synth
    with open_store(path) as r:
        e = r._entry(run_ids[-1])
        assert e is not None
        h_arrow = r._run_cache.tables(e)
        r._exec(*light_table_sql(e, 'cache."l_sqlcopy"', list(e.methods), True, r._catalog.image_glob(e)))
        drop = ["probabilities", "source", "width", "height"]  # read per image on the Arrow path
        a = r._df(f'SELECT * EXCLUDE ({", ".join(drop)}) FROM cache."l_{h_arrow}" ORDER BY ord')
        b = r._df(f'SELECT * EXCLUDE ({", ".join(drop)}) FROM cache."l_sqlcopy" ORDER BY ord')
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
        # image metadata and probabilities still reach the image page
        iid = str(a["image_id"].iloc[3])
        detail = r.image(run_ids[-1], iid)
        assert detail is not None and detail.source and detail.width and len(detail.topk) > 0
        # the diff, against the SQL join it replaced
        ra, rb = run_ids[0], run_ids[-1]
        flips = r.diff(ra, rb).flips
        ea, eb = r._entry(ra), r._entry(rb)
        assert ea is not None and eb is not None
        want = r._df(
            """
            SELECT a.image_id, coalesce(b.label, a.label) AS label,
                   coalesce(b.label_name, a.label_name) AS label_name,
                   a.pred AS pred_a, b.pred AS pred_b, a.confidence AS conf_a, b.confidence AS conf_b,
                   CASE WHEN NOT a.correct AND b.correct THEN 'fixed'
                        WHEN a.correct AND NOT b.correct THEN 'broke' ELSE 'changed' END AS change
            FROM read_parquet(?) a JOIN read_parquet(?) b USING (image_id)
            WHERE a.pred <> b.pred OR a.correct IS DISTINCT FROM b.correct
            ORDER BY change, a.image_id
            """,
            [str(ea.file("predictions")), str(eb.file("predictions"))],
        )
        assert len(flips) > 0
        pd.testing.assert_frame_equal(
            flips.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False
        )


def test_the_manifest_records_the_cams_methods_and_older_runs_are_scanned(tmp_path: Path) -> None:
    """The publish records the cams table's distinct methods (the method picker reads them instead
    of scanning millions of rows); a run published before that is answered by the scan."""
    path = tmp_path / "s"
    (run,) = build_synthetic_store(path, n_val=30, n_train=10, runs=1, emb_dim=8,
                                   methods=("gradcam", "scorecam"), sampled_methods=("ig_black",))
    manifest_path = path / "runs" / run / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["tables"]["cams"]["methods"] == ["gradcam", "ig_black", "scorecam"]
    with open_store(path) as reader:
        assert reader.map_methods(run) == ["gradcam", "ig_black", "scorecam"]
    # what a run of the previous release has: no list; and a recorded list is what is answered
    del manifest["tables"]["cams"]["methods"]
    manifest_path.write_text(json.dumps(manifest))
    with open_store(path) as reader:
        assert reader.map_methods(run) == ["gradcam", "ig_black", "scorecam"]
    manifest["tables"]["cams"]["methods"] = ["gradcam"]
    manifest_path.write_text(json.dumps(manifest))
    with open_store(path) as reader:
        assert reader.map_methods(run) == ["gradcam"]


def test_map_methods_and_map_keys_find_maps_of_a_sample(tmp_path: Path) -> None:
    """Methods with maps of a sample of images only (not in the run's ``methods``) are listed with
    the run's, and which images have them is answered from the small columns."""
    path = tmp_path / "s"
    (run,) = build_synthetic_store(path, n_val=40, n_train=20, runs=1, emb_dim=8, chunk_size=16,
                                   methods=("gradcam", "scorecam"), sampled_methods=("ig_black",))
    reader = open_store(path)
    try:
        assert reader.run(run).methods == ["gradcam", "scorecam"]
        assert reader.map_methods(run) == ["gradcam", "ig_black", "scorecam"]
        assert reader.map_methods("no-such-run") == [] and reader.map_methods("'; DROP") == []
        ids = [str(i) for i in reader.embedding_points(run)["image_id"]]
        keys = reader.map_keys(run, [*ids, "not-an-id"])
        sampled = {i for i, m, k in keys if m == "ig_black"}
        assert 0 < len(sampled) < len(ids) and {k for _, m, k in keys if m == "ig_black"} == {"pred"}
        assert all((i, "gradcam", "pred") in keys for i in ids)
        one = next(iter(sampled))
        assert reader.cam(run, one, "ig_black").shape == (16, 16)
        assert reader.map_keys(run, []) == set() and reader.map_keys("nope", ids) == set()
    finally:
        reader.close()
