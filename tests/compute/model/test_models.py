"""Architectures, weights (lite0 package, imagenet offline, state_dict paths), checkpoints."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.imagegen import make_imagefolder
from xaidash.compute.datasets.sources import open_dataset
from xaidash.compute.model.architectures import (
    ARCHITECTURES,
    build_model,
    freeze_backbone,
    get_module,
    imagenet_class_names,
)
from xaidash.compute.model.checkpoint import (
    Checkpoint,
    check_classes,
    checkpoint_from_weights,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from xaidash.compute.model.preprocessing import Preprocessing
from xaidash.errors import UserError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The CI box has 2 cores shared by several jobs: one thread avoids OpenMP oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Expected target-layer map side for a 32 px input (ResNets: CIFAR stem -> /8; VGG /16; else /32)
MAP_SIDE_32 = {"resnet18": 4, "resnet34": 4, "resnet50": 4, "mobilenet_v3_large": 1,
               "efficientnet_b0": 1, "vgg16": 2, "efficientnet_lite0": 1}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_runs(arch: str) -> None:
    torch.manual_seed(0)
    parts = build_model(arch, 3, "none", input_size=32)
    acts: dict[str, torch.Tensor] = {}
    layer = get_module(parts.model, parts.target_layer)
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        with torch.no_grad():
            out = parts.model(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert out.shape == (2, 3)
    a = acts["a"]
    assert a.shape[0] == 2 and a.shape[-1] == a.shape[-2] == MAP_SIDE_32[arch]
    assert parts.preprocessing.input_size == 32
    if parts.linear_head is not None:
        head = get_module(parts.model, parts.linear_head)
        assert isinstance(head, torch.nn.Linear)
        assert head.in_features == a.shape[1] and head.out_features == 3
        # CAM applicability: logits == head(GAP(A)) exactly
        with torch.no_grad():
            assert torch.allclose(head(a.mean(dim=(2, 3))), out, atol=1e-4)
    assert parts.small_input_stem == arch.startswith("resnet")


def test_resnet_map_sizes_by_input() -> None:
    torch.manual_seed(0)
    for size, side, small in ((64, 8, True), (96, 3, False)):
        parts = build_model("resnet18", 2, input_size=size)
        assert parts.small_input_stem is small
        body = torch.nn.Sequential(*list(parts.model.children())[:-2])
        with torch.no_grad():
            assert body(torch.randn(1, 3, size, size)).shape[-1] == side


def test_unknown_arch_and_layer() -> None:
    with pytest.raises(UserError, match=r"unknown model 'resnet9'.*efficientnet_lite0.*resnet18"):
        build_model("resnet9", 2)
    parts = build_model("resnet18", 2, input_size=32)
    with pytest.raises(UserError, match=r"no layer 'layer9'.*layer4"):
        get_module(parts.model, "layer9")


def test_preprocessing_transform() -> None:
    from PIL import Image

    pre = Preprocessing(16, 20, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    img = Image.new("RGB", (40, 30), (255, 0, 0))
    x = pre.transform()(img)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[1], -torch.ones(16, 16))
    assert pre.transform(train=True)(img).shape == (3, 16, 16)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_imagenet_class_names_offline() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"


def test_lite0_packaged_weights_classify_chelsea_and_coffee() -> None:
    from PIL import Image
    from skimage import data

    parts = build_model("efficientnet_lite0", 1000, "imagenet")
    pre = parts.preprocessing
    assert (pre.input_size, pre.resize, pre.mean) == (224, 256, (0.5, 0.5, 0.5))
    assert parts.target_layer == "bn2" and parts.linear_head == "classifier"
    t = pre.transform()
    x = torch.stack([t(Image.fromarray(data.chelsea())), t(Image.fromarray(data.coffee()))])
    with torch.no_grad():
        pred = parts.model(x).argmax(1).tolist()
    assert 281 <= pred[0] <= 285  # a domestic cat class (tabby, tiger, Persian, Siamese, Egyptian)
    assert pred[1] == 967  # espresso


def test_lite0_imagenet_new_head() -> None:
    parts = build_model("efficientnet_lite0", 3, "imagenet")
    assert parts.model.classifier.out_features == 3
    trainable = freeze_backbone(parts)
    assert trainable == ["classifier.weight", "classifier.bias"]


def test_torchvision_imagenet_offline_is_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.models._api as api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"torch hub cache.*efficientnet_lite0"):
        build_model("resnet18", 2, "imagenet")


def test_weights_path_roundtrip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = build_model("resnet18", 2, input_size=32)
    path = tmp_path / "r18.pth"
    torch.save({"module." + k: v for k, v in a.model.state_dict().items()}, path)  # DataParallel prefix
    b = build_model("resnet18", 2, str(path))
    assert b.small_input_stem  # detected from the 3x3 conv1
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a.model(x), b.model(x))
    with pytest.raises(UserError, match=r"do not fit resnet34: key 'layer1\.2\.conv1\.weight' is missing"):
        build_model("resnet34", 2, str(path))
    with pytest.raises(UserError, match="do not fit efficientnet_b0: key 'features"):
        build_model("efficientnet_b0", 2, str(path))
    with pytest.raises(UserError, match=r"key 'fc\.weight' has shape \(2, 512\)"):
        build_model("resnet18", 5, str(path))
    c = build_model("resnet18", 5, str(path), reinit_head=True)  # fine-tune into 5 classes
    assert c.model.fc.out_features == 5
    with pytest.raises(UserError, match="weights file not found"):
        build_model("resnet18", 2, str(tmp_path / "nope.pth"))


def test_checkpoint_roundtrip_same_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    parts = build_model("resnet18", 3, input_size=32)
    parts.model.train()
    with torch.no_grad():  # move BN running stats away from their init values
        parts.model(torch.randn(4, 3, 32, 32))
    parts.model.eval()
    ckpt = Checkpoint("resnet18", ["a", "b", "c"], parts.preprocessing, parts.small_input_stem,
                      parts.model.state_dict(), {"epochs": 1}, {"accuracy": 0.5})
    out = tmp_path / "sub" / "m.pt"
    save_checkpoint(ckpt, out)
    assert out.is_file() and ckpt.sha256 and len(ckpt.sha256) == 64
    assert not [p for p in out.parent.iterdir() if p.name != "m.pt"]  # no temp files left
    loaded = load_checkpoint(out)
    assert loaded.classes == ["a", "b", "c"] and loaded.arch == "resnet18" and loaded.small_input_stem
    assert loaded.preprocessing == parts.preprocessing and loaded.sha256 == ckpt.sha256
    assert loaded.train_args == {"epochs": 1} and loaded.metrics == {"accuracy": 0.5}
    assert set(loaded.versions) == {"torch", "torchvision", "xaidash"} and loaded.created
    rebuilt = model_from_checkpoint(loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(parts.model(x), rebuilt.model(x), atol=1e-6)
    # an xaidash checkpoint is also accepted as --weights PATH
    again = build_model("resnet18", 3, str(out))
    assert again.preprocessing == parts.preprocessing


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    sd = tmp_path / "plain.pth"
    torch.save(build_model("resnet18", 2, input_size=32).model.state_dict(), sd)
    with pytest.raises(UserError, match=r"not an xaidash checkpoint.*--model ARCH --weights PATH --classes"):
        load_checkpoint(sd)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not an xaidash checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_from_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    parts = build_model("resnet18", 2, input_size=32)
    path = tmp_path / "w.pth"
    torch.save(parts.model.state_dict(), path)
    ckpt = checkpoint_from_weights("resnet18", str(path), ["left", "right"])
    assert ckpt.classes == ["left", "right"] and ckpt.small_input_stem and ckpt.sha256
    with pytest.raises(UserError, match="needs --classes"):
        checkpoint_from_weights("resnet18", str(path), None)
    with pytest.raises(UserError, match="do not fit"):
        checkpoint_from_weights("resnet18", str(path), ["a", "b", "c"])
    lite = checkpoint_from_weights("efficientnet_lite0", "imagenet", None)
    assert len(lite.classes) == 1000 and lite.path is None


def test_check_classes(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", classes=("cat", "dog"), n_train=0, n_val=1, size=8)
    ds = open_dataset(f"imagefolder:{root}")
    pre = Preprocessing(8, 8, (0.5,) * 3, (0.5,) * 3)
    check_classes(Checkpoint("resnet18", ["cat", "dog"], pre, True, {}).classes, ds)
    with pytest.raises(UserError, match=r"another order.*dog,cat"):
        check_classes(Checkpoint("resnet18", ["dog", "cat"], pre, True, {}).classes, ds)
    with pytest.raises(UserError, match=r"checkpoint classes \[a, b, c\] do not match"):
        check_classes(Checkpoint("resnet18", ["a", "b", "c"], pre, True, {}).classes, ds)
