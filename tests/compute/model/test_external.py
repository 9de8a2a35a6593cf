"""``--model python:/timm:/hf:`` end to end: each tiny model runs ``compute``, publishes a run, and
its stored Grad-CAM / Grad-CAM++ maps equal the literal formulas on the recorded map layout; the
run records the model, its preprocessing and the chosen layer, and the explain page's path
rebuilds it. Every bad model input fails in one line with a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support import byo_models
from tests.support.imagegen import make_imagefolder
from xaidash.cli import main
from xaidash.constants import METHODS
from xaidash.store.read.reader import open_store

CLASSES = ("a", "b", "c")
HERE = Path(byo_models.__file__)
FAST = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--faithfulness-steps", "2",
        "--projection", "pca", "--twins", "1", "--sanity-images", "2", "--road-fractions", "0.5",
        "--calibration-images", "1", "--attribution-images", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("byo")
    return {s: make_imagefolder(root / str(s), CLASSES, n_train=1, n_val=2, size=s) for s in (32, 64)}


def _compute(store: Path, data: Path, *model: str) -> None:
    rc = main(["compute", "--data", f"imagefolder:{data}", "--store", str(store), *model, *FAST])
    assert rc == 0


def _check_run(store: Path, data: Path, layout: str) -> dict[str, object]:
    """The run is published, its maps equal the literal formulas; returns the recorded model."""
    from xaidash.compute.datasets.sources import open_dataset
    from xaidash.compute.model.layers import TargetLayer
    from xaidash.compute.model.loading import load_model

    with open_store(store) as r:
        runs = r.runs()
        assert len(runs) == 1 and runs.iloc[0]["status"] == "complete"
        rid = str(runs.iloc[0]["run_id"])
        cams = r.sql("SELECT image_id, method, target_class, h, w, map FROM cams WHERE run_id = ? AND "
                     "target_kind = 'pred' AND method IN ('gradcam', 'gradcampp')", [rid])
        emb = r.sql("SELECT image_id, vector FROM embeddings WHERE run_id = ?", [rid])
        sanity = r.sql("SELECT DISTINCT block FROM sanity WHERE run_id = ?", [rid])
    ref = json.loads(runs.iloc[0]["config_json"])["model"]
    target = TargetLayer.from_dict(ref["target"])
    assert target.layout.kind == layout and ref["preprocessing"]["input_size"] > 0
    assert len(sanity) >= 2 and len(emb) == 3 * 3
    loaded = load_model(ref)
    model = loaded.parts.model.eval()
    transform = loaded.parts.preprocessing.transform()
    ds = open_dataset(f"imagefolder:{data}")
    items = {it.image_id: it for it in ds.items("val")}
    ids = sorted(items)
    x = torch.stack([transform(ds.load(items[i])) for i in ids])
    gc = cams[cams.method == "gradcam"].set_index("image_id")
    c = torch.tensor([int(gc.loc[i, "target_class"]) for i in ids])
    lit = byo_models.literal_maps(model, target, x, c)
    for m in ("gradcam", "gradcampp"):
        got = cams[cams.method == m].set_index("image_id")
        for row, i in enumerate(ids):
            stored = np.asarray(got.loc[i, "map"], dtype=np.float64).reshape(target.height, target.width)
            err = float(np.abs(stored - lit[m][row].numpy()).max())
            assert err <= 2e-3, f"{m} {i}: {err}"
    return dict(ref)


def _dashboard_renders(store: Path) -> None:
    """Every page of the dashboard renders the brought model's run (no error alert in any)."""
    from plotly.utils import PlotlyJSONEncoder

    from xaidash.dashboard.app import PAGES, create_app, render_page
    from xaidash.dashboard.params import Filters

    state = create_app(store).server.config["XAIDASH_STATE"]
    resolved = state.data.resolve_run(None)
    assert resolved.info is not None
    for _, path, _ in PAGES:
        page = json.dumps(render_page(state, path, Filters(), resolved), cls=PlotlyJSONEncoder)
        assert "could not be rendered" not in page, path


def test_custom_cnn_python_file(data: dict[int, Path], tmp_path: Path) -> None:
    store = tmp_path / "s"
    _compute(store, data[32], "--model", f"python:{HERE}:tiny_cnn", "--input-size", "32")
    ref = _check_run(store, data[32], "nchw")
    assert ref["target"]["name"] == "body" and ref["target"]["linear_head"] == "classifier"  # type: ignore[index]
    assert ref["preprocessing"] == {"input_size": 32, "resize": 32, "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225], "crop": False}


def test_whole_module_file_and_explain_page(data: dict[int, Path], tmp_path: Path) -> None:
    """``module:FILE`` (torch.save(model, FILE)): the maps equal the formulas, the explain page
    rebuilds it, and a changed file is refused on rebuild."""
    from PIL import Image

    from xaidash.compute.model.external import build
    from xaidash.compute.pipeline.single_image import explain_image
    from xaidash.errors import UserError

    file = tmp_path / "whole.pt"
    torch.save(byo_models.tiny_cnn(), file)
    store = tmp_path / "s"
    _compute(store, data[32], "--model", f"module:{file}", "--input-size", "32")
    ref = _check_run(store, data[32], "nchw")
    assert ref["external"] == f"module:{file}" and ref["target"]["name"] == "body"  # type: ignore[index]
    ex = explain_image(ref, Image.open(next((data[32] / "val" / "a").iterdir())))
    assert ex.maps["gradcam"].shape == (16, 16)
    other = byo_models.tiny_cnn()
    torch.nn.init.zeros_(other.classifier.weight)
    torch.save(other, file)
    with pytest.raises(UserError, match="module changed since the run"):
        build(ref)


def test_classes_file_orders_an_image_folder(tmp_path: Path) -> None:
    from xaidash.compute.datasets.sources import open_dataset
    from xaidash.errors import UserError

    root = make_imagefolder(tmp_path / "d", ("a", "b", "c"), n_train=1, n_val=1, size=16)
    assert open_dataset(f"imagefolder:{root}").classes == ["a", "b", "c"]
    (root / "classes.txt").write_text("c\na\nb\n")
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.classes == ["c", "a", "b"]
    labels = {it.source.split("/")[1]: it.label for it in ds.items("val")}
    assert labels == {"c": 0, "a": 1, "b": 2}
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="must list each class folder once"):
        open_dataset(f"imagefolder:{root}")


def test_timm_vit(data: dict[int, Path], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    store = tmp_path / "s"
    _compute(store, data[64], "--model", "timm:vit_tiny_patch16_224", "--model-args",
             json.dumps(byo_models.TIMM_VIT_ARGS))
    ref = _check_run(store, data[64], "tokens")
    target = ref["target"]
    assert target["name"] == "blocks.1.norm1" and target["linear_head"] is None  # type: ignore[index]
    assert target["layout"] == {"kind": "tokens", "prefix_tokens": 1, "grid": [8, 8]}  # type: ignore[index]
    assert ref["preprocessing"]["library"] == "timm"  # type: ignore[index]
    _dashboard_renders(store)


def test_timm_swin(data: dict[int, Path], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    store = tmp_path / "s"
    args = {**byo_models.TIMM_SWIN_ARGS, "depths": [1, 1], "num_heads": [1, 2]}
    _compute(store, data[64], "--model", "timm:swin_tiny_patch4_window7_224", "--model-args",
             json.dumps(args))
    ref = _check_run(store, data[64], "nhwc")
    assert ref["target"]["linear_head"] == "head.fc"  # type: ignore[index]


def test_hf_vit_and_explain_page(data: dict[int, Path], tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from PIL import Image

    from xaidash.compute.pipeline.single_image import explain_image

    folder = byo_models.hf_vit_folder(tmp_path / "hf", CLASSES, image_size=32)
    store = tmp_path / "s"
    _compute(store, data[32], "--model", f"hf:{folder}")
    ref = _check_run(store, data[32], "tokens")
    assert ref["classes"] == list(CLASSES) and ref["preprocessing"]["library"] == "hf"  # type: ignore[index]
    img = Image.open(next((data[32] / "val" / "a").iterdir()))
    ex = explain_image(ref, img)
    assert set(ex.maps) == set(METHODS) - {"cam"} and "not applicable" in ex.notes["cam"]
    assert ex.maps["gradcam"].shape == (4, 4) and ex.image.size == (32, 32)
    assert ex.embedding.shape == (32,)  # the class token the classifier reads
    _dashboard_renders(store)


# --------------------------------------------------------------------------------------------
# bad inputs: one line, non-zero exit, before any work


def _bad(capsys: pytest.CaptureFixture[str], data: Path, store: Path, *model: str) -> str:
    rc = main(["compute", "--data", f"imagefolder:{data}", "--store", str(store), *model, *FAST])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err and "\n" not in err and "Traceback" not in err, err
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())
    return err


@pytest.mark.parametrize(("model", "expect"), [
    (["--model", "python:/nonexistent/model.py:f"], "model file /nonexistent/model.py does not exist"),
    (["--model", "python:no_such_pkg_xyz.models:f"], "no Python module 'no_such_pkg_xyz.models'"),
    (["--model", f"python:{HERE}:tiny_cnm"], "has no function 'tiny_cnm'; did you mean tiny_cnn"),
    (["--model", f"python:{HERE}:not_a_module"], "returned a dict, not a torch.nn.Module"),
    (["--model", f"python:{HERE}:TIMM_VIT_ARGS"], "is a dict, not a function"),
    (["--model", "timm:vit_tiny_patch16_22"], "unknown timm model 'vit_tiny_patch16_22'; close matches: "
                                              "vit_tiny_patch16_224"),
    (["--model", f"python:{HERE}:tiny_cnn", "--model-args", '{"classes": 5}'],
     "gives 5 logits per image, but there are 3 classes"),
    (["--model", f"python:{HERE}:tiny_cnn", "--target-layer", "body.9"], "no layer 'body.9'"),
    (["--model", f"python:{HERE}:tiny_cnn", "--target-layer", "classifier"], "which is no map"),
    (["--model", f"python:{HERE}:tiny_cnn", "--classes", "x,y,z"], "do not match the dataset's classes"),
    (["--model", f"python:{HERE}:tiny_cnn", "--mean", "0.5,0.5"], "--mean takes three comma-separated"),
    (["--model", "resnet18", "--weights", "imagenet", "--input-size", "32"],
     "set the preprocessing of python:"),
])
def test_bad_model_input_is_one_line(model: list[str], expect: str, data: dict[int, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    if any("timm:" in m for m in model):
        pytest.importorskip("timm")
    assert expect in _bad(capsys, data[32], tmp_path / "s", *model)


def test_bad_weights_and_folders(data: dict[int, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    wrong = byo_models.TinyCNN(classes=3)
    wrong.body[0] = torch.nn.Conv2d(3, 4, 3, padding=1)
    torch.save(wrong.state_dict(), tmp_path / "w.pt")
    err = _bad(capsys, data[32], tmp_path / "s", "--model", f"python:{HERE}:tiny_cnn", "--weights",
               str(tmp_path / "w.pt"))
    assert "do not fit" in err and "wrong shape: body.0.weight (4, 3, 3, 3)" in err
    (tmp_path / "empty").mkdir()
    err = _bad(capsys, data[32], tmp_path / "s", "--model", f"hf:{tmp_path / 'empty'}")
    assert "has no config.json" in err or "pip install 'xaidash[hf]'" in err
    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    ok = main(["compute", "--data", f"imagefolder:{data[32]}", "--store", str(tmp_path / "ok"), "--model",
               f"python:{HERE}:tiny_cnn", "--classes-file", str(names), "--input-size", "32",
               "--methods", "gradcam", "--no-faithfulness", *FAST])
    assert ok == 0


def test_train_timm_then_compute(data: dict[int, Path], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from xaidash.compute.model.checkpoint import load_checkpoint

    ckpt = tmp_path / "vit.pt"
    rc = main(["train", "--data", f"imagefolder:{data[64]}", "--model", "timm:vit_tiny_patch16_224",
               "--model-args", json.dumps(byo_models.TIMM_VIT_ARGS), "--epochs", "1", "--out", str(ckpt),
               "--workers", "0", "--device", "cpu", "--freeze-backbone"])
    assert rc == 0
    loaded = load_checkpoint(ckpt)
    assert loaded.arch == "timm:vit_tiny_patch16_224" and loaded.preprocessing.library == "timm"
    assert loaded.preprocessing.input_size == 64
    store = tmp_path / "s"
    _compute(store, data[64], "--checkpoint", str(ckpt), "--methods", "gradcam,gradcampp")
    ref = _check_run(store, data[64], "tokens")
    assert ref["target"]["name"] == "blocks.1.norm1"  # type: ignore[index]


def test_changed_model_file_is_refused_on_rebuild(tmp_path: Path) -> None:
    from xaidash.compute.model.external import build, make_ref
    from xaidash.errors import UserError

    src = tmp_path / "net.py"
    src.write_text(HERE.read_text())
    ext = build(make_ref(f"python:{src}:tiny_cnn", None, CLASSES, input_size=32))
    again = build(ext.ref)  # the explain page's rebuild from the recorded reference
    assert all(torch.equal(a, b) for a, b in zip(ext.model.state_dict().values(),
                                                 again.model.state_dict().values(), strict=True))
    src.write_text(src.read_text() + "\n# edited\n")
    with pytest.raises(UserError, match="source changed since the run"):
        build(ext.ref)
