"""Tiny seeded models a user might bring (tests of ``--model python:/timm:/hf:``).

Every builder is seeded and small (32-64 px inputs, depth 2), so a test builds one in well under
a second. ``python:tests/support/byo_models.py:FUNC`` names the functions here as user code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.model.layers import TargetLayer

#: kwargs of the tiny timm models (the issue's ViT: img_size=64, patch_size=8, depth=2)
TIMM_VIT_ARGS: dict[str, Any] = {"img_size": 64, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2}
TIMM_SWIN_ARGS: dict[str, Any] = {"img_size": 64, "depths": (1, 1), "num_heads": (1, 2), "embed_dim": 16,
                                  "window_size": 4}
TIMM_CONVNEXT_ARGS: dict[str, Any] = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}


class TinyCNN(nn.Module):
    """A user's own CNN: two conv blocks, GAP, one linear layer (CAM applies)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.body(x)).flatten(1))


def tiny_cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN(classes)


def not_a_module() -> object:
    return {"weights": 1}


def timm_model(name: str, classes: int = 3, **kwargs: Any) -> nn.Module:
    import timm

    torch.manual_seed(0)
    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=classes, **kwargs)
    return model.eval()


def timm_vit(classes: int = 3) -> nn.Module:
    return timm_model("vit_tiny_patch16_224", classes, **TIMM_VIT_ARGS)


def timm_swin(classes: int = 3) -> nn.Module:
    return timm_model("swin_tiny_patch4_window7_224", classes, **TIMM_SWIN_ARGS)


def timm_convnext(classes: int = 3) -> nn.Module:
    return timm_model("convnext_atto", classes, **TIMM_CONVNEXT_ARGS)


def hf_vit_folder(folder: Path, labels: tuple[str, ...] = ("a", "b", "c"), image_size: int = 32) -> Path:
    """A ``ViTForImageClassification`` from a small ``ViTConfig`` plus its image processor,
    saved with ``save_pretrained`` into ``folder``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, num_labels=len(labels),
                    id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def literal_maps(model: nn.Module, target: TargetLayer, x: Tensor, c: Tensor) -> dict[str, Tensor]:
    """Grad-CAM, Grad-CAM++ (Eq. 19), LayerCAM, HiResCAM, XGradCAM and EigenCAM from the formulas,
    channel by channel in float64."""
    store: dict[str, Tensor] = {}
    layer = model.get_submodule(target.name)
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o[0] if isinstance(o, tuple)
                                                                           else o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    raw = store["a"]
    (graw,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), raw)
    lay = target.layout

    def as_map(t: Tensor) -> Tensor:
        t = t.detach().double()
        if lay.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        if lay.kind == "tokens":
            assert lay.grid is not None
            gh, gw = lay.grid
            b, _, k = t.shape
            out = torch.empty(b, k, gh, gw, dtype=torch.float64)
            for i in range(gh):
                for j in range(gw):
                    out[:, :, i, j] = t[:, lay.prefix_tokens + i * gw + j, :]
            return out
        return t

    a, g = as_map(raw), as_map(graw)

    def norm(m: Tensor) -> Tensor:
        lo = m.amin(dim=(1, 2), keepdim=True)
        span = m.amax(dim=(1, 2), keepdim=True) - lo
        return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1), torch.zeros_like(m))

    gc = torch.zeros(a.shape[0], a.shape[2], a.shape[3], dtype=torch.float64)
    pp = torch.zeros_like(gc)
    for k in range(a.shape[1]):
        w = g[:, k].mean(dim=(1, 2))
        gc += w[:, None, None] * a[:, k]
        gk = g[:, k]
        denom = 2 * gk**2 + a[:, k].sum(dim=(1, 2))[:, None, None] * gk**3
        alpha = torch.where((gk != 0) & (denom != 0), gk**2 / torch.where(denom != 0, denom, 1), 0)
        wpp = (alpha * F.relu(gk)).sum(dim=(1, 2))
        pp += wpp[:, None, None] * a[:, k]
    out = {"gradcam": norm(F.relu(gc)), "gradcampp": norm(F.relu(pp))}
    # issue 22's methods, channel by channel too (EigenCAM: eigh of M^T M in float64)
    lc = torch.zeros_like(gc)
    hr = torch.zeros_like(gc)
    xg = torch.zeros_like(gc)
    for k in range(a.shape[1]):
        lc += F.relu(g[:, k]) * a[:, k]
        hr += g[:, k] * a[:, k]
        s = a[:, k].sum(dim=(1, 2))
        wx = torch.where(s != 0, (a[:, k] * g[:, k]).sum(dim=(1, 2)) / torch.where(s != 0, s, 1), 0)
        xg += wx[:, None, None] * a[:, k]
    mat = a.flatten(2).transpose(1, 2)  # [B, hw, K]
    _, vecs = torch.linalg.eigh(mat.transpose(1, 2) @ mat)
    proj = (mat @ vecs[:, :, -1:]).squeeze(-1)
    proj = torch.where(proj.sum(1, keepdim=True) < 0, -proj, proj).reshape(gc.shape)
    out.update(layercam=norm(F.relu(lc)), hirescam=norm(F.relu(hr)), xgradcam=norm(F.relu(xg)),
               eigencam=norm(F.relu(proj)))
    return out
