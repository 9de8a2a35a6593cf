"""Faithfulness metrics on hand-made cases with exact expected numbers, plus a literal
step-by-step implementation of the RISE curves on a tiny CNN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.methods.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    faithfulness,
    gaussian_blur,
)


class MeanProb(nn.Module):
    """softmax(model(x))[0] == mean pixel value m (in [0, 1]); with ``flip``, 1 - m."""

    def __init__(self, flip: bool = False) -> None:
        super().__init__()
        self.flip = flip

    def forward(self, x: Tensor) -> Tensor:
        m = x.double().mean(dim=(1, 2, 3))
        p = 1 - m if self.flip else m
        # softmax([log p, log(1-p)]) = [p, 1-p]; log 0 = -inf is fine for softmax.
        return torch.stack([p.log(), (1 - p).log()], dim=1)


X = torch.tensor([[[[0.8, 0.6], [0.4, 0.2]]]])  # [1, 1, 2, 2], mean 0.5
C0 = torch.tensor([0])


def test_average_drop_and_increase_by_hand() -> None:
    model = MeanProb().eval()
    maps = torch.tensor([[[1.0, 0.5], [0.5, 0.0]]])
    drop, inc = average_drop_increase(model, X, maps, C0)
    # O = mean(0.8, 0.3, 0.2, 0) = 0.325, Y = 0.5 -> drop = 0.175 / 0.5 = 0.35
    assert drop.tolist() == pytest.approx([0.35], abs=1e-6) and inc.tolist() == [0.0]
    drop, inc = average_drop_increase(model, X, torch.ones(1, 2, 2), C0, base_probs=torch.tensor([0.5]))
    assert drop.tolist() == pytest.approx([0.0], abs=1e-7) and inc.tolist() == [0.0]  # O == Y: no increase
    # p = 1 - mean: masking lowers the mean, so confidence increases and nothing drops.
    drop, inc = average_drop_increase(MeanProb(flip=True).eval(), X, maps, C0)
    assert drop.tolist() == [0.0] and inc.tolist() == [1.0]
    # Full softmax rows are accepted as base_probs too.
    drop, _ = average_drop_increase(model, X, maps, C0, base_probs=torch.tensor([[0.5, 0.5]]))
    assert drop.tolist() == pytest.approx([0.35], abs=1e-6)


def test_deletion_insertion_by_hand() -> None:
    model = MeanProb().eval()
    zeros = torch.zeros_like(X)
    # Saliency = pixel value: deletion removes 0.8, 0.6, 0.4, 0.2 in turn.
    # means 0.5, 0.3, 0.15, 0.05, 0 -> trapezoid, dx = 1/4: (0.25 + 0.3 + 0.15 + 0.05 + 0) / 4
    # insertion from zeros: 0, 0.2, 0.35, 0.45, 0.5 -> (0 + 0.2 + 0.35 + 0.45 + 0.25) / 4
    d, i = deletion_insertion(model, X, X[:, 0], C0, steps=4, insertion_baseline=zeros)
    assert d.item() == pytest.approx(0.1875, abs=1e-6)
    assert i.item() == pytest.approx(0.3125, abs=1e-6)
    # Reverse saliency: deletion removes the dimmest first -> 0.5, 0.45, 0.35, 0.2, 0
    d, i = deletion_insertion(model, X, 1 - X[:, 0], C0, steps=4, insertion_baseline=zeros)
    assert d.item() == pytest.approx((0.25 + 0.45 + 0.35 + 0.2) / 4, abs=1e-6)
    assert i.item() == pytest.approx((0.05 + 0.15 + 0.3 + 0.25) / 4, abs=1e-6)
    # All ties: order = row-major pixel index, which here is also decreasing value.
    d, _ = deletion_insertion(model, X, torch.zeros(1, 2, 2), C0, steps=4, insertion_baseline=zeros)
    assert d.item() == pytest.approx(0.1875, abs=1e-6)
    # Two steps over four pixels: k = 0, 2, 4 -> deletion 0.5, 0.15, 0 -> (0.25 + 0.15 + 0) / 2
    d, _ = deletion_insertion(model, X, X[:, 0], C0, steps=2, insertion_baseline=zeros)
    assert d.item() == pytest.approx(0.2, abs=1e-6)
    # A constant image: deletion is linear in the fraction removed -> AUC = value / 2 exactly.
    const = torch.full((1, 1, 4, 4), 0.6)
    d, i = deletion_insertion(model, const, torch.rand(1, 2, 2), C0, steps=8,
                              insertion_baseline=torch.zeros_like(const))
    assert d.item() == pytest.approx(0.3, abs=1e-6) and i.item() == pytest.approx(0.3, abs=1e-6)


def _literal_blur(x: Tensor, ksize: int, sigma: float) -> Tensor:
    half = ksize // 2
    k1 = [math.exp(-(t * t) / (2 * sigma * sigma)) for t in range(-half, half + 1)]
    s = sum(k1)
    k1 = [v / s for v in k1]
    _, c, h, w = x.shape
    out = torch.zeros_like(x, dtype=torch.float64)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for di in range(-half, half + 1):
                    for dj in range(-half, half + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii < h and 0 <= jj < w:  # zero padding (= dataset mean)
                            acc += k1[di + half] * k1[dj + half] * float(x[0, ch, ii, jj])
                out[0, ch, i, j] = acc
    return out


def test_gaussian_blur_matches_literal() -> None:
    x = torch.randn(1, 2, 9, 7, generator=torch.Generator().manual_seed(0))
    for ksize, sigma in ((11, 5.0), (3, 0.8)):
        want = _literal_blur(x, ksize, sigma)
        assert torch.allclose(gaussian_blur(x, ksize, sigma).double(), want, atol=1e-6)
    with pytest.raises(ValueError):
        gaussian_blur(x, 4, 1.0)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _literal_curves(model: nn.Module, x: Tensor, smap: Tensor, c: int, steps: int) -> tuple[float, float]:
    """RISE deletion / insertion, one image and one step at a time."""
    _, _, h, w = x.shape
    n = h * w
    up = F.interpolate(smap[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    vals = up.flatten().tolist()
    order = sorted(range(n), key=lambda p: (-vals[p], p))  # decreasing, ties by index
    blur = _literal_blur(x, 11, 5.0).float()
    d_curve, i_curve, fracs = [], [], []
    for s in range(steps + 1):
        k = s * n // steps
        dele, ins = x.clone(), blur.clone()
        for p in order[:k]:
            dele[0, :, p // w, p % w] = 0.0
            ins[0, :, p // w, p % w] = x[0, :, p // w, p % w]
        with torch.no_grad():
            d_curve.append(float(F.softmax(model(dele), 1)[0, c]))
            i_curve.append(float(F.softmax(model(ins), 1)[0, c]))
        fracs.append(k / n)

    def trap(ys: list[float]) -> float:
        return sum((fracs[t + 1] - fracs[t]) * (ys[t] + ys[t + 1]) / 2 for t in range(steps))

    return trap(d_curve), trap(i_curve)


def test_curves_match_literal_and_methods_batch_together() -> None:
    model = Tiny().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 10, 10, generator=g)
    maps = {"a": torch.rand(2, 5, 5, generator=g), "b": torch.rand(2, 5, 5, generator=g)}
    maps["b"][1] = 0.0  # all ties
    targets = torch.tensor([2, 0])
    res = faithfulness(model, x, maps, targets, steps=7, batch_size=5)
    for name, m in maps.items():
        for b in range(2):
            d, i = _literal_curves(model, x[b : b + 1], m[b], int(targets[b]), steps=7)
            assert res[name]["deletion_auc"][b].item() == pytest.approx(d, abs=1e-5)
            assert res[name]["insertion_auc"][b].item() == pytest.approx(i, abs=1e-5)
        single = deletion_insertion(model, x, m, targets, steps=7)
        assert torch.allclose(single[0], res[name]["deletion_auc"], atol=1e-6)
        drop, inc = average_drop_increase(model, x, m, targets)
        assert torch.allclose(drop, res[name]["drop"], atol=1e-6)
        assert torch.equal(inc, res[name]["increase"])
        assert set(res[name]) == {"drop", "increase", "deletion_auc", "insertion_auc"}
        assert all(v.shape == (2,) and v.dtype == torch.float32 for v in res[name].values())
    assert ((res["a"]["drop"] >= 0) & (res["a"]["drop"] <= 1)).all()
    assert all(p.grad is None for p in model.parameters())


def test_faithfulness_requires_eval_mode() -> None:
    with pytest.raises(RuntimeError, match="eval"):
        faithfulness(Tiny().train(), torch.zeros(1, 3, 4, 4), {"a": torch.zeros(1, 2, 2)}, C0)
    assert faithfulness(Tiny().eval(), torch.zeros(1, 3, 4, 4), {}, C0) == {}
