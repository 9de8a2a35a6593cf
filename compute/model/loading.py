"""Loading the model a run explains, shared by the compute job and the dashboard's explain page.

A run records its model as a *model reference* (``config_json["model"]``):

* ``{"checkpoint": "/abs/path.pt", "sha256": "..."}`` for a checkpoint written by ``train``, or
* ``{"arch": "resnet18", "weights": "imagenet" | "/abs/state_dict.pt", "classes": [...]}``, or
* ``{"external": "timm:NAME" | "hf:DIR" | "python:...", ...}`` for a model a user brings
  (:mod:`xaidash.compute.model.external`),

plus ``target_layer`` (and the run's Score-CAM cap) added by the job. :func:`resolve_model_ref`
turns the CLI's options into such a reference (absolute paths, files checked), :func:`load_model`
builds the network from one, and :func:`for_inference` readies it for CAMs on a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xaidash.compute.datasets.sources import Dataset
from xaidash.compute.device import configure_device
from xaidash.compute.model import checkpoint as ckpt_mod
from xaidash.compute.model.architectures import ModelParts
from xaidash.compute.model.external import build as build_external
from xaidash.compute.model.external import is_external, make_ref
from xaidash.errors import UserError


@dataclass(frozen=True)
class LoadedModel:
    """The network, plus everything a run records about it."""

    parts: ModelParts
    arch: str
    classes: tuple[str, ...]
    #: what :func:`load_model` needs to rebuild it (the run's ``config_json["model"]``)
    model_ref: dict[str, object]
    #: what makes results differ (part of the job key): the file's sha256, not its path
    identity: dict[str, object]
    checkpoint_path: str | None
    checkpoint_sha256: str | None


def resolve_model_ref(
    checkpoint: str | None, model: str | None, weights: str | None, classes: tuple[str, ...] | None,
    dataset: Dataset, options: Mapping[str, Any] | None = None,
) -> dict[str, object]:
    """The model reference for ``--checkpoint CKPT``, ``--model ARCH --weights imagenet|PATH`` or
    ``--model python:|timm:|hf:...`` (``options``: its input size, mean, std and model arguments)."""
    if is_external(model):
        assert model is not None
        if classes is None and not model.startswith("hf:") and dataset.classes is not None:
            classes = tuple(dataset.classes)  # the head is sized to the dataset's classes
        return make_ref(model, weights, classes, **dict(options or {}))
    if checkpoint:
        path = Path(checkpoint).expanduser().absolute()
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
        return {"checkpoint": str(path), "sha256": ckpt_mod.sha256_file(path)}
    if not model:
        raise UserError("no model: give --checkpoint CKPT, or --model ARCH --weights imagenet|PATH")
    w = weights or "imagenet"
    if w != "imagenet":
        wpath = Path(w).expanduser().absolute()
        if not wpath.is_file():
            raise UserError(f"weights file {wpath} does not exist")
        w = str(wpath)
    names = list(classes) if classes is not None else None
    if names is None and w != "imagenet":
        if not dataset.labeled or dataset.classes is None:
            raise UserError("--weights PATH on unlabeled data needs --classes a,b,c")
        names = list(dataset.classes)
    return {"arch": model, "weights": w, "classes": names}


def load_model(model_ref: Mapping[str, object]) -> LoadedModel:
    """Build the network a model reference names (UserError when it names nothing usable)."""
    if model_ref.get("checkpoint"):
        path = str(model_ref["checkpoint"])
        ckpt = ckpt_mod.load_checkpoint(path)
        sha: str | None = ckpt.sha256 or ckpt_mod.sha256_file(path)
        ref: dict[str, object] = {"checkpoint": path, "sha256": sha}
        identity: dict[str, object] = {"checkpoint_sha256": sha}
        ckpt_path: str | None = path
    elif model_ref.get("external"):
        ext = build_external(model_ref)
        spec = str(model_ref["external"])
        parts = ModelParts(ext.model, "", None, ext.preprocessing, arch=spec)
        return LoadedModel(parts=parts, arch=spec, classes=ext.classes, model_ref=ext.ref,
                           identity=ext.identity, checkpoint_path=None, checkpoint_sha256=None)
    elif model_ref.get("arch"):
        weights: str = str(model_ref.get("weights") or "imagenet")
        classes = model_ref.get("classes")
        ckpt = ckpt_mod.checkpoint_from_weights(
            str(model_ref["arch"]), weights, [str(c) for c in classes] if isinstance(classes, list) else None)
        sha = ckpt.sha256
        ref = {"arch": ckpt.arch, "weights": weights, "classes": list(ckpt.classes)}
        identity = {"arch": ckpt.arch, "weights": weights if sha is None else sha,
                    "classes": list(ckpt.classes)}
        ckpt_path = None
    else:
        raise UserError("the run records no model (config_json has no 'model'); cannot rebuild it")
    parts = ckpt_mod.model_from_checkpoint(ckpt)
    return LoadedModel(parts=parts, arch=ckpt.arch, classes=tuple(ckpt.classes), model_ref=ref,
                       identity=identity, checkpoint_path=ckpt_path, checkpoint_sha256=sha)


def for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device`` with no parameter gradients (CAMs differentiate activations only);
    channels_last on CUDA, where cuDNN's convolutions are faster in it (same numbers); and fp32
    that is fp32 on this device (TF32 off, :func:`xaidash.compute.device.configure_device`)."""
    configure_device(device)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
