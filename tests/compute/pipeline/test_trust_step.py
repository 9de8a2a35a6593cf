"""The trust tables through the compute job: computed per chunk, equal across shards, stored
with run_id; a run without them has empty tables; bad ground truth fails before any work."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support.imagegen import make_imagefolder, make_imagefolder_with_masks
from tests.support.jobs import run_table, small_job
from xaidash.compute.pipeline.chunk import compute_chunk
from xaidash.compute.pipeline.config import JobConfig
from xaidash.compute.pipeline.job import run_job
from xaidash.compute.pipeline.plan import make_plan
from xaidash.errors import UserError

TRUST = ("sanity", "baseline_faithfulness", "road", "localisation")
N_VAL = 4  # per class, two classes


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder_with_masks(tmp_path_factory.mktemp("data") / "d", n_train=2, n_val=N_VAL, size=32)


def _cfg(data: Path, ckpt: Path, store: Path, **kw: object) -> JobConfig:
    return small_job(data, store, ckpt, **{"methods": ("cam", "gradcam"), "sanity_images": 3,
                                           "road_fractions": (0.2, 0.6), "road_images": None, "chunk_size": 3,
                                           **kw})


def test_trust_tables_from_the_job_equal_across_shards(masked: Path, ckpt: Path, tmp_path: Path) -> None:
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    res = run_job(_cfg(masked, ckpt, tmp_path / "a"))
    assert res.ok and res.published
    n = 2 * N_VAL
    t = {name: run_table(tmp_path / "a", res.run_id, name) for name in TRUST}
    for name, df in t.items():
        assert set(df["run_id"]) == {res.run_id}, name
    assert len(t["sanity"]) == 3 * 2 * 6 and set(t["sanity"]["block"]) == {"fc", "layer4", "layer3", "layer2",
                                                                           "layer1", "stem"}
    assert t["sanity"]["image_id"].nunique() == 3
    assert len(t["baseline_faithfulness"]) == n * 2
    assert set(t["baseline_faithfulness"]["baseline"]) == {"random", "centre"}
    assert len(t["road"]) == n * 2 * 2 * 2 and set(t["road"]["fraction"].astype(float).round(3)) == {0.2, 0.6}
    loc = t["localisation"]
    assert len(loc) == n * 2 and set(loc["topk"]) == {20.0}
    assert loc["energy"].between(0, 1).all() and set(loc["pointing"].dropna()) <= {0.0, 1.0}
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == sha  # the checkpoint is never touched
    # costs per image of each part, recorded with the method costs
    runs = run_table(tmp_path / "a", res.run_id, "runs")
    import json

    timings = json.loads(runs["timings_json"].iloc[0])
    assert set(timings["trust_ms_per_image"]) == {"sanity", "baselines", "road", "localisation"}
    assert timings["trust_images"]["sanity"] == 3 and timings["trust_images"]["road"] == n
    assert all(v > 0 for v in timings["trust_ms_per_image"].values())

    # two shards give the same numbers (seeded randomisation, seeded noise, per-image seeds)
    for i in range(2):
        r = run_job(_cfg(masked, ckpt, tmp_path / "b", shard=f"{i}/2"))
    assert r.published
    for name in TRUST:
        a = t[name].drop(columns="run_id")
        b = run_table(tmp_path / "b", r.run_id, name).drop(columns="run_id")
        keys = [c for c in a.columns if a[c].dtype == object or c in ("step", "fraction")]
        pd.testing.assert_frame_equal(a.sort_values(keys).reset_index(drop=True),
                                      b.sort_values(keys).reset_index(drop=True), check_exact=False,
                                      atol=1e-5)


def test_baseline_rows_are_faithfulness_of_their_definitions(masked: Path, ckpt: Path,
                                                             tmp_path: Path) -> None:
    from xaidash.compute.datasets.imageset import ImageSet, collate
    from xaidash.compute.methods.baselines import centre_map, random_map
    from xaidash.compute.methods.faithfulness import faithfulness

    plan = make_plan(_cfg(masked, ckpt, tmp_path / "s", sanity_images=0, road_fractions=()))
    before = {k: v.clone() for k, v in plan.model.state_dict().items()}
    chunk = plan.chunks[0]
    out = compute_chunk(plan, chunk)
    assert all(torch.equal(before[k], v) for k, v in plan.model.state_dict().items())
    rows = out.tables["baseline_faithfulness"].to_pandas()
    assert "sanity" not in out.tables and "road" not in out.tables  # switched off
    ds = ImageSet(plan.dataset, chunk.items, plan.parts.preprocessing.transform(train=False))
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.x is not None
    ids = [chunk.items[i].image_id for i in batch.index]
    h = w = 2  # the tiny model's 16 px input -> 2x2 maps
    maps = {"random": torch.from_numpy(np.stack([random_map(i, h, w) for i in ids])),
            "centre": torch.from_numpy(np.stack([centre_map(h, w)] * len(ids)))}
    with torch.no_grad():
        pred = plan.model(batch.x).argmax(1)
    expect = faithfulness(plan.model, batch.x, maps, pred, steps=4)
    for b in ("random", "centre"):
        got = rows[rows["baseline"] == b].set_index("image_id").loc[ids]
        for k in ("drop", "increase", "deletion_auc", "insertion_auc"):
            np.testing.assert_allclose(got[k].to_numpy(), expect[b][k].numpy(), atol=1e-5, err_msg=f"{b} {k}")


def test_run_without_trust_has_empty_tables(ckpt: Path, tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "plain", n_train=2, n_val=2, size=16)
    res = run_job(_cfg(data, ckpt, tmp_path / "s", sanity_images=0, road_fractions=(), faithfulness=False))
    for name in TRUST:
        assert run_table(tmp_path / "s", res.run_id, name).empty, name
    # a dataset without masks computes no localisation, and says nothing about it
    res2 = run_job(_cfg(data, ckpt, tmp_path / "s2"))
    assert run_table(tmp_path / "s2", res2.run_id, "localisation").empty
    assert not run_table(tmp_path / "s2", res2.run_id, "road").empty


def test_boxes_csv_gives_localisation(ckpt: Path, tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "d", n_train=0, n_val=2, size=16)
    src = sorted(p.relative_to(data).as_posix() for p in (data / "val").rglob("*.png"))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\n" + "".join(f"{s},0,0,8,16\n" for s in src[:3]))
    res = run_job(_cfg(data, ckpt, tmp_path / "s", boxes=str(boxes), sanity_images=0, road_fractions=()))
    loc = run_table(tmp_path / "s", res.run_id, "localisation")
    assert loc["image_id"].nunique() == 3 and len(loc) == 6


@pytest.mark.parametrize(("content", "needle"), [
    ("file,a\nx,1\n", "header must be path,x0,y0,x1,y1"),
    ("path,x0,y0,x1,y1\nnope.png,0,0,1,1\n", "line 2: 'nope.png' is not a validation image"),
    ("path,x0,y0,x1,y1\n{src},0,0,a,1\n", "line 2: x0,y0,x1,y1 must be numbers"),
    ("path,x0,y0,x1,y1\n{src},5,0,1,1\n", "line 2: need finite x0 < x1"),
    ("path,x0,y0,x1,y1\n", "has no boxes"),
])
def test_bad_boxes_fail_naming_the_file(ckpt: Path, tmp_path: Path, content: str, needle: str) -> None:
    data = make_imagefolder(tmp_path / "d", n_train=0, n_val=1, size=16)
    src = next((data / "val").rglob("*.png")).relative_to(data).as_posix()
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(content.replace("{src}", src))
    with pytest.raises(UserError, match=needle) as err:
        make_plan(_cfg(data, ckpt, tmp_path / "s", boxes=str(boxes)))
    assert str(boxes) in str(err.value)
    with pytest.raises(UserError, match="--boxes file not found"):
        make_plan(_cfg(data, ckpt, tmp_path / "s", boxes=str(tmp_path / "missing.csv")))


def test_mask_of_the_wrong_size_fails_naming_it(ckpt: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = make_imagefolder_with_masks(tmp_path / "d", n_train=0, n_val=1, size=16)
    bad = next((data / "masks" / "val").rglob("*.png"))
    Image.new("L", (5, 5)).save(bad)
    with pytest.raises(UserError, match="masks must have the size of their image") as err:
        make_plan(_cfg(data, ckpt, tmp_path / "s"))
    assert str(bad) in str(err.value)


def test_masks_option_works_for_a_val_only_folder_and_gives_the_same_scores(
        masked: Path, ckpt: Path, tmp_path: Path) -> None:
    """--masks DIR: masks kept apart from the images, for a layout without train/ and val/ (the
    val folder given directly) and with or without the split's folder in the mask path."""
    import shutil

    ref = run_job(_cfg(masked, ckpt, tmp_path / "ref", sanity_images=0, road_fractions=()))
    want = run_table(tmp_path / "ref", ref.run_id, "localisation").drop(columns="run_id")
    outside = tmp_path / "gt"
    shutil.copytree(masked / "masks" / "val", outside)  # <class>/<stem>.png, no "val/" prefix
    plan = make_plan(_cfg(masked / "val", ckpt, tmp_path / "s", masks=str(outside)))  # val only
    assert plan.ground_truth is not None and len(plan.ground_truth) == len(want["image_id"].unique())
    res = run_job(_cfg(masked / "val", ckpt, tmp_path / "b", sanity_images=0, road_fractions=(),
                       masks=str(outside)))
    got = run_table(tmp_path / "b", res.run_id, "localisation").drop(columns="run_id")
    keys = ["image_id", "method"]
    pd.testing.assert_frame_equal(got.sort_values(keys).reset_index(drop=True),
                                  want.sort_values(keys).reset_index(drop=True))
    # the source's first folder may stay in the mask path: val/<class>/<stem>.png
    with_split = tmp_path / "gt2"
    shutil.copytree(masked / "masks", with_split)
    plan2 = make_plan(_cfg(masked, ckpt, tmp_path / "s2", masks=str(with_split)))
    assert plan2.ground_truth is not None and len(plan2.ground_truth) == len(plan.ground_truth)


def test_bad_masks_option_fails_before_any_work(masked: Path, ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--masks folder not found"):
        make_plan(_cfg(masked, ckpt, tmp_path / "s", masks=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no mask for any of the 8 validation images .*\.png"):
        make_plan(_cfg(masked, ckpt, tmp_path / "s", masks=str(tmp_path / "empty")))
    boxes = tmp_path / "b.csv"
    boxes.write_text("path,x0,y0,x1,y1\n")
    with pytest.raises(UserError, match="give one of them"):
        make_plan(_cfg(masked, ckpt, tmp_path / "s", masks=str(masked / "masks"), boxes=str(boxes)))


def test_masks_option_for_images_held_in_arrays(tmp_path: Path) -> None:
    from PIL import Image

    from tests.support.imagegen import make_fake_fashion_mnist
    from xaidash.compute.datasets.sources import open_dataset
    from xaidash.compute.methods.localisation import open_ground_truth

    ds = open_dataset("fashion-mnist", data_root=str(make_fake_fashion_mnist(tmp_path / "f", 20, 10)))
    val = ds.items("val")
    mdir = tmp_path / "m"
    mdir.mkdir()
    a, b = val[0], val[1]  # sources like fashion-mnist/t10k#3: MDIR/t10k#3.png
    Image.new("L", (28, 28), 255).save(mdir / f"{a.source.split('/')[-1]}.png")
    (mdir / "fashion-mnist").mkdir()
    Image.new("L", (28, 28), 255).save(mdir / f"{b.source}.png")
    gt = open_ground_truth(ds, "fashion-mnist", None, val, masks=str(mdir))
    assert gt is not None and set(gt.masks) == {a.image_id, b.image_id}
    assert gt.object_mask(a.image_id, (28, 28)) is not None
    Image.new("L", (10, 10)).save(mdir / f"{a.source.split('/')[-1]}.png")
    with pytest.raises(UserError, match=r"10x10 px, its image fashion-mnist/t10k#\d+ 28x28 px"):
        open_ground_truth(ds, "fashion-mnist", None, val, masks=str(mdir))


def test_masks_never_match_across_class_folders(ckpt: Path, tmp_path: Path) -> None:
    """A val-only folder's first folder is the class: left/001 and right/001 must not both take a
    mask named 001.png (only the split's folder may be left out of a mask's path)."""
    from PIL import Image

    for cls in ("left", "right"):  # the tiny checkpoint's classes
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "val" / cls / "001.png")
    (tmp_path / "m").mkdir()
    Image.new("L", (16, 16), 255).save(tmp_path / "m" / "001.png")
    with pytest.raises(UserError, match="no mask for any of the 2 validation images"):
        make_plan(_cfg(tmp_path / "val", ckpt, tmp_path / "s", masks=str(tmp_path / "m")))
