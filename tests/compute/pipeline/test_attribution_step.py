"""The pixel attributions through the compute job: a small `xaidash compute` run has attribution rows
in cams, faithfulness, road and sanity for the sampled images only; the run records how they were
made; shards give the same numbers; 0 turns them off; bad options fail before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.imagegen import make_imagefolder
from tests.support.jobs import run_table, small_job
from tests.support.models import SIZE as TINY
from xaidash.cli import main
from xaidash.compute.pipeline.config import JobConfig
from xaidash.compute.pipeline.job import run_job
from xaidash.compute.pipeline.plan import make_plan
from xaidash.constants import ATTRIBUTION_METHODS
from xaidash.errors import UserError

N_VAL = 4  # per class, two classes


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "d", n_train=2, n_val=N_VAL, size=32)


def test_compute_cli_writes_attribution_rows_for_the_sample(data: Path, ckpt: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    argv = ["compute", "--data", f"imagefolder:{data}", "--checkpoint", str(ckpt), "--store", str(store),
            "--methods", "gradcam", "--explain", "pred,true", "--workers", "0", "--projection", "pca",
            "--twins", "1", "--faithfulness-steps", "4", "--road-fractions", "0.5", "--chunk-size", "3",
            "--sanity-images", "2", "--attribution-images", "3", "--attribution-sanity-images", "1",
            "--ig-steps", "4", "--smoothgrad-samples", "2", "--device", "cpu"]
    assert main(argv) == 0
    run_id = sorted(p.name for p in (store / "runs").iterdir())[0]
    cams = run_table(store, run_id, "cams")
    attr = cams[cams["method"].isin(ATTRIBUTION_METHODS)]
    pred = attr[attr["target_kind"] == "pred"]
    sampled = set(pred["image_id"])
    assert len(sampled) == 3 and set(pred["method"]) == set(ATTRIBUTION_METHODS)
    assert len(pred) == 3 * 3
    # stored at the model's input size (16 px: below the 32 grid it keeps its own) within 8 KB per map
    assert set(pred["h"]) == {TINY} and set(pred["w"]) == {TINY}
    for m in pred["map"]:
        v = np.asarray(m, np.float32)
        assert v.nbytes <= 8 * 1024 and v.min() >= 0 and v.max() <= 1
    # the true class of the wrong predictions among them, like the CAMs with --explain pred,true
    preds = run_table(store, run_id, "predictions").set_index("image_id")
    wrong = {i for i in sampled if not preds.loc[i, "correct"]}
    true = attr[attr["target_kind"] == "true"]
    assert set(true["image_id"]) == wrong
    assert (true.set_index("image_id")["target_class"] == preds.loc[list(true["image_id"]), "label"]).all()
    # the CAM rows still cover every image, and the run's map size is theirs
    assert set(preds.index) <= set(cams[cams["method"] == "gradcam"]["image_id"]) and len(preds) == 2 * N_VAL
    runs = run_table(store, run_id, "runs")
    assert list(runs["methods"].iloc[0]) == ["gradcam"]
    assert runs["map_h"].iloc[0] == cams[cams["method"] == "gradcam"]["h"].iloc[0] < TINY

    faith = run_table(store, run_id, "faithfulness")
    fa = faith[faith["method"].isin(ATTRIBUTION_METHODS)]
    assert set(fa["image_id"]) == sampled and len(fa) == 3 * 3
    assert fa[["drop", "deletion_auc", "insertion_auc"]].notna().all().all()
    road = run_table(store, run_id, "road")
    ra = road[road["method"].isin(ATTRIBUTION_METHODS)]
    assert set(ra["image_id"]) == sampled and len(ra) == 3 * 3 * 2  # 3 images x 3 methods x MoRF/LeRF
    sanity = run_table(store, run_id, "sanity")
    sa = sanity[sanity["method"].isin(ATTRIBUTION_METHODS)]
    # the attribution sanity images lie in both samples
    assert sa["image_id"].nunique() == 1 and set(sa["image_id"]) <= sampled
    assert set(sa["image_id"]) <= set(sanity[sanity["method"] == "gradcam"]["image_id"])
    assert len(sa) == 1 * 3 * 6  # images x methods x randomisation steps

    cfg = json.loads(runs["config_json"].iloc[0])
    rec = cfg["attribution"]
    assert rec["images"] == 3 and rec["sanity_images"] == 1 and rec["ig_steps"] == 4
    assert rec["smoothgrad_samples"] == 2 and rec["grid"] == 32
    assert rec["methods"] == list(ATTRIBUTION_METHODS)
    assert rec["ig_blur"] == {"kernel": 11, "sigma_px": 5.0} and rec["smoothgrad_sigma"] > 0
    timings = json.loads(runs["timings_json"].iloc[0])
    assert timings["trust_images"]["attributions"] == 3
    assert timings["trust_images"]["attribution_sanity"] == 1
    assert timings["trust_ms_per_image"]["attributions"] > 0


def _cfg(data: Path, ckpt: Path, store: Path, **kw: object) -> JobConfig:
    return small_job(data, store, ckpt, **{"methods": ("gradcam",), "sanity_images": 0,
                                           "road_fractions": (0.5,), "chunk_size": 3, "attribution_images": 4,
                                           "ig_steps": 4, "smoothgrad_samples": 2, **kw})


def test_shards_give_the_same_attributions_and_n_sizes_the_sample(data: Path, ckpt: Path,
                                                                   tmp_path: Path) -> None:
    one = run_job(_cfg(data, ckpt, tmp_path / "a"))
    for i in range(2):
        two = run_job(_cfg(data, ckpt, tmp_path / "b", shard=f"{i}/2"))
    assert one.ok and two.ok and two.run_id is not None

    def rows(store: Path, run_id: str | None, name: str) -> pd.DataFrame:
        df = run_table(store, run_id, name)
        df = df[df["method"].isin(ATTRIBUTION_METHODS)].drop(columns=["run_id"])
        return df.sort_values([c for c in df.columns if c in ("image_id", "method", "target_kind", "order",
                                                              "fraction", "step")]).reset_index(drop=True)

    a, b = rows(tmp_path / "a", one.run_id, "cams"), rows(tmp_path / "b", two.run_id, "cams")
    assert len(a) == 4 * 3
    for x, y in zip(a["map"], b["map"], strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    pd.testing.assert_frame_equal(rows(tmp_path / "a", one.run_id, "faithfulness"),
                                  rows(tmp_path / "b", two.run_id, "faithfulness"), atol=1e-5)

    off = make_plan(_cfg(data, ckpt, tmp_path / "c", attribution_images=0))
    assert off.attribution_ids == frozenset() and json.loads(off.config_json())["attribution"] is None
    assert len(make_plan(_cfg(data, ckpt, tmp_path / "c", attribution_images=5)).attribution_ids) == 5


@pytest.mark.parametrize(("option", "value", "message"), [
    ("attribution_images", -1, "--attribution-images"),
    ("ig_steps", 1, "--ig-steps"),
    ("smoothgrad_samples", 0, "--smoothgrad-samples"),
    ("attribution_sanity_images", -2, "--attribution-sanity-images"),
])
def test_bad_attribution_options_fail_before_any_work(data: Path, ckpt: Path, tmp_path: Path, option: str,
                                                      value: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        run_job(_cfg(data, ckpt, tmp_path / "s", **{option: value}))
    assert not (tmp_path / "s").exists()
