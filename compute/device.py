"""The torch device a compute process runs on: which one (``--device``), and fp32 that is fp32 on it.

Light imports only (stdlib): the CLI parses ``--device`` with :func:`device_name` when ``xaidash
--help`` builds its parser; torch is imported inside the functions that need it. Both the model
loader and the job configure the device, so this sits below ``model/`` and ``pipeline/``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from xaidash.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def device_name(text: str) -> str:
    """argparse type: auto | cpu | cuda | cuda:N."""
    name = text.strip().lower()
    if name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"invalid device {text!r}; valid devices: auto, cpu, cuda, cuda:N")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; UserError when cuda is asked for but unavailable."""
    import torch

    try:
        name = device_name(name)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available to PyTorch here; use --device cpu")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)


def configure_device(device: torch.device) -> dict[str, object]:
    """Make fp32 mean fp32 on ``device``; returns the settings the run records.

    On Ampere and newer GPUs cuDNN convolutions and matmuls use TF32 by default, which would
    silently make "fp32" maps bf16-like: it is switched off. CPUs have no TF32."""
    import torch

    if device.type != "cuda":
        return {"tf32": None}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"tf32": False}
