"""``xaidash compute --ray``: the same run as one process, on a local Ray instance (2 CPU workers).

Each test compares the Ray run with an undisturbed single-process run of the same job: the same
rows, the same predictions, maps within 1e-6. Faults: a worker SIGKILLed mid-chunk (Ray restarts
it and retries the chunk), a driver SIGKILLed mid-run (a rerun resumes from the staged chunks),
and a worker that cannot read the dataset (one clear error, nothing published).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.imagegen import make_imagefolder
from tests.support.jobs import small_job
from tests.support.models import CLASSES, SIZE, save_tiny_checkpoint
from xaidash.compute.pipeline.job import JobConfig, run_job
from xaidash.compute.pipeline.ray_runner import KILL_WORKER_ENV
from xaidash.errors import UserError
from xaidash.store import open_store

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]

#: Ray's setting of its workers' nice level (its own spelling)
NICENESS_ENV = "RAY_worker_niceness"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance for the module (starting one costs ~3 s).

    Its workers at the tests' own priority: Ray nices them to 15 by default, which starves them
    when other tests run beside these (pytest-xdist), and the driver's waits then time out.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(NICENESS_ENV, "0")  # read by the raylet; CLI runs started here inherit it
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raydata")
    folder = make_imagefolder(root / "data", CLASSES, n_train=6, n_val=8, size=SIZE)
    return folder, save_tiny_checkpoint(root / "model.pt")


def _cfg(folder: Path, ckpt: Path, store: Path, **kw: object) -> JobConfig:
    # the trust tables on a sample (2 sanity cascades, 4 ROAD images): enough rows to compare
    return small_job(folder, store, ckpt, **{"batch_size": 4, "chunk_size": 4, "scorecam_max_channels": 4,
                                             "faithfulness_steps": 2, "twins": 3, "explain": ("pred", "true"),
                                             "sanity_images": 2, "road_images": 4, **kw})


@pytest.fixture(scope="module")
def reference(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, ckpt = data
    store = tmp_path_factory.mktemp("ref") / "s"
    assert run_job(_cfg(folder, ckpt, store)).published
    return store


def _tables(store: Path) -> dict[str, pd.DataFrame]:
    with open_store(store) as r:
        (rid,) = r.runs()["run_id"].tolist()
        order = {
            "predictions": "image_id", "cams": "image_id, method, target_kind", "embeddings": "image_id",
            "neighbors": "image_id, kind, rank", "faithfulness": "image_id, method", "class_metrics": "class",
            # the trust tables: seeded, so Ray workers give the local numbers
            "sanity": "image_id, method, step", "baseline_faithfulness": "image_id, baseline",
            "road": 'image_id, method, "order", fraction',
        }
        return {name: r.sql(f"SELECT * EXCLUDE (run_id) FROM {name} WHERE run_id = ? ORDER BY {by}", [rid])
                for name, by in order.items()}


def _assert_same_run(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        x, y = ta[name], tb[name]
        assert len(x) == len(y) > 0, name
        for col in x.columns:
            if col in ("map", "probabilities", "vector"):  # row by row: the cams' maps differ in size
                for i, (u, v) in enumerate(zip(x[col], y[col], strict=True)):
                    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6,
                                               err_msg=f"{name}.{col}[{i}]")
            elif x[col].dtype.kind == "f":
                np.testing.assert_allclose(x[col].to_numpy(float), y[col].to_numpy(float), atol=1e-5,
                                           err_msg=f"{name}.{col}")
            else:
                pd.testing.assert_series_equal(x[col], y[col], check_names=False, obj=f"{name}.{col}")


def _cluster(store: Path) -> dict[str, object]:
    with open_store(store) as r:
        (rid,) = r.runs()["run_id"].tolist()
        info = r.run(rid)
        assert info is not None
        cluster = info.timings["cluster"]
        assert isinstance(cluster, dict)
        return cluster


def test_ray_run_equals_single_process(ray_local: None, data: tuple[Path, Path], reference: Path,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, ckpt = data
    res = run_job(_cfg(folder, ckpt, tmp_path / "s", ray="local", ray_workers=2))
    assert res.published
    _assert_same_run(reference, tmp_path / "s")
    cluster = _cluster(tmp_path / "s")
    workers = cluster["workers"]
    assert isinstance(workers, list) and len(workers) == 2
    assert sum(w["chunks"] for w in workers) == res.chunks_total == 7  # 16 val + 12 train, chunks of 4
    assert all(w["device"] == "cpu" for w in workers)
    from xaidash.cli import main

    assert main(["runs", "show", "--store", str(tmp_path / "s")]) == 0
    shown = capsys.readouterr().out
    assert "cluster    ray local, 2 workers" in shown and "worker 1 on" in shown


def test_killed_worker_is_restarted_and_its_chunk_retried(ray_local: None, data: tuple[Path, Path],
                                                          reference: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder, ckpt = data
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_WORKER_ENV, f"val-000001::{marker}")
    res = run_job(_cfg(folder, ckpt, tmp_path / "s", ray="local", ray_workers=2))
    assert marker.exists(), "the worker did not reach the chunk it was to die in"
    assert res.published
    _assert_same_run(reference, tmp_path / "s")
    workers = _cluster(tmp_path / "s")["workers"]
    assert isinstance(workers, list) and sum(w["restarts"] for w in workers) == 1


def test_worker_without_the_dataset_is_one_clear_error(ray_local: None, data: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from xaidash.compute.pipeline import ray_runner
    from xaidash.compute.pipeline.plan import make_plan

    folder, ckpt = data
    plan = make_plan(_cfg(folder, ckpt, tmp_path / "s", ray="local"))
    # what a worker on a node without the dataset sees: the driver's paths do not exist there
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    try:
        with pytest.raises(UserError, match=r"worker on node .* cannot open .*/val/.*same path as the"):
            ray_runner.run_on_ray(plan, plan.chunks, frozenset(), ray_runner.RayOptions(workers=1),
                                  lambda out: None)
    finally:
        moved.rename(folder)


def test_brought_model_from_a_file_runs_on_ray(ray_local: None, data: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """``--model python:FILE.py:FUNC``: the file is a module only the driver has imported (under a
    synthetic name), so its classes travel by value; the Ray run equals the single-process one."""
    from tests.support import byo_models

    folder, _ = data
    src = tmp_path / "user_net.py"  # a copy: not importable by name anywhere
    src.write_text(Path(byo_models.__file__).read_text())
    brought = {"checkpoint": None, "model": f"python:{src}:tiny_cnn", "input_size": SIZE,
               "model_args": json.dumps({"classes": len(CLASSES)}),
               "methods": ("cam", "gradcam", "gradcampp"), "explain": ("pred",), "sanity_images": 2}
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    ckpt = Path("unused")
    assert run_job(dataclasses.replace(_cfg(folder, ckpt, local), **brought)).published  # type: ignore[arg-type]
    res = run_job(dataclasses.replace(_cfg(folder, ckpt, on_ray, ray="local", ray_workers=2),
                                      **brought))  # type: ignore[arg-type]
    assert res.published
    _assert_same_run(local, on_ray)
    assert len(_cluster(on_ray)["workers"]) == 2  # type: ignore[arg-type]


_DRIVER = """
import sys
from xaidash.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_driver_resumes_to_an_equal_run(data: tuple[Path, Path], reference: Path,
                                               tmp_path: Path) -> None:
    folder, ckpt = data
    store = tmp_path / "s"
    args = ["compute", "--data", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--store", str(store),
            "--device", "cpu", "--workers", "0", "--batch-size", "4", "--chunk-size", "4",
            "--scorecam-max-channels", "4", "--faithfulness-steps", "2", "--projection", "pca",
            "--twins", "3", "--explain", "pred,true", "--ray", "local", "--ray-workers", "1",
            "--attribution-images", "0", "--sanity-images", "2", "--road-images", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), NICENESS_ENV: "0"}  # see ray_local
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, *args], cwd=str(REPO), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    chunks = store / "_staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(chunks.glob("*/chunks/*.done")):
        time.sleep(0.1)
    assert list(chunks.glob("*/chunks/*.done")), "the driver staged no chunk in time"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait(timeout=30)
    with open_store(store) as r:
        assert len(r.runs()) == 0  # nothing half-published
    out = subprocess.run([sys.executable, "-c", _DRIVER, *args], cwd=str(REPO), env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming:" in out.stderr
    _assert_same_run(reference, store)
