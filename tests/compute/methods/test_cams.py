"""Known-answer tests of compute/methods/cams.py against slow, literal implementations of the formulas.

The literal versions loop over channels and pixels in float64 with explicit autograd on a copy of
the full model (no hooks, parameters differentiated too); the fast fp32 engine must match them
within 1e-5 on the normalized maps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.methods.cams import (
    CAM,
    GRADIENT_METHODS,
    METHODS,
    CamEngine,
    CamInputs,
    EigenCAM,
    GradCAM,
    GradCAMpp,
    XGradCAM,
    minmax_normalize,
)
from xaidash.errors import UserError

ATOL = 1e-5


# --------------------------------------------------------------------------- tiny models
class GapNet(nn.Module):
    """conv -> ReLU -> conv(stride 2) -> ReLU [target "features"] -> GAP -> Linear "fc"."""

    def __init__(self, k: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, classes)

    def head(self, a: Tensor) -> Tensor:
        return self.fc(self.pool(a).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class DeepHeadNet(nn.Module):
    """Target "features", then conv + ReLU + GAP + Linear + ReLU + Linear: the gradient varies
    over space and CAM is not applicable."""

    def __init__(self, k: int = 5, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, k, 3, stride=2, padding=1), nn.ReLU())
        self.post = nn.Sequential(nn.Conv2d(k, 7, 3, padding=1), nn.ReLU())
        self.fc1 = nn.Linear(7, 9)
        self.fc2 = nn.Linear(9, classes)

    def head(self, a: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(self.post(a).mean((2, 3)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Dup(nn.Module):
    """Channels [y0, y1, y0 (duplicate), zeros, y1 (duplicate), 3 (constant), y2]."""

    def forward(self, y: Tensor) -> Tensor:
        return torch.cat([y[:, :2], y[:, :1], torch.zeros_like(y[:, :1]), y[:, 1:2],
                          torch.full_like(y[:, :1], 3.0), y[:, 2:3]], dim=1)


class DupNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU())
        self.features = Dup()
        self.fc = nn.Linear(7, classes)

    def head(self, a: Tensor) -> Tensor:
        return self.fc(a.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.conv(x)))


def _seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls().eval()
    # Spread the head weights so classes differ clearly and maps are not degenerate.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def _images(b: int = 3, size: int = 16, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


# --------------------------------------------------------------------------- literal versions
def _lit_norm(m: list[list[float]]) -> Tensor:
    flat = [v for row in m for v in row]
    lo, hi = min(flat), max(flat)
    if hi == lo:
        return torch.zeros(len(m), len(m[0]), dtype=torch.float64)
    return torch.tensor([[(v - lo) / (hi - lo) for v in row] for row in m], dtype=torch.float64)


def _lit_combine(w: list[float], a: Tensor, relu: bool) -> Tensor:
    k, h, wd = a.shape
    m = [[sum(w[c] * float(a[c, i, j]) for c in range(k)) for j in range(wd)] for i in range(h)]
    if relu:
        m = [[max(v, 0.0) for v in row] for row in m]
    return _lit_norm(m)


def _lit_act_grad(model: nn.Module, x: Tensor, b: int, cls: int) -> tuple[Tensor, Tensor]:
    """A and ∂logit_cls/∂A for image b by plain autograd on a float64 copy of the whole model."""
    m64 = copy.deepcopy(model).double()
    feats = m64.features(m64.conv(x[b : b + 1].double())) if hasattr(m64, "conv") else m64.features(
        x[b : b + 1].double())
    feats.retain_grad()
    logits = m64.head(feats)
    logits[0, cls].backward()
    assert feats.grad is not None
    return feats.detach()[0], feats.grad[0]


def literal_map(method: str, model: nn.Module, x: Tensor, b: int, cls: int) -> Tensor:
    a, g = _lit_act_grad(model, x, b, cls)
    k, h, w = a.shape
    if method == "cam":
        wt = [float(model.fc.weight.detach()[cls, c]) for c in range(k)]
        return _lit_combine(wt, a, relu=False)
    if method == "gradcam":
        wt = [sum(float(g[c, i, j]) for i in range(h) for j in range(w)) / (h * w) for c in range(k)]
        return _lit_combine(wt, a, relu=True)
    if method == "gradcampp":
        wt = []
        for c in range(k):
            s = sum(float(a[c, i, j]) for i in range(h) for j in range(w))
            total = 0.0
            for i in range(h):
                for j in range(w):
                    gij = float(g[c, i, j])
                    den = 2 * gij**2 + s * gij**3
                    alpha = 0.0 if gij == 0 or den == 0 else gij**2 / den
                    total += alpha * max(gij, 0.0)
            wt.append(total)
        return _lit_combine(wt, a, relu=True)
    return literal_pixelwise(method, a, g)


def literal_pixelwise(method: str, a: Tensor, g: Tensor) -> Tensor:
    """LayerCAM, XGradCAM, HiResCAM and EigenCAM of one image (``a``, ``g``: ``[K, h, w]``), from
    the papers' formulas with plain loops in float64."""
    a, g = a.double(), g.double()
    k, h, w = a.shape
    if method == "xgradcam":
        wt = []
        for c in range(k):
            s = sum(float(a[c, i, j]) for i in range(h) for j in range(w))
            # a zero channel sum: weight 0 (cam_maps.XGradCAM's documented choice)
            wt.append(0.0 if s == 0 else sum(float(a[c, i, j]) / s * float(g[c, i, j])
                                             for i in range(h) for j in range(w)))
        return _lit_combine(wt, a, relu=True)
    if method in ("layercam", "hirescam"):
        def gate(v: float) -> float:
            return max(v, 0.0) if method == "layercam" else v

        m = [[max(sum(gate(float(g[c, i, j])) * float(a[c, i, j]) for c in range(k)), 0.0)
              for j in range(w)] for i in range(h)]
        return _lit_norm(m)
    if method == "eigencam":
        # The first principal direction of the uncentred pixel x channel matrix M from the
        # eigenvectors of the K x K matrix M^T M (numpy's eigh: a different route than the SVD
        # of the class), oriented so the projection sums to >= 0.
        import numpy as np

        mat = np.array([[float(a[c, i, j]) for c in range(k)] for i in range(h) for j in range(w)])
        vals, vecs = np.linalg.eigh(mat.T @ mat)
        proj = mat @ vecs[:, int(np.argmax(vals))]
        if proj.sum() < 0:
            proj = -proj
        return _lit_norm([[max(float(proj[i * w + j]), 0.0) for j in range(w)] for i in range(h)])
    raise AssertionError(method)


def literal_scorecam(model: nn.Module, x: Tensor, acts: Tensor, b: int, cls: int) -> Tensor:
    """The official Score-CAM loop: one channel at a time, min-max on the upsampled map."""
    k = acts.shape[1]
    m64 = copy.deepcopy(model).double()
    wt = []
    for c in range(k):
        up = F.interpolate(acts[b : b + 1, c : c + 1].double(), size=x.shape[-2:], mode="bilinear",
                           align_corners=False)
        if up.max() == up.min():
            wt.append(0.0)
            continue
        mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            probs = F.softmax(m64(x[b : b + 1].double() * mask), dim=1)
        wt.append(float(probs[0, cls]))
    return _lit_combine(wt, acts[b].double(), relu=True)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_match_literal_on_gap_linear(method: str) -> None:
    model = _seeded(GapNet)
    x = _images()
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    assert eng.cam_applicable
    for b in range(x.shape[0]):
        c = int(res.targets["pred"][b])
        want = literal_map(method, model, x, b, c)
        got = res.maps[(method, "pred")][b].double()
        assert want.max() == 1.0 and (want > 0).sum() > 3  # a real map, not a trivial zero
        assert torch.allclose(got, want, atol=ATOL), (method, b, (got - want).abs().max())


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m != "cam"])
def test_gradient_methods_match_literal_on_deep_head(method: str) -> None:
    # Nonlinear head: g varies over (i, j), which exercises Grad-CAM++'s pixel-wise alpha.
    model = _seeded(DeepHeadNet, seed=3)
    x = _images(b=3, size=12, seed=4)
    labels = torch.tensor([0, 3, 2])
    with CamEngine(model, "features", None) as eng:
        res = eng.forward(x, METHODS, true_labels=labels)
    for kind in ("pred", "true"):
        for b in range(x.shape[0]):
            c = int(res.targets[kind][b])
            want = literal_map(method, model, x, b, c)
            got = res.maps[(method, kind)][b].double()
            assert want.max() == 1.0 and (want > 0).sum() > 3  # a real map, not a trivial zero
            assert torch.allclose(got, want, atol=ATOL), (method, kind, b, (got - want).abs().max())


def test_forward_outputs_logits_activations_embedding() -> None:
    model = _seeded(GapNet)
    x = _images()
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, ("gradcam",))
    with torch.no_grad():
        a = model.features(x)
        logits = model(x)
    assert torch.allclose(res.logits, logits, atol=1e-6)
    assert torch.equal(res.activations, a)
    assert torch.allclose(res.embedding, a.mean((2, 3)))
    assert torch.equal(res.targets["pred"], logits.argmax(1))
    assert set(res.maps) == {("gradcam", "pred")}
    assert not res.activations.requires_grad and not res.logits.requires_grad


def test_gradcam_is_relu_of_cam_on_gap_linear_head() -> None:
    """With GAP + linear, ∂logit_c/∂A_k(i,j) = W[c,k]/(hw), so Grad-CAM's raw map is
    ReLU(raw CAM)/(hw): after min-max, gradcam == N(ReLU(raw CAM)), and on its support it is an
    increasing affine function of the normalized CAM."""
    model = _seeded(GapNet)
    x = _images(b=4)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    cam, gc = res.maps[("cam", "pred")], res.maps[("gradcam", "pred")]
    raw = torch.einsum("bk,bkhw->bhw", model.fc.weight.detach()[res.targets["pred"]], res.activations)
    assert torch.allclose(gc, minmax_normalize(F.relu(raw)), atol=1e-6)
    # And in terms of the stored maps: gradcam = N(ReLU(cam - z)) with z the level of raw 0.
    lo, hi = raw.flatten(1).amin(1), raw.flatten(1).amax(1)
    z = (-lo / (hi - lo)).view(-1, 1, 1)
    assert torch.allclose(gc, minmax_normalize(F.relu(cam - z)), atol=1e-5)
    for b in range(x.shape[0]):
        sup = gc[b] > 0
        if sup.sum() > 2:
            r = torch.corrcoef(torch.stack([gc[b][sup], cam[b][sup]]))[0, 1]
            assert r > 1 - 1e-5


def test_scorecam_matches_official_loop_with_duplicates_and_constants() -> None:
    model = _seeded(DupNet, seed=5)
    x = _images(b=3, size=12, seed=6)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, ())
        acts, pred = res.activations, res.targets["pred"]
        assert acts.shape[1] == 7
        maps = {bs: eng.scorecam(x, acts, pred, batch_size=bs) for bs in (1, 4, 256)}
        stats = eng.last_scorecam_stats
    # Exact dedup: zeros + constant skipped, two duplicated channels per image share forwards.
    assert stats.constant_skipped >= 2 * 3
    assert stats.duplicates >= 2 * 3
    assert stats.forwards == 3 * 7 - stats.constant_skipped - stats.duplicates
    assert not stats.approximate
    for b in range(x.shape[0]):
        want = literal_scorecam(model, x, acts, b, int(pred[b]))
        assert want.max() == 1.0 and (want > 0).sum() > 3
        for bs, m in maps.items():
            assert torch.allclose(m[b].double(), want, atol=ATOL), (bs, b, (m[b].double() - want).abs().max())
    # Batch size only changes how work is grouped, not the numbers.
    assert torch.allclose(maps[1], maps[256], atol=1e-6)


def test_scorecam_approximation_is_labelled() -> None:
    model = _seeded(GapNet)
    x = _images(b=2)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, ())
        m = eng.scorecam(x, res.activations, res.targets["pred"], max_channels=2)
        stats = eng.last_scorecam_stats
    assert m.shape == (2, 8, 8)
    assert stats.forwards <= 4 and stats.approximate == (stats.not_selected > 0)


def test_parameters_never_differentiated() -> None:
    model = _seeded(DeepHeadNet)
    x = _images(b=2, size=12)
    with CamEngine(model, "features", None) as eng:
        eng.forward(x, GRADIENT_METHODS, true_labels=torch.tensor([1, 2]))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()


def test_hooks_removed_on_exit_and_on_exception() -> None:
    model = _seeded(GapNet)
    with CamEngine(model, "features", "fc") as eng:
        assert len(model.features._forward_hooks) == 1
        eng.forward(_images(b=1), ("cam",))
    assert len(model.features._forward_hooks) == 0
    with pytest.raises(ZeroDivisionError), CamEngine(model, "features", "fc"):
        assert len(model.features._forward_hooks) == 1
        _ = 1 / 0
    assert len(model.features._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="context manager"):
        eng.forward(_images(b=1), ("cam",))
    # Hook inactive outside forward(): plain forwards are untouched.
    with CamEngine(model, "features", "fc"), torch.no_grad():
        assert torch.equal(model(_images(b=1)), model(_images(b=1)))


def test_cam_not_applicable_is_absent_never_wrong() -> None:
    model = _seeded(DeepHeadNet)
    x = _images(b=2, size=12)
    with CamEngine(model, "features", None) as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    assert not eng.cam_applicable and ("cam", "pred") not in res.maps
    # A wrong head name is caught by checking logits == fc(GAP(A)) on the batch.
    with CamEngine(model, "features", "fc1") as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    assert not eng.cam_applicable and ("cam", "pred") not in res.maps
    assert ("gradcam", "pred") in res.maps


def test_all_zero_map_is_zero_not_nan() -> None:
    model = _seeded(GapNet)
    with torch.no_grad():
        model.features[2].bias.fill_(-1e3)  # every activation is ReLU(negative) = 0
    x = _images(b=2)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, GRADIENT_METHODS)
        sc = eng.scorecam(x, res.activations, res.targets["pred"])
    assert eng.last_scorecam_stats.forwards == 0
    for m in [*res.maps.values(), sc]:
        assert not torch.isnan(m).any() and torch.count_nonzero(m) == 0
    assert torch.equal(minmax_normalize(torch.full((2, 3, 3), 5.0)), torch.zeros(2, 3, 3))


def test_method_classes_are_small_and_composable() -> None:
    a = torch.rand(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4)
    inp = CamInputs(activations=a, targets=torch.tensor([0, 1]), gradients=g)
    w = torch.randn(2, 3)
    assert torch.allclose(CAM(w)(inp), minmax_normalize(torch.einsum("bk,bkhw->bhw", w[[0, 1]], a)))
    assert torch.allclose(GradCAM().weights(inp), g.mean((2, 3)))
    g0 = torch.zeros_like(g)
    assert torch.equal(GradCAMpp().weights(CamInputs(a, inp.targets, g0)), torch.zeros(2, 3))


def test_bad_inputs() -> None:
    model = _seeded(GapNet)
    with pytest.raises(UserError, match="valid layers"):
        CamEngine(model, "nope", None)
    with pytest.raises(UserError, match=r"not nn\.Linear"):
        CamEngine(model, "features", "pool")
    with CamEngine(model, "features", "fc") as eng:
        with pytest.raises(UserError, match="valid methods"):
            eng.forward(_images(b=1), ("gradcam", "lime"))
        model.train()
        try:
            with pytest.raises(RuntimeError, match="eval"):
                eng.forward(_images(b=1), ("gradcam",))
        finally:
            model.eval()
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            eng.forward(_images(b=1), ("gradcam",))


def test_inplace_op_after_target_layer() -> None:
    class InplaceAfter(GapNet):
        def forward(self, x: Tensor) -> Tensor:
            a = self.features(x)
            return self.head(F.relu(a.sub_(0.1), inplace=True))

    model = _seeded(InplaceAfter)
    x = _images(b=2)
    with CamEngine(model, "features", None) as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    with torch.no_grad():
        assert torch.equal(res.activations, model.features(x))  # A not corrupted by sub_
    assert not math.isnan(float(res.maps[("gradcam", "pred")].sum()))


class _BnNet(nn.Module):
    """conv -> BN -> ReLU [target "features"] -> GAP -> fc: a BatchNorm that folded_copy folds."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class _Branchy(_BnNet):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x if float(x.sum()) > 0 else -x)


@pytest.mark.parametrize("cls, folds", [(_BnNet, True), (_Branchy, False)])
def test_folded_copy_equals_the_model_and_leaves_it_alone(cls: type[nn.Module], folds: bool) -> None:
    from xaidash.compute.methods.cams import folded_copy

    model = _seeded(cls)
    with torch.no_grad():  # non-trivial running statistics, so the fold has something to do
        bn = model.features[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(model.state_dict())
    x = _images(b=2).abs()
    folded = folded_copy(model)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert has_bn is not folds
    cl = torch.channels_last
    assert all(p.is_contiguous(memory_format=cl) for p in folded.parameters() if p.dim() == 4)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k]) and v.is_contiguous(), k
    # Score-CAM through the copy equals Score-CAM through the model (fp32)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, ())
        ref = eng.scorecam(x, res.activations, res.targets["pred"])
        got = eng.scorecam(x, res.activations, res.targets["pred"], masked_model=folded)
    assert (got - ref).abs().max() < 1e-5


def test_the_bulk_model_is_made_once_per_model_and_only_for_bf16() -> None:
    import gc
    import weakref

    from xaidash.compute.pipeline.precision import masked_forward_model

    model, other = _seeded(_BnNet), _seeded(_BnNet, seed=1)
    assert masked_forward_model(model, "fp32") is model  # fp32: the model itself, exact
    bulk = masked_forward_model(model, "bf16")
    assert bulk is not model and masked_forward_model(model, "bf16") is bulk  # cached, not rebuilt
    assert masked_forward_model(other, "bf16") is not bulk
    with torch.no_grad():  # weights changed in place (as the sanity cascade does): a new copy
        model.features[0].weight.mul_(2)
    again = masked_forward_model(model, "bf16")
    assert again is not bulk and masked_forward_model(model, "bf16") is again
    x = _images(b=2).abs()
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)
    model.double()  # an in-place dtype change (the tensors keep their ids): a new copy too
    doubled = masked_forward_model(model, "bf16")
    assert doubled is not again and next(doubled.parameters()).dtype == torch.float64
    model.float()
    with torch.inference_mode():  # weights made in inference mode track no version: not cached
        frozen = _seeded(_BnNet, seed=2)
    first, second = masked_forward_model(frozen, "bf16"), masked_forward_model(frozen, "bf16")
    assert first is not second
    bulk = masked_forward_model(model, "bf16")
    del again, doubled
    # the cache does not keep a model (or its copy) alive
    gone = weakref.ref(bulk)
    del model, bulk
    gc.collect()
    assert gone() is None


def test_gap_linear_head_gives_the_known_equalities() -> None:
    """With GAP + linear, g_k(i,j) = W[c,k]/(hw) is constant over space, so HiResCAM
    (Σ_k g_k ⊙ A_k) and XGradCAM (w_k = Σ_ij A_k g_k / Σ A_k = W[c,k]/(hw)) are Grad-CAM, and
    LayerCAM is Grad-CAM with the negative head weights dropped."""
    model = _seeded(GapNet)
    x = _images(b=4)
    with CamEngine(model, "features", "fc") as eng:
        res = eng.forward(x, GRADIENT_METHODS)
    gc = res.maps[("gradcam", "pred")]
    assert torch.allclose(res.maps[("hirescam", "pred")], gc, atol=1e-5)
    assert torch.allclose(res.maps[("xgradcam", "pred")], gc, atol=1e-5)
    w = model.fc.weight.detach()[res.targets["pred"]]
    layer = minmax_normalize(F.relu(torch.einsum("bk,bkhw->bhw", F.relu(w), res.activations)))
    assert torch.allclose(res.maps[("layercam", "pred")], layer, atol=1e-5)
    assert (res.maps[("layercam", "pred")] - gc).abs().max() > 1e-2  # not Grad-CAM in general


def test_xgradcam_zero_channel_sum_gets_weight_zero() -> None:
    a = torch.rand(1, 3, 4, 4)
    a[0, 1] = 0.0  # a dead ReLU channel
    a[0, 2] = torch.tensor([[1.0, -1.0] * 2] * 4)  # a signed channel summing to exactly 0
    g = torch.randn(1, 3, 4, 4)
    w = XGradCAM().weights(CamInputs(a, torch.tensor([0]), g))
    assert w[0, 1] == 0 and w[0, 2] == 0
    assert torch.allclose(w[0, 0], (a[0, 0] * g[0, 0]).sum() / a[0, 0].sum())
    assert not torch.isnan(XGradCAM()(CamInputs(a, torch.tensor([0]), g))).any()


def test_eigencam_sign_is_fixed_and_it_needs_no_gradient_or_class() -> None:
    model = _seeded(DeepHeadNet, seed=3)
    x = _images(b=3, size=12, seed=4)
    # the sign convention: a map of -A is the map of A's other side, never an arbitrary flip
    a = torch.randn(3, 5, 6, 6, generator=torch.Generator().manual_seed(2))
    em = EigenCAM()
    for t in (a, -a, a.abs()):
        raw = em.raw_map(CamInputs(t, torch.zeros(3, dtype=torch.long)))
        assert (raw.flatten(1).sum(1) >= 0).all()
    raw_abs = em.raw_map(CamInputs(a.abs(), torch.zeros(3, dtype=torch.long)))
    assert (raw_abs >= -1e-6).all()  # A >= 0: the projection is >= 0 everywhere (Perron-Frobenius)
    with CamEngine(model, "features", None) as eng, torch.inference_mode():
        res = eng.forward(x, ("eigencam",), true_labels=torch.tensor([0, 3, 2]))
    # one map for both targets, computed without a backward (inference mode is fine)
    assert res.maps[("eigencam", "true")] is res.maps[("eigencam", "pred")]
    for b in range(3):
        want = literal_pixelwise("eigencam", res.activations[b], torch.zeros_like(res.activations[b]))
        assert torch.allclose(res.maps[("eigencam", "pred")][b].double(), want, atol=ATOL)
