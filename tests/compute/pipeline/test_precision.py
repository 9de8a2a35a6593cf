"""``--precision bf16``: only the forward-only stages change, and every bf16 run measures itself."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support.imagegen import make_imagefolder
from tests.support.jobs import small_job
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.compute.datasets.imageset import ImageSet, collate
from xaidash.compute.device import configure_device
from xaidash.compute.methods.cams import CamEngine, folded_copy
from xaidash.compute.pipeline import job as job_mod
from xaidash.compute.pipeline.job import JobConfig, run_job
from xaidash.compute.pipeline.plan import make_plan
from xaidash.compute.pipeline.precision import calibration_items
from xaidash.store import open_store


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prec")
    return (make_imagefolder(root / "data", CLASSES, n_train=3, n_val=4, size=SIZE),
            save_tiny_checkpoint(root / "model.pt"))


SC_CHANNELS = 16


def _cfg(data: tuple[Path, Path], store: Path, **kw: object) -> JobConfig:
    folder, ckpt = data
    # no sanity check or ROAD, 16 Score-CAM channels and 2 faithfulness steps: their cost in
    # (emulated, on most CPUs) bf16 is not what these test
    return small_job(folder, store, ckpt, **{"batch_size": 4, "chunk_size": 4, "twins": 2,
                                             "calibration_images": 4, "scorecam_max_channels": SC_CHANNELS,
                                             "faithfulness_steps": 2, "sanity_images": 0,
                                             "road_fractions": (), **kw})


def _run(store: Path) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    with open_store(store) as r:
        (rid,) = r.runs()["run_id"].tolist()
        info = r.run(rid)
        assert info is not None
        tables = {
            "cams": r.sql("SELECT image_id, method, target_kind, map FROM cams WHERE run_id = ? "
                          "ORDER BY image_id, method, target_kind", [rid]),
            "predictions": r.sql("SELECT image_id, pred, confidence, probabilities FROM predictions "
                                 "WHERE run_id = ? ORDER BY image_id", [rid]),
            "embeddings": r.sql("SELECT image_id, vector FROM embeddings WHERE run_id = ? ORDER BY image_id",
                                [rid]),
        }
        return tables, info.precision


@pytest.fixture(scope="module")
def runs(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for precision in ("fp32", "bf16"):
        store = tmp_path_factory.mktemp(precision) / "s"
        assert run_job(_cfg(data, store, precision=precision)).published
        out[precision] = store
    return out


def test_bf16_changes_only_the_forward_only_stages(runs: dict[str, Path]) -> None:
    (a, pa_), (b, pb) = _run(runs["fp32"]), _run(runs["bf16"])
    assert pa_["precision"] == "fp32" and pb["precision"] == "bf16"
    assert pb["bf16_stages"] == ["scorecam", "faithfulness"]
    pd.testing.assert_frame_equal(a["predictions"], b["predictions"])  # bit-equal
    pd.testing.assert_frame_equal(a["embeddings"], b["embeddings"])
    grad_a = a["cams"][a["cams"].method != "scorecam"].reset_index(drop=True)
    grad_b = b["cams"][b["cams"].method != "scorecam"].reset_index(drop=True)
    assert len(grad_a) > 0
    pd.testing.assert_frame_equal(grad_a, grad_b)  # CAM, Grad-CAM, Grad-CAM++: bit-equal
    sc_a = np.stack(a["cams"][a["cams"].method == "scorecam"]["map"].to_numpy())
    sc_b = np.stack(b["cams"][b["cams"].method == "scorecam"]["map"].to_numpy())
    assert not np.array_equal(sc_a, sc_b)  # Score-CAM really ran in bf16
    assert np.abs(sc_a - sc_b).max() < 0.2


def test_recorded_deviation_equals_a_recomputation(data: tuple[Path, Path], runs: dict[str, Path]) -> None:
    _, prec = _run(runs["bf16"])
    cal = prec["calibration"]
    assert isinstance(cal, dict) and cal["images"] == 4
    # recompute the Score-CAM part independently: the engine directly, autocast by hand
    plan = make_plan(_cfg(data, runs["bf16"], precision="bf16"))
    items = calibration_items(plan, 4)
    ds = ImageSet(plan.dataset, items, plan.parts.preprocessing.transform(train=False))
    x = collate([ds[i] for i in range(len(ds))]).x
    assert x is not None
    folded = folded_copy(plan.model)  # bf16 runs their masked forwards on a BN-folded copy
    with CamEngine(plan.model, plan.target_layer, plan.linear_head) as eng:
        res = eng.forward(x, ())
        fp32 = eng.scorecam(x, res.activations, res.targets["pred"], batch_size=32, max_channels=SC_CHANNELS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = eng.scorecam(x, res.activations, res.targets["pred"], batch_size=32,
                                max_channels=SC_CHANNELS, masked_model=folded).float()
    per_image = (bf16 - fp32).abs().flatten(1).amax(1).numpy()
    assert cal["max_abs_dmap"] == pytest.approx(float(per_image.max()), abs=1e-6)
    assert cal["median_abs_dmap"] == pytest.approx(float(np.median(per_image)), abs=1e-6)
    assert cal["max_abs_dscore"] >= cal["median_abs_dscore"] >= 0


def test_runs_show_prints_the_deviation(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from xaidash.cli import main

    assert main(["runs", "show", "--store", str(runs["bf16"])]) == 0
    out = capsys.readouterr().out
    assert "precision  bf16 for Score-CAM and faithfulness: Score-CAM maps within" in out
    assert "measured on 4 images" in out


def test_tf32_is_switched_off_and_recorded_on_cuda(data: tuple[Path, Path], tmp_path: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        assert configure_device(torch.device("cpu")) == {"tf32": None}
        plan = make_plan(_cfg(data, tmp_path / "s"))
        # what a CUDA run records (the switch itself needs no GPU)
        rec = dataclasses.replace(plan, device=torch.device("cuda")).precision_record()
        assert rec == {"precision": "fp32", "bf16_stages": [], "tf32": False}
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # torch's default for cuDNN


def test_fp32_run_hints_at_bf16_with_the_measured_deviation(data: tuple[Path, Path], runs: dict[str, Path],
                                                           caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_mod, "bf16_hardware", lambda dev: "AMX (amx_bf16)")
    monkeypatch.setattr(job_mod, "bf16_speedup", lambda plan, x: 4.2)
    caplog.set_level(logging.INFO, logger="xaidash.compute.pipeline.job")
    # into the store that holds the bf16 run of the same data: the hint quotes its deviation
    run_job(_cfg(data, runs["bf16"], precision="fp32", new_run=True))
    hint = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hint:")]
    assert len(hint) == 1
    assert "about 4.2x faster on this CPU (AMX (amx_bf16))" in hint[0]
    with open_store(runs["bf16"]) as r:
        bf16_runs = [i for i in r.runs()["run_id"] if json.loads(r.run(i).precision_json or "{}")  # type: ignore[union-attr]
                     .get("precision") == "bf16"]
    assert f"run {bf16_runs[0]} measured Score-CAM maps within" in hint[0]


def test_overview_and_image_page_show_the_deviation(runs: dict[str, Path], tmp_path: Path) -> None:
    import plotly

    from xaidash.dashboard.app import create_app, render

    app = create_app(runs["bf16"], selections_dir=tmp_path / "sel")
    state = app.server.config["XAIDASH_STATE"]
    with open_store(runs["bf16"]) as r:
        # the bf16 run (the hint test adds a fp32 run to this store)
        rid = next(i for i in r.runs()["run_id"] if r.run(i).precision.get("precision") == "bf16")  # type: ignore[union-attr]
        image_id = r.sql("SELECT image_id FROM predictions WHERE run_id = ? LIMIT 1", [rid])["image_id"][0]

    def text(path: str, search: str) -> str:
        return json.dumps(render(state, path, search), cls=plotly.utils.PlotlyJSONEncoder, ensure_ascii=False)

    overview = text("/", f"?run={rid}")
    assert "Precision: bf16 for Score-CAM and faithfulness: Score-CAM maps within" in overview
    page = text("/image", f"?run={rid}&id={image_id}")
    assert "bf16: within" in page and "of fp32 (median" in page
    fp32 = create_app(runs["fp32"], selections_dir=tmp_path / "sel2").server.config["XAIDASH_STATE"]
    assert "Precision:" not in json.dumps(render(fp32, "/", ""), cls=plotly.utils.PlotlyJSONEncoder)


def test_masked_batch_follows_free_gpu_memory(data: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from xaidash.compute.pipeline import precision

    plan = make_plan(_cfg(data, tmp_path / "s"))
    x = torch.zeros(4, 3, SIZE, SIZE)
    assert precision.masked_batch_size(plan, x) == 32  # CPU: max(--batch-size, 32)
    gpu = dataclasses.replace(plan, device=torch.device("cuda"))
    used = {"now": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (8_000_000_000, 16_000_000_000))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda dev: used.update(now=0))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: 10_000_000)  # 10 MB per image
    monkeypatch.setattr(precision, "forward_only_precision", lambda p, d: contextlib.nullcontext())
    assert precision.masked_batch_size(gpu, x) == 400  # half of 8 GB free / 10 MB
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev: 100)
    assert precision.masked_batch_size(gpu, x) == precision.MAX_MASKED_BATCH
