"""Known-answer tests of the Captum attributions: IG's completeness, the reduction, the size budget,
SmoothGrad's seeding, and the stratified, seeded, nested sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from tests.support.imagegen import pattern_image
from tests.support.models import CLASSES, settled_resnet18
from tests.support.models import SIZE as TINY
from xaidash.compute.datasets.sources import Item
from xaidash.compute.methods.attributions import (
    AttributionSettings,
    Attributor,
    black_baseline,
    input_range,
    reduce_attribution,
)
from xaidash.compute.methods.faithfulness import gaussian_blur
from xaidash.compute.methods.sanity import sanity_sample
from xaidash.compute.model.architectures import build_model
from xaidash.constants import ATTRIBUTION_GRID, ATTRIBUTION_METHODS
from xaidash.errors import UserError

SIZE = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    return settled_resnet18(SIZE, 3)


@pytest.fixture(scope="module")
def support_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """The compute tests' tiny model (tests/support/models.py: seeded ResNet-18, small stem, 16 px,
    two classes) on six of the synthetic datasets' images (a class-coloured blob), normalised."""
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES), input_size=TINY).model.eval()
    rng = np.random.default_rng(0)
    imgs = [torch.from_numpy(pattern_image(i % 2, 2, TINY, rng)).permute(2, 0, 1).float() / 255
            for i in range(6)]
    x = (torch.stack(imgs) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return model, x


@pytest.mark.parametrize("method", ["ig_black", "ig_blur"])
def test_integrated_gradients_completeness_within_one_percent(
        support_model: tuple[torch.nn.Module, torch.Tensor], method: str) -> None:
    """Σ IG = F_c(x) - F_c(x') (Sundararajan et al. 2017, Prop. 1) within 1 % of the logit
    difference, for the raw attributions and for their channel sum (the map's first step). 128
    Gauss-Legendre points: a ReLU network's path integrand has kinks, and at the run's default of 32
    points the error on these images reaches 2.3 % (measured while writing this test)."""
    model, x = support_model
    att = Attributor(model, AttributionSettings(ig_steps=128), MEAN, STD)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with torch.no_grad():
            target = int(model(xi).argmax())
            base = att.baseline(method, xi)
            diff = float(model(xi)[0, target] - model(base)[0, target])
        raw = att.raw(method, xi, target, f"{i:016x}")
        assert raw.shape == xi.shape
        assert abs(diff) > 1e-3  # a meaningful difference to be complete about
        total = float(raw.double().sum())
        assert abs(total - diff) <= 0.01 * abs(diff), (method, i, total, diff)
        assert abs(float(raw.sum(1).sum()) - diff) <= 0.01 * abs(diff)


def test_the_baselines_are_black_and_the_insertion_blur(tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    att = Attributor(model, AttributionSettings(), MEAN, STD)
    black = att.baseline("ig_black", x)
    # black in RGB [0, 1] = 0, i.e. (0 - mean) / std after the normalisation
    rgb = black * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(rgb, torch.zeros_like(rgb), atol=1e-6)
    assert torch.equal(att.baseline("ig_blur", x), gaussian_blur(x))
    assert torch.equal(black_baseline(x, MEAN, STD), black)


def test_reduction_is_the_documented_one() -> None:
    """Signed channel sum (IG) or |·| sum (SmoothGrad), average pooling to the grid, min-max."""
    g = torch.Generator().manual_seed(3)
    attr = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    for signed in (True, False):
        agg = attr.sum(1) if signed else attr.abs().sum(1)
        pooled = agg.reshape(2, 32, 2, 32, 2).mean(dim=(2, 4))  # 2x2 cells
        lo = pooled.amin(dim=(1, 2), keepdim=True)
        hi = pooled.amax(dim=(1, 2), keepdim=True)
        expect = (pooled - lo) / (hi - lo)
        got = reduce_attribution(attr, signed, grid=32)
        assert got.shape == (2, 32, 32)
        assert torch.allclose(got.double(), expect, atol=1e-6)
    # smaller inputs than the grid keep their size; a constant map stays zero, never NaN
    assert reduce_attribution(torch.ones(1, 3, 16, 20), True).shape == (1, 16, 20)
    assert torch.equal(reduce_attribution(torch.ones(1, 3, 16, 16), True), torch.zeros(1, 16, 16))


def test_stored_map_is_within_8_kb_at_224_px() -> None:
    """The cams table stores float32 values: grid² · 4 bytes per image and method."""
    m = reduce_attribution(torch.randn(1, 3, 224, 224), True)
    assert m.shape == (1, ATTRIBUTION_GRID, ATTRIBUTION_GRID)
    assert m.numpy().astype(np.float32).nbytes <= 8 * 1024
    assert float(m.min()) == 0.0 and float(m.max()) == 1.0


def test_maps_for_a_batch_are_per_image_and_seeded(tiny: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, x = tiny
    att = Attributor(model, AttributionSettings(ig_steps=8, smoothgrad_samples=4), MEAN, STD)
    ids = [f"{i:016x}" for i in range(3)]
    targets = torch.tensor([0, 1, 2])
    maps = att.maps(x, targets, ids)
    assert set(maps) == set(ATTRIBUTION_METHODS)
    for m in maps.values():
        assert m.shape == (3, SIZE, SIZE) and float(m.min()) >= 0 and float(m.max()) <= 1
    # an image's maps do not depend on its batch (SmoothGrad's noise is seeded by the image id)
    alone = att.maps(x[1:2], targets[1:2], ids[1:2])
    for k in maps:
        assert torch.allclose(maps[k][1], alone[k][0], atol=1e-5), k
    # another image id draws other noise
    other = att.maps(x[1:2], targets[1:2], ["ffffffffffffffff"])
    assert not torch.allclose(other["smoothgrad"], alone["smoothgrad"])
    # SmoothGrad's sigma: 15 % of the normalised input range
    assert att.sigma == pytest.approx(0.15 * input_range(STD))
    # the same as Captum's IG (the map is Captum's attribution, reduced)
    ig = IntegratedGradients(model).attribute(x[0:1], baselines=gaussian_blur(x[0:1]), target=0, n_steps=8)
    assert torch.allclose(maps["ig_blur"][0], reduce_attribution(ig, True)[0], atol=1e-5)


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="ig-steps"):
        AttributionSettings(ig_steps=1)
    with pytest.raises(UserError, match="smoothgrad-samples"):
        AttributionSettings(smoothgrad_samples=0)
    with pytest.raises(UserError, match="valid attribution methods"):
        AttributionSettings(methods=("lime",))


def _items(per_class: dict[int, int]) -> list[Item]:
    out = []
    for label, n in per_class.items():
        for i in range(n):
            out.append(Item(image_id=f"{label:08x}{i:08x}", split="val", label=label, source=f"{label}/{i}"))
    return out


def test_the_sample_is_stratified_seeded_and_nested_in_the_sanity_sample() -> None:
    """The attribution sample is the sanity check's sampler: stratified by class, the same ids for
    the same data, and the smaller of the two samples lies inside the larger (so the sanity check of
    the attributions runs on images that have both)."""
    val = _items({0: 50, 1: 30, 2: 8})
    a = sanity_sample(val, 24)
    assert len(a) == 24
    labels = [int(i[:8], 16) for i in a]
    assert [labels.count(c) for c in (0, 1, 2)] == [8, 8, 8]  # round-robin: equal shares
    assert sanity_sample(list(reversed(val)), 24) == a  # the order of the items does not matter
    small = sanity_sample(val, 6)
    assert small < a
    assert sanity_sample(val, 0) == frozenset()
