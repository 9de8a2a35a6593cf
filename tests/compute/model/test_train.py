"""``xaidash train``: learning a tiny generated task, determinism, skipped files, bad inputs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import xaidash.cli as cli
from tests.support.imagegen import (
    make_bright_imagefolder,
    make_fake_cifar10,
    make_imagefolder,
    write_corrupt_image,
)
from xaidash.compute.datasets.sources import open_dataset
from xaidash.compute.model.checkpoint import load_checkpoint, model_from_checkpoint
from xaidash.compute.model.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _train_only_and_one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Test `train` through the real dispatcher, independent of the other sub-commands' state.
    monkeypatch.setattr(cli, "COMMANDS", {"train": cli.COMMANDS["train"]})
    # The CI box has 2 cores shared by several jobs: one thread avoids OpenMP oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "lr", n_train=16, n_val=10, size=32, seed=0)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith("xaidash train: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_train_learns_tiny_task(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ckpt" / "m.pt"
    rc = cli.main(["train", "--data", f"imagefolder:{folder}", "--model", "resnet18", "--input-size", "16",
                   "--epochs", "3", "--lr", "1e-3", "--batch-size", "8", "--workers", "0", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    acc = float(re.search(r"validation accuracy: ([0-9.]+) \(20 images\)", stdout).group(1))  # type: ignore[union-attr]
    assert acc >= 0.85
    assert re.search(r"left\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+10", stdout)  # per-class P/R/F1/support
    assert "elapsed:" in stdout and "skipped" not in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.classes == ["left", "right"] and ckpt.arch == "resnet18" and ckpt.small_input_stem
    assert ckpt.preprocessing.input_size == 16
    assert ckpt.metrics["val_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert set(ckpt.metrics["per_class"]["left"]) == {"precision", "recall", "f1-score", "support"}
    assert ckpt.train_args["epochs"] == 3 and ckpt.train_args["data"] == f"imagefolder:{folder}"
    # the checkpoint predicts like the reported accuracy
    parts = model_from_checkpoint(ckpt)
    ds = open_dataset(f"imagefolder:{folder}")
    t = parts.preprocessing.transform()
    items = ds.items("val")
    x = torch.stack([t(ds.load(it)) for it in items])
    with torch.no_grad():
        pred = parts.model(x).argmax(1)
    got = (pred == torch.tensor([it.label for it in items])).float().mean().item()
    assert got == pytest.approx(acc, abs=1e-4)


def test_train_deterministic_and_skips_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=4, n_val=2, size=16, seed=1)
    write_corrupt_image(root / "train" / "left" / "broken.png")
    cfg = dict(data=f"imagefolder:{root}", model="resnet18", input_size=16, epochs=1, batch_size=4,
               workers=0, lr=1e-3)
    with caplog.at_level(logging.WARNING):
        a = train(TrainConfig(out=str(tmp_path / "a.pt"), **cfg))  # type: ignore[arg-type]
    b = train(TrainConfig(out=str(tmp_path / "b.pt"), **cfg))  # type: ignore[arg-type]
    assert a.skipped == b.skipped and list(a.skipped) == ["train/left/broken.png"]
    assert "skipping unreadable image train/left/broken.png" in caplog.text
    assert "skipped 1 unreadable images" in caplog.text
    for k, v in a.checkpoint.state_dict.items():
        assert torch.equal(v, b.checkpoint.state_dict[k]), k
    assert a.checkpoint.metrics["skipped"] == 1


def test_train_reports_skipped_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=1, size=16)
    write_corrupt_image(root / "val" / "right" / "bad.jpg")
    rc = cli.main(["train", "--data", f"imagefolder:{root}", "--model", "resnet18", "--epochs", "1",
                   "--workers", "0", "--out", str(tmp_path / "m.pt")])
    assert rc == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out


def test_train_counts_evaluated_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Printed "validation accuracy: 0.5000 (17 images)" when 1 of the 17 was skipped.
    root = make_imagefolder(tmp_path / "d", n_train=2, n_val=8, size=16)
    write_corrupt_image(root / "val" / "right" / "bad.png")
    write_corrupt_image(root / "train" / "left" / "bad.png")
    rc = cli.main(["train", "--data", f"imagefolder:{root}", "--model", "resnet18", "--epochs", "1",
                   "--workers", "0", "--out", str(tmp_path / "m.pt")])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"validation accuracy: [0-9.]+ \(16 of 17 images; 1 unreadable, skipped\)", out), out
    assert "skipped 2 unreadable images (1 train, 1 val;" in out
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.metrics["n_val"] == 16 and ckpt.metrics["n_val_skipped"] == 1
    assert ckpt.metrics["n_train"] == 4 and ckpt.metrics["n_train_skipped"] == 1


def test_batchnorm_statistics_recalibrated_after_training(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # 4 epochs on 32 bright images (one batch each) with the default lr: ~0.97 training accuracy,
    # but BatchNorm's running statistics (4 updates of 10 % from mean 0 / var 1) are far from the
    # images' and eval mode predicted one class for every validation image.
    root = make_bright_imagefolder(tmp_path / "d", n_train=16, n_val=8, size=16)
    with caplog.at_level(logging.INFO):
        res = train(TrainConfig(data=f"imagefolder:{root}", model="resnet18", out=str(tmp_path / "m.pt"),
                                epochs=4, batch_size=32, workers=0))
    history = res.checkpoint.metrics["history"]
    assert history[-1]["train_acc"] >= 0.9
    assert history[-1]["val_acc"] == 0.5  # the trap is real: the training-time statistics predict one class
    assert res.accuracy is not None and res.accuracy >= 0.9
    assert "recalibrated BatchNorm statistics over 32 training images" in caplog.text
    assert res.checkpoint.metrics["bn_recalibrated"] == 32
    # the checkpoint carries the recalibrated statistics: it predicts both classes
    parts = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))
    ds = open_dataset(f"imagefolder:{root}")
    t = parts.preprocessing.transform()
    x = torch.stack([t(ds.load(it)) for it in ds.items("val")])
    with torch.no_grad():
        pred = parts.model.eval()(x).argmax(1)
    assert set(pred.tolist()) == {0, 1}


def test_frozen_backbone_keeps_its_batchnorm_statistics(tmp_path: Path) -> None:
    from xaidash.compute.model.architectures import build_model

    root = make_bright_imagefolder(tmp_path / "d", n_train=4, n_val=2, size=16)
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(build_model("resnet18", 2, input_size=16).model.state_dict(), weights)
    res = train(TrainConfig(data=f"imagefolder:{root}", model="resnet18", out=str(tmp_path / "m.pt"),
                            weights=str(weights), input_size=16, epochs=1, batch_size=8, workers=0,
                            freeze_backbone=True))
    before = torch.load(weights, weights_only=True)
    for k, v in res.checkpoint.state_dict.items():
        if "running_" in k:
            assert torch.equal(v, before[k]), k  # frozen: neither trained nor recalibrated


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("unknown_kind", r"unknown dataset kind 'mnist'; valid dataset kinds: cifar10, fashion-mnist"),
        ("unknown_model", r"unknown model 'resnet9'; valid models: .*efficientnet_lite0.*resnet18"),
        ("missing", r"image folder not found: .*nope"),
        ("empty", r"no class folders in .*empty"),
        ("no_images", r"class folder has no images: .*val/ghost"),
        ("no_train", r"has no train split"),
        ("unlabeled", r"is unlabeled"),
        ("unknown_class", r"unknown cifar10 class 'unicorn'; valid classes: airplane"),
        ("other_arch", r"weights .* do not fit resnet34: key 'layer1\.2\.conv1\.weight' is missing"),
        ("bad_out", r"cannot write to"),
        ("cuda", r"--device cuda: no CUDA GPU"),
        ("bad_device", r"invalid device .tpu."),
    ],
)
def test_bad_inputs_one_line(case: str, pattern: str, folder: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    data, model, extra = f"imagefolder:{folder}", "resnet18", []
    out = str(tmp_path / "m.pt")
    if case == "unknown_kind":
        data = "mnist:x"
    elif case == "unknown_model":
        model = "resnet9"
    elif case == "missing":
        data = f"imagefolder:{tmp_path / 'nope'}"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        data = f"imagefolder:{tmp_path / 'empty'}"
    elif case == "no_images":
        root = make_imagefolder(tmp_path / "d", n_train=0, n_val=1, size=8)
        (root / "val" / "ghost").mkdir()
        data = f"imagefolder:{root}"
    elif case == "no_train":
        data = f"imagefolder:{folder / 'val'}"
    elif case == "unlabeled":
        data = f"folder:{folder / 'val'}"
    elif case == "unknown_class":
        root = make_fake_cifar10(tmp_path / "c", n_per_batch=10)
        data = "cifar10:cat,unicorn"
        extra = ["--data-root", str(root)]
    elif case == "other_arch":
        from xaidash.compute.model.architectures import build_model

        weights = tmp_path / "r18.pth"
        torch.save(build_model("resnet18", 2, input_size=32).model.state_dict(), weights)
        model, extra = "resnet34", ["--weights", str(weights)]
    elif case == "bad_out":
        (tmp_path / "afile").write_text("x")
        out = str(tmp_path / "afile" / "m.pt")  # parent is a file
    elif case == "cuda":
        extra = ["--device", "cuda"]
    elif case == "bad_device":
        with pytest.raises(SystemExit) as ei:  # argparse rejects it: usage + one error line
            cli.main(["train", "--data", data, "--model", model, "--out", out, "--device", "tpu"])
        assert ei.value.code == 2
        assert re.search(pattern, capsys.readouterr().err)
        return
    rc = cli.main(["train", "--data", data, "--model", model, "--out", out, "--epochs", "1",
                   "--workers", "0", *extra])
    assert rc == 2
    line = _error_line(capsys)
    assert re.search(pattern, line), line
    assert not Path(out).exists()


def test_argparse_rejects_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        cli.main(["train", "--data", "cifar10", "--model", "resnet18", "--out", "x.pt", "--epochs", "0"])
    assert ei.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, xaidash.compute.cli.train, xaidash.compute.cli.args; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
