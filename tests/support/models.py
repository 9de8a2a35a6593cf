"""A tiny seeded checkpoint for the compute tests: resnet18 with the small-input stem at 16 px."""

from __future__ import annotations

from pathlib import Path

import torch

SIZE = 16
CLASSES = ("left", "right")


def save_tiny_checkpoint(path: Path, classes: tuple[str, ...] = CLASSES, seed: int = 0) -> Path:
    """An untrained (seeded) checkpoint written like ``train`` writes one."""
    from xaidash.compute.model.architectures import build_model
    from xaidash.compute.model.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(seed)
    parts = build_model("resnet18", len(classes), input_size=SIZE)
    ckpt = Checkpoint(
        arch="resnet18", classes=list(classes), preprocessing=parts.preprocessing, small_input_stem=True,
        state_dict=parts.model.state_dict(), train_args={}, metrics={}, versions={},
        created="2024-01-01T00:00:00+00:00", path=None, sha256=None,
    )
    save_checkpoint(ckpt, str(path))
    return path


def settled_resnet18(size: int, n_images: int, n_classes: int = 3) -> tuple[torch.nn.Module, torch.Tensor]:
    """A seeded, frozen resnet18 whose BatchNorm parameters and statistics sit away from their
    initial values, as after training (a fresh BatchNorm makes every map of a method alike), and
    ``n_images`` seeded inputs of ``size`` px."""
    from xaidash.compute.model.architectures import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", n_classes, input_size=size).model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(1))
