"""End to end, as a user works: the demo, the retraining loop, and both in the browser.

- ``xaidash demo --no-serve`` on real Fashion-MNIST (small sizes here), twice: the second time
  reuses the checkpoint and adds a run.
- The retraining loop: train, compute, train again with other settings, compute again; the
  store's diff and the dashboard's compare page show what changed.

Set ``XAIDASH_DEMO_WORKDIR`` to a finished full-size demo to take the README screenshot from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.browser import LiveServer, check_page, css, open_page, wait_for
from tests.support.imagegen import make_imagefolder
from xaidash.cli import main
from xaidash.compute.pipeline.precision import bf16_hardware
from xaidash.constants import ATTRIBUTION_METHODS, METHODS
from xaidash.store import open_store

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
TINY_DEMO = [
    "--train-images",
    "64",
    "--val-images",
    "16",
    "--twin-pool",
    "32",
    "--epochs",
    "1",
    "--scorecam-channels",
    "8",
    "--faithfulness-steps",
    "2",
    "--calibration-images",
    "4",
    "--sanity-images",
    "2",
    "--attribution-images",
    "2",
    "--road-images",
    "2",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("XAIDASH_DEMO_WORKDIR")
    if given:
        return Path(given) / "store"
    if not FASHION.exists() and not os.environ.get("XAIDASH_DATA"):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    workdir = tmp_path_factory.mktemp("demo")
    args = ["demo", "--workdir", str(workdir), "--no-serve", *TINY_DEMO]
    assert main(args) == 0
    ckpt = workdir / "fashion-resnet18.pt"
    trained_at = ckpt.stat().st_mtime_ns
    assert main(args) == 0  # again: reuses the checkpoint and adds a run
    assert ckpt.stat().st_mtime_ns == trained_at
    return workdir / "store"


def test_demo_runs_twice_and_adds_a_run(demo_store: Path) -> None:
    if os.environ.get("XAIDASH_DEMO_WORKDIR"):
        pytest.skip("checks the tiny demo this test runs itself")
    with open_store(demo_store) as r:
        runs = r.runs()
        assert len(runs) == 2
        for run_id in runs["run_id"]:
            info = r.run(run_id)
            assert info is not None
            assert info.class_names == ["T-shirt/top", "Pullover", "Coat", "Shirt"]
            assert set(info.methods) == set(METHODS)
            assert info.scorecam_note  # the (tiny) demo's Score-CAM approximation is labelled
            # the demo's precision is bf16 where the machine has a bf16 unit, measured against fp32
            precision = info.precision.get("precision", "fp32")
            assert precision == ("bf16" if bf16_hardware(torch.device("cpu")) else "fp32")
            if precision == "bf16":
                assert info.precision_note and "measured on 4 images" in info.precision_note
            assert r.headline(run_id)["n"] == 16
            # the CAMs on all 16 images, the pixel attributions on the sample of 2
            summary = r.faithfulness_summary(run_id).set_index("method")["n"].to_dict()
            assert summary == {**dict.fromkeys(info.methods, 16), **dict.fromkeys(ATTRIBUTION_METHODS, 2)}


@pytest.fixture(scope="module")
def demo_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(demo_store, tmp_path_factory.mktemp("sel"))
    yield srv
    srv.close()


@pytest.mark.browser
def test_demo_dashboard(driver: Any, demo_server: LiveServer) -> None:
    open_page(driver, demo_server.url + "/", "#overview-confusion .js-plotly-plot")
    assert "Score-CAM note" in driver.page_source  # the approximation is said where maps are shown
    if bf16_hardware(torch.device("cpu")):
        assert "Precision: bf16 for Score-CAM and faithfulness" in driver.page_source
    check_page(driver, "demo_overview")
    open_page(driver, demo_server.url + "/gallery?outcome=wrong&sort=confidence&desc=1", "#gallery-rows")
    wait_for(lambda: css(driver, "#gallery-rows .xd-row img"), "gallery rows")
    check_page(driver, "demo_gallery_wrong")
    css(driver, "#gallery-rows .xd-row-link")[0].click()
    wait_for(lambda: "/image" in driver.current_url, "navigation to the image page")
    wait_for(lambda: css(driver, "#image-twins img"), "the twins")
    assert len(css(driver, ".xd-cam-large")) == 8  # four maps for pred, four for the true class
    check_page(driver, "demo_image")


def _train(*args: str) -> None:
    assert main(["train", *args, "--device", "cpu", "--workers", "0", "--batch-size", "8"]) == 0


def _compute(data: str, ckpt: Path, store: Path) -> str:
    assert (
        main(
            [
                "compute",
                "--data",
                data,
                "--checkpoint",
                str(ckpt),
                "--store",
                str(store),
                "--methods",
                "gradcam,gradcampp",
                "--no-faithfulness",
                "--attribution-images",
                "0",
                "--projection",
                "pca",
                "--device",
                "cpu",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    with open_store(store) as r:
        run_id = r.latest_run_id()
    assert run_id is not None
    return run_id


@pytest.mark.browser
def test_retraining_loop_compare(tmp_path: Path, driver: Any) -> None:
    data = make_imagefolder(tmp_path / "data", ("cat", "dog"), n_train=20, n_val=10, size=16)
    spec = f"imagefolder:{data}"
    store = tmp_path / "store"
    v1, v2 = tmp_path / "v1.pt", tmp_path / "v2.pt"
    _train("--data", spec, "--model", "resnet18", "--epochs", "1", "--lr", "1e-5", "--out", str(v1))
    run_a = _compute(spec, v1, store)
    _train("--data", spec, "--model", "resnet18", "--epochs", "3", "--lr", "1e-3", "--out", str(v2))
    run_b = _compute(spec, v2, store)
    assert run_a != run_b

    with open_store(store) as r:
        diff = r.diff(run_a, run_b)
        acc = diff.metrics.set_index("metric").loc["accuracy"]
        assert acc["a"] == pytest.approx(r.headline(run_a)["accuracy"])
        assert acc["b"] == pytest.approx(r.headline(run_b)["accuracy"])
        assert acc["delta"] == pytest.approx(acc["b"] - acc["a"])
        pred_a = r.sql("SELECT image_id, pred FROM predictions WHERE run_id = ?", [run_a])
        pred_b = r.sql("SELECT image_id, pred FROM predictions WHERE run_id = ?", [run_b])
        merged = pred_a.merge(pred_b, on="image_id", suffixes=("_a", "_b"))
        changed = set(merged.loc[merged["pred_a"] != merged["pred_b"], "image_id"])
        assert set(diff.flips["image_id"]) == changed
        if changed:
            history = r.image_history(run_b, sorted(changed)[0])
            assert set(history["run_id"]) == {run_a, run_b}

    srv = LiveServer(store, tmp_path / "sel")
    try:
        open_page(driver, f"{srv.url}/compare?a={run_a}&b={run_b}", "#compare-metrics")
        assert "right → wrong" in driver.page_source and "wrong → right" in driver.page_source
        check_page(driver, "retrain_compare")
    finally:
        srv.close()
