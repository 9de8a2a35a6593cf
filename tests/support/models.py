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
