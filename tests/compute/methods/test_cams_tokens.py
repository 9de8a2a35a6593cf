"""Token (ViT) and channels-last (Swin) target layers in the CAM engine, against literal formulas.

The literal versions hook the layer with a plain forward hook, differentiate the full model
(parameters included) with autograd, reshape the tokens by hand and loop over the channels in
float64; the engine (found layer, MapLayout, one backward stopping at A) must agree within 2e-3.
For ViT the maps are also compared with pytorch-grad-cam's GradCAM and its documented
``reshape_transform`` (Pearson r >= 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.support import byo_models
from tests.support.byo_models import literal_maps
from xaidash.compute.methods.cams import CamEngine
from xaidash.compute.model.layers import MapLayout, TargetLayer, discover, embedding_of
from xaidash.constants import METHODS

pytest.importorskip("timm")

TOL = 2e-3


def _engine_maps(model: nn.Module, target: TargetLayer, x: Tensor) -> tuple[dict[str, Tensor], Tensor,
                                                                              Tensor]:
    for p in model.parameters():
        p.requires_grad_(False)
    with CamEngine(model, target.name, target.linear_head, layout=target.layout,
                   embedding_layer=target.head) as engine:
        res = engine.forward(x, METHODS)
        sc = engine.scorecam(x, res.activations, res.targets["pred"])
    for p in model.parameters():
        p.requires_grad_(True)
    maps = {m: t for (m, kind), t in res.maps.items() if kind == "pred"}
    maps["scorecam"] = sc
    return maps, res.targets["pred"], res.embedding


def _hf_vit(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    pytest.importorskip("transformers")
    from xaidash.compute.model.external import build

    folder = byo_models.hf_vit_folder(tmp_path_factory.mktemp("hfvit"))
    return build({"external": f"hf:{folder}"}).model


CASES = {
    "timm-vit": (byo_models.timm_vit, 64, "tokens", "blocks.1.norm1"),
    "timm-swin": (byo_models.timm_swin, 64, "nhwc", "norm"),
    "timm-convnext": (byo_models.timm_convnext, 64, "nchw", "stages"),
    "custom-cnn": (byo_models.tiny_cnn, 32, "nchw", "body"),
}


@pytest.mark.parametrize("case", [*CASES, "hf-vit"])
def test_engine_equals_literal_formula(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if case == "hf-vit":
        model, size, kind, name = _hf_vit(tmp_path_factory), 32, "tokens", "hf.vit.layers.1.layernorm_before"
    else:
        build, size, kind, name = CASES[case]
        model = build()
    model.eval()
    target = discover(model, size, 3)
    # transformers 4.x names the blocks vit.encoder.layer.N, 5.x vit.layers.N
    assert target.layout.kind == kind and target.name.replace("encoder.layer.", "layers.") == name
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    maps, pred, emb = _engine_maps(model, target, x)
    lit = literal_maps(model, target, x, pred)
    for m in ("gradcam", "gradcampp", "layercam", "xgradcam", "hirescam", "eigencam"):
        assert maps[m].shape == (3, target.height, target.width)
        err = (maps[m].double() - lit[m]).abs().max().item()
        assert err <= TOL, f"{case} {m}: {err}"
        assert float(maps[m].amax()) > 0, f"{case} {m}: blank map"
    sc = maps["scorecam"]
    assert sc.shape == (3, target.height, target.width) and float(sc.min()) >= 0 and float(sc.max()) <= 1
    # embeddings are the head's input: the class token (ViT), the pooled features otherwise
    assert target.head is not None
    assert torch.allclose(emb, embedding_of(model, target.head, x), atol=1e-5)
    assert ("cam" in maps) == (target.linear_head is not None)


def test_swin_cam_is_the_linear_head_over_the_map() -> None:
    model = byo_models.timm_swin()
    target = discover(model, 64, 3)
    assert target.linear_head == "head.fc"  # GAP + one linear over the final norm
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps, pred, _ = _engine_maps(model, target, x)
    with torch.no_grad():
        a = model.norm(model.layers(model.patch_embed(x))).permute(0, 3, 1, 2)
    w = model.head.fc.weight[pred]
    raw = torch.einsum("bk,bkhw->bhw", w, a)
    lo = raw.amin(dim=(1, 2), keepdim=True)
    expect = (raw - lo) / (raw.amax(dim=(1, 2), keepdim=True) - lo)
    assert torch.allclose(maps["cam"], expect, atol=1e-4)


def test_vit_cls_head_has_no_cam_and_auto_layer_gets_gradient() -> None:
    model = byo_models.timm_vit()
    target = discover(model, 64, 3)
    assert target.linear_head is None and "class-token head" in target.reason
    # the last block's output would give blank gradient maps with a class-token head
    blank = discover(model, 64, 3, named="blocks.1")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    maps, _, _ = _engine_maps(model, blank, x)
    assert float(maps["gradcam"].abs().max()) == 0.0


def test_vit_agrees_with_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = byo_models.timm_vit()
    target = discover(model, 64, 3)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    maps, pred, _ = _engine_maps(model, target, x)

    def reshape_transform(tensor: Tensor, height: int = 8, width: int = 8) -> Tensor:
        # pytorch-grad-cam's documented ViT recipe (tutorials/vision_transformers.md)
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    # Not Grad-CAM++: pytorch-grad-cam's adds eps to Eq. 19's denominator, which is not negligible
    # at ViT gradient sizes (cams.GradCAMpp's docstring); not EigenCAM: theirs centres and fixes no
    # sign (test_peers.py pins that down). The literal tests cover ours.
    for method, ours in (("GradCAM", maps["gradcam"]), ("LayerCAM", maps["layercam"]),
                         ("XGradCAM", maps["xgradcam"]), ("HiResCAM", maps["hirescam"])):
        with getattr(pgc, method)(model=model, target_layers=[model.blocks[-1].norm1],
                                  reshape_transform=reshape_transform) as cam:
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in pred])
        up = F.interpolate(ours[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0].numpy()
        for i in range(x.shape[0]):
            if np.ptp(theirs[i]) == 0 and np.ptp(up[i]) == 0:
                continue
            r = np.corrcoef(up[i].ravel(), theirs[i].ravel())[0, 1]
            assert r >= 0.99, f"{method} image {i}: Pearson r {r:.4f}"


def test_named_layer_errors_are_one_line() -> None:
    from xaidash.errors import UserError

    model = byo_models.timm_vit()
    with pytest.raises(UserError, match=r"nearest names: .*blocks\.1\.norm1") as e:
        discover(model, 64, 3, named="blocks.1.norm")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no map") as e:
        discover(model, 64, 3, named="head")
    with pytest.raises(UserError, match="gives 3 logits per image, but there are 5 classes"):
        discover(model, 64, 5)


def test_map_layout_round_trip() -> None:
    lay = MapLayout("tokens", 1, (4, 4))
    t = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    a = lay.to_map(t)
    assert a.shape == (2, 3, 4, 4) and a[0, :, 0, 1].tolist() == t[0, 2].tolist()
    assert MapLayout.from_dict(lay.to_dict()) == lay and MapLayout.from_dict(None) == MapLayout()


def test_sanity_cascade_of_brought_models_names_their_blocks(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from xaidash.compute.methods.sanity import randomisation_blocks

    def labels(model: nn.Module) -> list[str]:
        return [label for label, _ in randomisation_blocks(model, "timm:any")]

    assert labels(byo_models.timm_vit()) == ["head", "norm", "blocks.1", "blocks.0", "patch_embed"]
    assert labels(byo_models.timm_swin()) == ["head", "norm", "layers.1", "layers.0", "patch_embed"]
    assert labels(byo_models.tiny_cnn()) == ["classifier", "body"]
    hf = [n.replace("encoder.layer.", "layers.") for n in labels(_hf_vit(tmp_path_factory))]
    assert hf == ["hf.classifier", "hf.vit.layernorm", "hf.vit.layers.1", "hf.vit.layers.0",
                  "hf.vit.embeddings"]


class _TinyTokens(nn.Module):
    """Patch embedding (4x4 patches of a 16-px image: a 4x4 grid) + a class token, one token
    mixer "block" (signed outputs: the target), then the mean of *all* tokens -> MLP -> logits, so
    the patch tokens get a gradient that varies over the grid."""

    def __init__(self, dim: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.head = nn.Sequential(nn.Linear(dim, 7), nn.Tanh(), nn.Linear(7, classes))

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 16, dim]
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.block(t)
        return self.head(t.mean(1) * t[:, 1:].amax(1))


@pytest.mark.parametrize("method", ["layercam", "xgradcam", "hirescam", "eigencam"])
def test_new_methods_equal_literal_formula_on_a_token_layer(method: str) -> None:
    """1e-5 against the float64 literal loops of test_cams.py, on tokens [B, 1 + 16, K] that the
    engine's MapLayout turns into [B, K, 4, 4] (the literal side reshapes them by hand)."""
    from tests.compute.methods.test_cams import literal_pixelwise

    torch.manual_seed(7)
    model = _TinyTokens().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    with CamEngine(model, "block", None, layout=MapLayout("tokens", 1, (4, 4))) as eng:
        res = eng.forward(x, (method,))
    m64 = _copy_double(model)
    store: dict[str, Tensor] = {}
    handle = m64.block.register_forward_hook(lambda m, i, o: store.__setitem__("t", o))
    try:
        logits = m64(x.double())
    finally:
        handle.remove()
    pred = res.targets["pred"]
    assert torch.equal(logits.argmax(1), pred)
    (gt,) = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), store["t"])
    for b in range(3):
        a = torch.empty(6, 4, 4, dtype=torch.float64)
        g = torch.empty_like(a)
        for i in range(4):
            for j in range(4):
                a[:, i, j] = store["t"][b, 1 + 4 * i + j].detach()
                g[:, i, j] = gt[b, 1 + 4 * i + j]
        assert (a < 0).any()  # a signed layer, not a ReLU one
        want = literal_pixelwise(method, a, g)
        got = res.maps[(method, "pred")][b].double()
        assert want.max() == 1.0 and (want > 0).sum() >= 2, (method, b)  # not a trivial map
        assert torch.allclose(got, want, atol=1e-5), (method, b, (got - want).abs().max())


def _copy_double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()
