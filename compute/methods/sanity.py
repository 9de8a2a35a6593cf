"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
https://arxiv.org/abs/1810.03292), cascading from the head down.

On a stratified sample of validation images (``--sanity-images N``, chosen in the plan), the
weights of the trained network are re-initialised one block further at each step (ResNet: fc,
layer4, layer3, layer2, layer1, stem; :data:`RANDOMISATION_BLOCKS` for the other built-in
architectures, :func:`generic_blocks` - top-level children, transformer blocks - for any other model)
and all the run's maps are recomputed on the randomised network for the *same* target class
(the trained model's prediction). Per (image, method, step) the Spearman rank correlation of the
randomised map with the trained map is stored. A map that depends on the learned weights
decorrelates as soon as the blocks it reads are random; one that survives is not explaining the
model.

Reproducible and harmless: the randomised network is a deep copy of the trained one; block ``k``
is re-initialised with ``reset_parameters()`` under a CPU generator seeded with
``SANITY_SEED + k`` on a CPU copy of the block, then copied onto the device, so every worker
(local, ``--shard``, Ray; CPU or GPU) produces the same weights. The user's model object and
checkpoint are never modified.

Conventions: the Spearman correlation is computed on the maps at the target layer's native
resolution (the resolution they are stored at). When the randomised map is constant (typically
all zeros after the ReLU) it carries no information about the trained map: its correlation is 0.
When the trained map itself is constant there is nothing to compare and the value is null. SSIM
is not computed: the library that gives it (scikit-image) is a test-only dependency here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from xaidash.compute.datasets.sources import Item, subsample

log = logging.getLogger(__name__)

#: Seed of the first randomisation step (step k uses SANITY_SEED + k).
SANITY_SEED = 20181021
#: Seed of the stratified sample of validation images (distinct from the calibration sample's).
SANITY_SAMPLE_SEED = 13
DEFAULT_SANITY_IMAGES = 64


def sanity_sample(val: Sequence[Item], n: int) -> frozenset[str]:
    """The ids of the stratified, seeded sanity sample (``n`` = 0: none)."""
    if n <= 0:
        return frozenset()
    return frozenset(it.image_id for it in subsample(list(val), n, seed=SANITY_SAMPLE_SEED))


def _seq(prefix: str, indices: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in indices)


#: Per architecture, from the head down: (label, modules re-initialised at that step).
RANDOMISATION_BLOCKS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    **{arch: (("fc", ("fc",)), ("layer4", ("layer4",)), ("layer3", ("layer3",)),
              ("layer2", ("layer2",)), ("layer1", ("layer1",)), ("stem", ("conv1", "bn1")))
       for arch in ("resnet18", "resnet34", "resnet50")},
    # torchvision MobileNetV3-Large: features.0 stem, 1-15 inverted residuals, 16 last conv
    "mobilenet_v3_large": (("classifier", ("classifier",)), ("features.16", ("features.16",)),
                           ("features.13-15", _seq("features", range(13, 16))),
                           ("features.7-12", _seq("features", range(7, 13))),
                           ("features.1-6", _seq("features", range(1, 7))),
                           ("stem", ("features.0",))),
    # torchvision EfficientNet-B0: features.0 stem, 1-7 MBConv stages, 8 last conv
    "efficientnet_b0": (("classifier", ("classifier",)), ("features.8", ("features.8",)),
                        ("features.6-7", ("features.6", "features.7")),
                        ("features.4-5", ("features.4", "features.5")),
                        ("features.1-3", _seq("features", range(1, 4))), ("stem", ("features.0",))),
    # VGG-16: the three FC layers, then the five conv blocks (features.0-4, 5-9, 10-16, 17-23, 24-30)
    "vgg16": (("classifier", ("classifier",)), ("block5", _seq("features", range(24, 31))),
              ("block4", _seq("features", range(17, 24))), ("block3", _seq("features", range(10, 17))),
              ("block2", _seq("features", range(5, 10))), ("block1", _seq("features", range(0, 5)))),
    # timm EfficientNet-Lite0: conv_stem/bn1, blocks.0-6, conv_head/bn2, classifier
    "efficientnet_lite0": (("classifier", ("classifier",)), ("head", ("conv_head", "bn2")),
                           ("blocks.5-6", ("blocks.5", "blocks.6")), ("blocks.3-4", ("blocks.3", "blocks.4")),
                           ("blocks.0-2", ("blocks.0", "blocks.1", "blocks.2")),
                           ("stem", ("conv_stem", "bn1"))),
}


def randomisation_blocks(model: nn.Module, arch: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The cascade for ``arch``; for any other model, its own blocks from the head down
    (:func:`generic_blocks`)."""
    if arch in RANDOMISATION_BLOCKS:
        return RANDOMISATION_BLOCKS[arch]
    return generic_blocks(model)


def _is_stack(module: nn.Module) -> bool:
    """A ModuleList/Sequential of two or more blocks of one class (transformer blocks, CNN stages)."""
    kids = list(module.children())
    return isinstance(module, (nn.ModuleList, nn.Sequential)) and len(kids) >= 2 \
        and len({type(k) for k in kids}) == 1


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def generic_blocks(model: nn.Module) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A model's blocks, last first: its top-level children that hold parameters, where a stack
    of blocks of one class (``blocks``, ``layers``, ``stages``) is split into its blocks, and a
    child that holds such a stack (a Hugging Face ``vit`` wrapping embeddings, encoder and norm)
    is opened to reach it. A timm ViT gives head, norm, blocks.N ... blocks.0, patch_embed; a
    HF ViT hf.classifier, hf.vit.layernorm, hf.vit.layers.N ... hf.vit.embeddings."""

    def holds_stack(module: nn.Module) -> bool:
        return any(_is_stack(m) for m in module.modules())

    out: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not _has_params(child):
                continue
            if _is_stack(child):
                out.extend(f"{full}.{n}" for n, k in child.named_children() if _has_params(k))
            elif holds_stack(child):
                walk(child, full + ".")
            else:
                out.append(full)

    walk(model, "")
    return tuple((n, (n,)) for n in reversed(out))


def _reinit_module(module: nn.Module, seed: int) -> None:
    """Re-initialise every sub-module of ``module`` that has ``reset_parameters`` (and BatchNorm's
    running statistics), reproducibly: the new values are drawn on a CPU copy under a seeded
    CPU generator, then copied in, so the device does not change them."""
    cpu = copy.deepcopy(module).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in cpu.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                sub.reset_running_stats()
    with torch.no_grad():
        for dst, src in zip(module.state_dict().values(), cpu.state_dict().values(), strict=True):
            dst.copy_(src.to(dst.device, dst.dtype))


@dataclass(frozen=True)
class Step:
    """One step of the cascade: ``index`` 1..K, ``block`` the label of the block added at it."""

    index: int
    block: str


def iter_randomised(model: nn.Module, blocks: Sequence[tuple[str, Sequence[str]]]
                    ) -> Iterator[tuple[Step, nn.Module]]:
    """``(step, model)`` for every step of the cascade: step ``k`` has blocks ``1..k``
    re-initialised. One deep copy of ``model`` (never ``model`` itself) is re-initialised one
    block further at each step: use each step's model before asking for the next."""
    current = copy.deepcopy(model)
    for k, (label, modules) in enumerate(blocks, start=1):
        for j, name in enumerate(modules):
            _reinit_module(current.get_submodule(name), SANITY_SEED + 100 * k + j)
        yield Step(k, label), current


def spearman(trained: np.ndarray, randomised: np.ndarray) -> float | None:
    """Spearman rank correlation of two maps (flattened); see the module's conventions."""
    a = np.asarray(trained, dtype=np.float64).ravel()
    b = np.asarray(randomised, dtype=np.float64).ravel()
    if a.size < 2 or np.ptp(a) == 0:
        return None
    if np.ptp(b) == 0:
        return 0.0
    rho = spearmanr(a, b).statistic
    return None if not np.isfinite(rho) else float(rho)


#: ``(model, x, targets) -> method -> maps [B, h, w]``: how the run computes its maps.
MapFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]


#: one batch an image step keeps for the sanity check: inputs, the fixed targets, the trained
#: model's maps per method, and the image ids
SanityBatch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], list[str]]


def join_batches(batches: Sequence[SanityBatch]) -> SanityBatch:
    """The kept batches of a chunk as one, so each randomised network is built once per chunk."""
    x = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    trained = {m: torch.cat([b[2][m] for b in batches]) for m in batches[0][2]}
    return x, targets, trained, [i for b in batches for i in b[3]]


@dataclass
class SanityRows:
    """Rows of the ``sanity`` table for a batch of images."""

    image_id: list[str]
    method: list[str]
    step: list[int]
    block: list[str]
    spearman: list[float | None]


def sanity_rows(map_fn: MapFunction, model: nn.Module, blocks: Sequence[tuple[str, Sequence[str]]],
                x: torch.Tensor, targets: torch.Tensor, trained: Mapping[str, torch.Tensor],
                ids: Sequence[str]) -> SanityRows:
    """Per (image, method, step): Spearman of the randomised map with ``trained[method]``.

    ``map_fn`` computes the maps on a (randomised) model for the fixed ``targets``; ``trained``
    are the trained model's maps of the same images.
    """
    rows = SanityRows([], [], [], [], [])
    base = {m: t.detach().float().cpu().numpy() for m, t in trained.items()}
    for step, rmodel in iter_randomised(model, blocks):
        maps = map_fn(rmodel, x, targets)
        for m, t in base.items():
            if m not in maps:
                continue
            rand = maps[m].detach().float().cpu().numpy()
            for i, iid in enumerate(ids):
                rows.image_id.append(iid)
                rows.method.append(m)
                rows.step.append(step.index)
                rows.block.append(step.block)
                rows.spearman.append(spearman(t[i], rand[i]))
        del rmodel
    return rows
