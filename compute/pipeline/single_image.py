"""Explain one uploaded image with a run's model (the dashboard's "explain a new image" page).

The dashboard never imports torch at start-up; it imports this module lazily when a user
uploads an image. ``model_ref`` is ``json.loads(runs.config_json)["model"]`` as written by
:mod:`xaidash.compute.pipeline.job`:

* ``{"checkpoint": "/abs/path.pt", "sha256": "...", "target_layer": "layer4"}``, or
* ``{"arch": "resnet18", "weights": "imagenet" | "/abs/state_dict.pt", "classes": [...],
  "target_layer": "layer4"}``;
* ``{"external": "timm:NAME" | "hf:DIR" | "python:...", ...}`` (a model a user brought);
* ``"target"``: the run's target layer, its map layout and embedding layer (runs before it
  record only ``target_layer``, and the layer is probed again);
* optionally ``"scorecam_max_channels"``: the run's Score-CAM cap, applied here too.

Models are built once per model_ref and cached (with a lock per model: the CAM hooks of one
model must not be shared by two concurrent requests). A checkpoint that is gone, or whose
sha256 no longer matches the run's, is a UserError: explaining with a different model than the
run's would silently show maps that do not belong to the run.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xaidash.compute.methods.cams import CamEngine
from xaidash.compute.model.checkpoint import sha256_file
from xaidash.compute.model.layers import TargetLayer, target_for
from xaidash.compute.model.loading import for_inference, load_model
from xaidash.compute.model.preprocessing import Preprocessing
from xaidash.constants import METHODS
from xaidash.errors import UserError, choices_error

log = logging.getLogger(__name__)

TOPK = 3


@dataclass
class Explanation:
    """Everything the upload page shows for one image."""

    topk: list[tuple[int, str, float]]  # (class index, class name, probability), top 3
    maps: dict[str, np.ndarray]  # method -> [h, w] float32 in [0, 1], target = predicted class
    notes: dict[str, str]  # method -> why it is missing / approximated
    twins: list[tuple[str, float]]  # (train image_id, cosine similarity), best first
    image: Image.Image  # the RGB image as the network saw it (resized + center-cropped)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [K]


@dataclass
class _Cached:
    model: torch.nn.Module
    classes: list[str]
    target: TargetLayer
    preprocessing: Preprocessing
    device: torch.device
    lock: threading.Lock


_CACHE: dict[str, _Cached] = {}
_CACHE_LOCK = threading.Lock()


def _verify(model_ref: Mapping[str, object]) -> None:
    """UserError when the checkpoint/weights file is gone or changed since the run."""
    path_s = model_ref.get("checkpoint")
    if path_s:
        path = Path(str(path_s))
        if not path.is_file():
            raise UserError(f"the run's checkpoint {path} no longer exists; cannot explain new images")
        want = model_ref.get("sha256")
        if want and sha256_file(path) != want:
            raise UserError(
                f"the run's checkpoint {path} has changed since the run (sha256 differs); "
                "explanations would not match the run - recompute or restore the file"
            )
        return
    weights = model_ref.get("weights")
    if weights and weights != "imagenet" and not Path(str(weights)).exists():
        raise UserError(f"the run's weights file {weights} no longer exists; cannot explain new images")


def _load(model_ref: Mapping[str, object]) -> _Cached:
    loaded = load_model(model_ref)
    parts = loaded.parts
    recorded = model_ref.get("target")
    if isinstance(recorded, Mapping):
        target = TargetLayer.from_dict(recorded)
    else:
        named = model_ref.get("target_layer")
        target = target_for(parts, len(loaded.classes), str(named) if named else None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _Cached(for_inference(parts.model, device), list(loaded.classes), target, parts.preprocessing,
                   device, threading.Lock())


def get_model(model_ref: Mapping[str, object]) -> _Cached:
    """The cached model for ``model_ref`` (verified against the run's sha256 on every call)."""
    _verify(model_ref)
    # the model's identity only: options such as the Score-CAM cap must not load a second copy
    key = json.dumps({k: v for k, v in model_ref.items() if k != "scorecam_max_channels"},
                     sort_keys=True, default=str)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = _load(model_ref)
            _CACHE[key] = cached
    return cached


def clear_cache() -> None:
    """Drop every cached model (tests; freeing memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _network_view(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """The image as the network sees it (resized and cropped as the preprocessing does)."""
    return prep.geometry(img)


def explain_image(
    model_ref: Mapping[str, object],
    image: Image.Image,
    methods: Sequence[str] = METHODS,
    train_ids: Sequence[str] | None = None,
    train_labels: np.ndarray | None = None,
    train_vectors: np.ndarray | None = None,
    k: int = 5,
    scorecam_max_channels: int | None = None,
) -> Explanation:
    """Top-3 classes, the maps of ``methods`` for the predicted class, and twins.

    Twins are the ``k`` train images of the predicted class whose embedding (``train_vectors``,
    e.g. ``StoreReader.train_embeddings``) is most cosine-similar to this image's; none when
    no train vectors are given. ``scorecam_max_channels`` mirrors the job's option (the note
    says so when it approximates); by default the run's own setting
    (``model_ref["scorecam_max_channels"]``) is used, so the upload page matches the run.
    """
    from xaidash.compute.analysis.neighbors import twins_for_vector
    from xaidash.compute.datasets.decoding import to_rgb

    for m in methods:
        if m not in METHODS:
            raise choices_error("method", m, METHODS)
    cap = model_ref.get("scorecam_max_channels")
    if scorecam_max_channels is None and isinstance(cap, int):
        scorecam_max_channels = cap
    cached = get_model(model_ref)
    rgb = to_rgb(image)
    x = cached.preprocessing.transform(train=False)(rgb).unsqueeze(0)
    shown = _network_view(rgb, cached.preprocessing)
    notes: dict[str, str] = {}
    maps: dict[str, np.ndarray] = {}
    t = cached.target
    with cached.lock, CamEngine(cached.model, t.name, t.linear_head, layout=t.layout,
                                embedding_layer=t.embedding_layer) as engine:
        x = x.to(cached.device)
        res = engine.forward(x, [m for m in methods if m != "scorecam"])
        probs = res.logits.softmax(dim=1)[0]
        pred = int(probs.argmax())
        for m in methods:
            if m == "scorecam":
                sc = engine.scorecam(x, res.activations, res.targets["pred"],
                                     max_channels=scorecam_max_channels)
                maps[m] = sc[0].float().cpu().numpy().astype(np.float32)
                stats = engine.last_scorecam_stats
                if stats.approximate:
                    notes[m] = (f"approximate: top-{scorecam_max_channels} channels of "
                                f"{res.activations.shape[1]} by mean activation")
            elif (m, "pred") in res.maps:
                maps[m] = res.maps[(m, "pred")][0].float().cpu().numpy().astype(np.float32)
            elif m == "cam":
                notes[m] = ("not applicable: the head is not global average pooling + one linear "
                            "layer on the target layer")
        embedding = res.embedding[0].float().cpu().numpy()

    top = torch.topk(probs, min(TOPK, probs.shape[0]))
    topk = [(int(i), cached.classes[int(i)], float(p)) for p, i in zip(top.values, top.indices, strict=True)]

    twins: list[tuple[str, float]] = []
    if train_vectors is not None and train_ids is not None and train_labels is not None and len(train_ids):
        vecs = np.asarray(train_vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != embedding.shape[0]:
            log.warning("train vectors have shape %s, the model's embedding %d values: no twins",
                        vecs.shape, embedding.shape[0])
        else:
            twins = twins_for_vector(embedding, pred, train_ids, np.asarray(train_labels), vecs, k)
    return Explanation(topk=topk, maps=maps, notes=notes, twins=twins, image=shown, embedding=embedding)


def model_ref_from_config(config_json: str) -> dict[str, object]:
    """``config_json`` of a runs row -> its model_ref; UserError when absent."""
    try:
        ref = json.loads(config_json or "{}").get("model")
    except (ValueError, AttributeError):
        ref = None
    if not isinstance(ref, dict):
        raise UserError("this run records no model reference; recompute it with this version of xaidash")
    return ref


__all__ = ["Explanation", "clear_cache", "explain_image", "get_model", "model_ref_from_config"]
