"""The malformed-image corpus (tests/support/corpus.py) through ``xaidash train`` and ``xaidash compute``.

Every case of every kind ends decoded (trained on, computed), reported (train's warning and
compute's ``failures`` row, with its path and a reason), or - for what is not a file of the
dataset, a directory symlink loop - warned about; nothing hangs (each kind runs under its own
timeout: pytest-timeout's SIGALRM interrupts even a blocking ``open()`` of a FIFO, as the
commands run in-process with ``--workers 0``) and nothing is multiplied. Then peak memory of
``compute`` over the whole corpus against a clean dataset of as many images (within
1.2x).

Tests run as root in CI: the mode-000 file of the ``permission`` kind is decoded there.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xaidash.cli as cli
from tests.support.corpus import KINDS, Case, make_malformed_corpus
from tests.support.imagegen import make_imagefolder
from tests.support.models import SIZE, save_tiny_checkpoint
from xaidash.compute.datasets.sources import open_dataset
from xaidash.store.read.reader import open_store

COMPUTE_ARGS = ["--device", "cpu", "--workers", "0", "--methods", "gradcam", "--no-faithfulness",
                "--attribution-images", "0", "--sanity-images", "0", "--road-fractions", "none",
                "--projection", "pca", "--twins", "2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    yield
    torch.set_num_threads(threads)


def _skips(records: list[logging.LogRecord]) -> dict[str, str]:
    """source -> reason of the 'skipping unreadable image' warnings (train's and compute's)."""
    out: dict[str, str] = {}
    for r in records:
        if r.msg == "skipping unreadable image %s: %s" and isinstance(r.args, tuple):
            out[str(r.args[0])] = str(r.args[1])
    return out


def _check(cases: list[Case], decoded: set[str], reported: dict[str, str], log: str, where: str) -> None:
    for c in cases:
        if c.expect == "decoded":
            assert c.path in decoded, f"{where}: {c.kind} ({c.path!r}) not decoded: {reported.get(c.path)}"
            assert c.path not in reported, f"{where}: {c.kind} reported: {reported[c.path]}"
        elif c.expect == "reported":
            assert c.path in reported, f"{where}: {c.kind} ({c.path!r}) was not reported"
            assert re.search(c.reason, reported[c.path]), f"{where}: {c.kind}: {reported[c.path]!r}"
        else:
            assert re.search(rf"{re.escape(c.path)}: .*{c.reason}", log), f"{where}: no warning for {c.kind}"
    expected = {c.path for c in cases if c.expect == "reported"}
    assert set(reported) == expected, f"{where}: reported beyond the corpus: {set(reported) - expected}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_through_train_and_compute(kind: str, ckpt: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    cases = make_malformed_corpus(root, kinds=[kind], splits=("train", "val"), n_train=2, n_val=2, size=SIZE)
    clean = {"train": 4, "val": 4}
    ds = open_dataset(f"imagefolder:{root}")
    for split in ("train", "val"):  # nothing multiplied, nothing lost
        files = [c for c in cases if c.path.startswith(f"{split}/") and c.expect != "warned"]
        assert len(ds.items(split)) == clean[split] + len(files), split
    sources = {it.image_id: it.source for s in ("train", "val") for it in ds.items(s)}

    # train: one epoch, decoding every image of both splits (and once more for BatchNorm)
    with caplog.at_level(logging.WARNING):
        rc = cli.main(["train", "--data", f"imagefolder:{root}", "--model", "resnet18",
                       "--input-size", str(SIZE), "--epochs", "1", "--batch-size", "8", "--workers", "0",
                       "--out", str(tmp_path / "m.pt")])
    out = capsys.readouterr().out
    assert rc == 0, out
    reported = _skips(caplog.records)
    decoded = set(sources.values()) - set(reported)
    _check(cases, decoded, reported, caplog.text, "train")
    n_bad_val = sum(1 for c in cases if c.path.startswith("val/") and c.expect == "reported")
    n_val = len(ds.items("val")) - n_bad_val
    counted = f"{n_val} images"
    if n_bad_val:
        counted = f"{n_val} of {n_val + n_bad_val} images; {n_bad_val} unreadable, skipped"
    assert f"({counted})" in out, out

    # compute: every image of both splits; failures in the store
    caplog.clear()
    store = tmp_path / "s"
    with caplog.at_level(logging.WARNING):
        rc = cli.main(["compute", "--data", f"imagefolder:{root}", "--checkpoint", str(ckpt),
                       "--store", str(store), *COMPUTE_ARGS])
    assert rc == 0, capsys.readouterr().err
    with open_store(store) as r:
        run_id = str(r.runs().iloc[0]["run_id"])
        fails = r.sql("SELECT source, reason FROM failures WHERE run_id = ?", [run_id])
        emb = r.sql("SELECT image_id FROM embeddings WHERE run_id = ?", [run_id])
    reported = dict(zip(fails.source, fails.reason, strict=True))
    decoded = {sources[i] for i in emb.image_id}
    _check(cases, decoded, reported, caplog.text, "compute")
    assert decoded | set(reported) == set(sources.values())


def _peak_rss_kib(cmd: list[str]) -> int:
    """Peak resident memory (KiB) of ``cmd`` run in a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return int(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compute_memory_over_the_corpus(ckpt: Path, tmp_path: Path) -> None:
    # One 1x400,000 image took a job from 1.0 GB to 2.9 GB peak: the whole corpus must stay
    # within 1.2x of a clean dataset with as many images.
    corpus = tmp_path / "corpus"
    cases = make_malformed_corpus(corpus, size=SIZE)
    ds = open_dataset(f"imagefolder:{corpus}")
    n_val, n_train = len(ds.items("val")), len(ds.items("train"))
    clean = make_imagefolder(tmp_path / "clean", n_train=n_train // 2, n_val=n_val // 2, size=SIZE)
    if n_val % 2:
        left = clean / "val" / "left"
        (left / "extra.png").write_bytes((left / "left_0000.png").read_bytes())
    assert len(open_dataset(f"imagefolder:{clean}").items("val")) == n_val

    def run(data: Path, store: Path) -> int:
        return _peak_rss_kib([sys.executable, "-m", "xaidash.cli", "compute", "--data", f"imagefolder:{data}",
                              "--checkpoint", str(ckpt), "--store", str(store), *COMPUTE_ARGS])

    clean_kib = run(clean, tmp_path / "s_clean")
    corpus_kib = run(corpus, tmp_path / "s_corpus")
    report = {"images": n_val + n_train, "cases": len(cases), "clean_peak_mib": round(clean_kib / 1024, 1),
              "corpus_peak_mib": round(corpus_kib / 1024, 1), "ratio": round(corpus_kib / clean_kib, 3)}
    print("compute peak memory:", json.dumps(report))
    assert corpus_kib <= 1.2 * clean_kib, report


@pytest.mark.timeout(120)
def test_upload_payloads_answer_like_compute(tmp_path: Path) -> None:
    # What the explain page will see: the same decoder on the bytes of every regular file.
    from tests.support.corpus import upload_payloads
    from xaidash.compute.datasets.decoding import ImageLoadError, load_image

    root = tmp_path / "d"
    cases = make_malformed_corpus(root, size=SIZE)
    payloads = upload_payloads(root, cases)
    kinds = {c.kind for c, _ in payloads}
    assert {"thin 1xN", "zero-byte", "16-bit grayscale", "corrupt EXIF (png)", "CMYK jpeg"} <= kinds
    assert "fifo" not in kinds
    for case, data in payloads:
        name = case.path.rsplit("/", 1)[-1]
        if case.expect == "decoded":
            assert load_image(data, name=name).mode == "RGB"
            continue
        with pytest.raises(ImageLoadError) as ei:
            load_image(data, name=name)
        assert ei.value.path == name and re.search(case.reason, ei.value.reason), (case, ei.value.reason)
