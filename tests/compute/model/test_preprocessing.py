"""The recorded preprocessing of brought models: the library's own eval transform, described by
geometric fields that agree with it (the explain page's view and localisation use them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import byo_models
from xaidash.compute.model.preprocessing import (
    Preprocessing,
    hf_preprocessing,
    square_preprocessing,
    timm_preprocessing,
)


def _photo(w: int = 90, h: int = 70) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _fields_transform(pre: Preprocessing) -> torch.Tensor:
    """The transform rebuilt from the geometric fields alone (torchvision)."""
    from torchvision import transforms as T

    img = pre.geometry(_photo())
    out: torch.Tensor = T.Normalize(pre.mean, pre.std)(T.ToTensor()(img))
    return out


def test_timm_eval_transform_matches_its_fields() -> None:
    pytest.importorskip("timm")
    pre = timm_preprocessing(byo_models.timm_vit(), None, None, None)
    assert (pre.library, pre.input_size, pre.crop, pre.interpolation) == ("timm", 64, True, "bicubic")
    assert pre.resize == int(64 / 0.9) and pre.mean == (0.5, 0.5, 0.5)
    ours = pre.transform()(_photo())
    assert ours.shape == (3, 64, 64)
    assert torch.allclose(ours, _fields_transform(pre), atol=1e-5)
    again = Preprocessing.from_dict(pre.to_dict())
    assert again == pre and torch.equal(again.transform()(_photo()), ours)
    assert timm_preprocessing(byo_models.timm_vit(), 48, (0.1, 0.2, 0.3), None).input_size == 48


def test_hf_processor_matches_its_fields(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = byo_models.hf_vit_folder(tmp_path / "hf", image_size=32)
    pre = hf_preprocessing(str(folder))
    assert (pre.library, pre.input_size, pre.crop) == ("hf", 32, False)
    ours = pre.transform()(_photo())
    assert ours.shape == (3, 32, 32)
    # the processor resizes with PIL, torchvision with its own antialias: close, not bit-equal
    assert float((ours - _fields_transform(pre)).abs().mean()) < 0.05


def test_python_models_resize_to_a_square_with_imagenet_defaults(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        pre = square_preprocessing(None, None, None, "python:m.py:f")
    assert "--input-size 224 and --mean/--std of ImageNet" in caplog.text
    assert (pre.input_size, pre.resize, pre.crop) == (224, 224, False)
    assert pre.geometry(_photo()).size == (224, 224)  # no crop: the whole image, squashed
    assert pre.to_dict()["crop"] is False and "library" not in pre.to_dict()
