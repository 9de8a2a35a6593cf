"""Atomicity of the store under real SIGKILLs, and readers running while a writer publishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.store import GalleryQuery, Store, open_store
from xaidash.store.builder import staged_schema

REPO = Path(__file__).resolve().parents[2]

# A writer that pauses (prints a marker and sleeps) at a chosen point so the test can SIGKILL it
# exactly there: while a chunk's part files are being written, in the middle of compaction, or
# after the manifest is written but before the rename that publishes the run.
CHILD = textwrap.dedent(
    """
    import hashlib, sys, time, os
    import numpy as np, pyarrow as pa
    import xaidash.store.files as files
    import xaidash.store.write.writer as w
    from xaidash.store.builder import staged_schema
    from xaidash.store.write.writer import Store

    path, where = sys.argv[1], sys.argv[2]

    def pause(tag):
        print(tag, flush=True)
        time.sleep(60)

    if where == "chunk":
        orig = files.write_parquet_atomic
        calls = []
        def slow(p, t, rgs, durable):
            orig(p, t, rgs, durable)
            calls.append(p)
            if len(calls) == 5:  # chunk c2, after its first table is on disk, before its marker
                pause("PAUSED")
        files.write_parquet_atomic = slow
    elif where == "compact":
        orig_c = w.Staging._compact
        def slow_c(self, name, *a):
            rows = orig_c(self, name, *a)
            if name == "cams":
                pause("PAUSED")
            return rows
        w.Staging._compact = slow_c
    elif where == "rename":
        orig_r = os.rename
        def slow_r(src, dst):
            if str(dst).startswith(os.path.join(path, "runs")):
                pause("PAUSED")
            return orig_r(src, dst)
        w.os.rename = slow_r

    def ids(lo, hi):
        return sorted(hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in range(lo, hi))

    store = Store.create(path)
    st = store.staging("killed-job")
    for c in range(3):
        n = 50
        iid = ids(c * n, (c + 1) * n)
        st.write_chunk(f"c{c}", {
            "predictions": pa.table({"image_id": iid, "split": ["val"] * n, "label": [0] * n,
                                     "label_name": ["a"] * n, "pred": [0] * n, "pred_name": ["a"] * n,
                                     "confidence": [0.9] * n, "probabilities": [[0.9, 0.1]] * n,
                                     "correct": [True] * n, "loss": [0.1] * n}),
            "cams": pa.table({"image_id": iid, "method": ["gradcam"] * n, "target_kind": ["pred"] * n,
                              "target_class": [0] * n, "h": [2] * n, "w": [2] * n,
                              "map": [[0.0, 0.5, 1.0, 0.25]] * n}),
        })
    print("CHUNKS_DONE", flush=True)
    st.publish({"dataset_fingerprint": "fp", "class_names": ["a", "b"], "methods": ["gradcam"],
                "num_val": 150}, {"embeddings": staged_schema("embeddings").empty_table()})
    print("PUBLISHED", flush=True)
    """
)


def _spawn(path: Path, where: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


def _wait_for(proc: subprocess.Popen[str], marker: str, timeout: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"timed out waiting for {marker}")


def _kill_when_paused(path: Path, where: str) -> int | None:
    """Start a writer that pauses at ``where``, SIGKILL it there; return its exit code."""
    proc = _spawn(path, where)
    try:
        _wait_for(proc, "PAUSED")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


@pytest.mark.parametrize("where", ["chunk", "compact", "rename"])
def test_sigkill_leaves_nothing_visible_and_next_writer_resumes(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s"
    assert _kill_when_paused(path, where) == -signal.SIGKILL

    # Nothing visible: no run directory, and a reader sees an empty store.
    assert [p.name for p in (path / "runs").iterdir()] == []
    reader = open_store(path)
    assert reader.runs().empty and reader.sql("SELECT count(*) AS n FROM predictions")["n"].iloc[0] == 0

    store = Store.open(path)
    st = store.staging("killed-job")  # the dead writer's lock is free: this resumes
    expected_done = {"c0", "c1"} if where == "chunk" else {"c0", "c1", "c2"}
    assert st.done_chunks() == expected_done
    if where == "chunk":
        st.write_chunk("c2", {"predictions": _rows(100, 150)})
    run_row = {"dataset_fingerprint": "fp", "class_names": ["a", "b"], "methods": ["gradcam"]}
    run_id = st.publish(run_row, {"embeddings": staged_schema("embeddings").empty_table()})
    assert reader.latest_run_id() == run_id
    assert reader.headline(run_id)["n"] == 150

    # And gc cleans a dead writer's staging (a second killed job, never resumed).
    _kill_when_paused(tmp_path / "s2", where)
    s2 = Store.open(tmp_path / "s2")
    staged = list((tmp_path / "s2" / "_staging").iterdir())
    assert len(staged) == 1
    assert s2.gc(grace_s=3600) == []  # within the grace period: kept for a resume
    assert s2.gc() == [str(staged[0])]
    assert list((tmp_path / "s2" / "_staging").iterdir()) == []
    assert list((tmp_path / "s2" / "runs").iterdir()) == []


def _rows(lo: int, hi: int):  # type: ignore[no-untyped-def]
    import hashlib

    import pyarrow as pa

    iid = sorted(hashlib.sha1(str(i).encode()).hexdigest()[:16] for i in range(lo, hi))
    n = len(iid)
    return pa.table(
        {
            "image_id": iid,
            "split": ["val"] * n,
            "label": [0] * n,
            "label_name": ["a"] * n,
            "pred": [0] * n,
            "pred_name": ["a"] * n,
            "confidence": [0.9] * n,
            "probabilities": [[0.9, 0.1]] * n,
            "correct": [True] * n,
            "loss": [0.1] * n,
        }
    )


def test_gc_never_touches_a_live_writer(tmp_path: Path) -> None:
    path = tmp_path / "s"
    proc = _spawn(path, "compact")
    try:
        _wait_for(proc, "PAUSED")
        assert Store.open(path).gc() == []  # the child holds its lock
        assert len(list((path / "_staging").iterdir())) == 1
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_reader_thread_while_writer_publishes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    build_synthetic_store(path, n_val=200, n_train=50, n_classes=4, emb_dim=16, runs=1, seed=1)
    reader = open_store(path)
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def read_loop() -> None:
        try:
            while not stop.is_set():
                runs = reader.runs()
                seen.append(len(runs))
                # the cross-run views work from any thread's cursor
                assert reader.sql("SELECT count(*) AS n FROM runs")["n"].iloc[0] >= len(runs)
                for run_id, n_val in zip(runs["run_id"], runs["num_val"], strict=True):
                    # every visible run is complete
                    assert reader.headline(run_id)["n"] == n_val
                    _, total = reader.gallery(run_id, GalleryQuery(outcome="wrong"))
                    assert total == reader.headline(run_id)["errors"]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for seed in (2, 3):
            build_synthetic_store(path, n_val=200, n_train=50, n_classes=4, emb_dim=16, runs=1, seed=seed)
    finally:
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert seen and seen == sorted(seen) and seen[-1] == 3  # runs only ever appear, whole
    assert len(reader.runs()) == 3
