"""How an RGB image becomes the network input, as one record a run and a checkpoint carry.

:class:`Preprocessing` is the geometry (resize the shorter side to ``resize`` and centre-crop
``input_size``, or with ``crop=False`` resize straight to an ``input_size`` square) plus the
normalisation. ``library`` says whose code builds the eval transform:

* ``""``: torchvision, from the fields (the built-in architectures, ``python:`` models);
* ``"timm"``: ``timm.data.create_transform`` of the recorded data config (``library_config``,
  the output of ``resolve_data_config``), i.e. timm's own eval transform for that model;
* ``"hf"``: the ``AutoImageProcessor`` saved in the model folder (``library_config`` records
  the folder and the processor's settings).

The geometric fields describe the library transforms too (the explain page shows the image as
the network saw it; localisation maps object masks onto the input grid), and a test checks
that they agree with what the library does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xaidash.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Resize (shorter side, or to a square), centre crop, normalise; see the module docstring."""

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = True
    interpolation: str = "bilinear"
    library: str = ""
    #: JSON (a string keeps the record hashable): timm's data config, or the HF folder + settings
    library_config: str = ""

    def _geometry_steps(self, nearest: bool = False) -> list[Callable[..., object]]:
        from torchvision import transforms as T

        mode = T.InterpolationMode("nearest" if nearest else self.interpolation)
        if not self.crop:
            return [T.Resize((self.input_size, self.input_size), interpolation=mode, antialias=True)]
        return [T.Resize(self.resize, interpolation=mode, antialias=True), T.CenterCrop(self.input_size)]

    def geometry(self, img: Image.Image, nearest: bool = False) -> Image.Image:
        """``img`` resized and cropped as the network sees it (``nearest`` for masks)."""
        from torchvision import transforms as T

        out: Image.Image = T.Compose(self._geometry_steps(nearest))(img)  # torchvision is untyped
        return out

    def transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """The eval transform (the library's own where one is recorded); ``train=True`` adds a
        random horizontal flip and a small rotation (±10°) after the geometry - seed 003's
        augmentation - and is always built from the fields."""
        if not train and self.library == "timm":
            from timm.data.transforms_factory import create_transform

            cfg = json.loads(self.library_config)
            timm_t: Callable[[Image.Image], torch.Tensor] = create_transform(**cfg, is_training=False)
            return timm_t
        if not train and self.library == "hf":
            return HFTransform(json.loads(self.library_config)["folder"])
        from torchvision import transforms as T

        steps = self._geometry_steps()
        if train:
            steps += [T.RandomHorizontalFlip(), T.RandomRotation(10)]
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        composed: Callable[[Image.Image], torch.Tensor] = T.Compose(steps)  # torchvision is untyped
        return composed

    def to_dict(self) -> dict[str, object]:
        """Plain types, for checkpoints and JSON (the extended fields only where they are set, so
        records of the built-in models stay as they were)."""
        d: dict[str, object] = {"input_size": self.input_size, "resize": self.resize,
                                "mean": list(self.mean), "std": list(self.std)}
        if not self.crop:
            d["crop"] = False
        if self.interpolation != "bilinear":
            d["interpolation"] = self.interpolation
        if self.library:
            d["library"] = self.library
            d["library_config"] = self.library_config
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        mean, std = d["mean"], d["std"]
        input_size, resize = d["input_size"], d["resize"]
        if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple))
                and isinstance(input_size, int) and isinstance(resize, int) and len(mean) == len(std) == 3):
            raise ValueError(f"not a preprocessing record: {d!r}")
        m0, m1, m2 = (float(x) for x in mean)
        s0, s1, s2 = (float(x) for x in std)
        return cls(input_size, resize, (m0, m1, m2), (s0, s1, s2), crop=bool(d.get("crop", True)),
                   interpolation=str(d.get("interpolation", "bilinear")), library=str(d.get("library", "")),
                   library_config=str(d.get("library_config", "")))

    def describe(self) -> str:
        """One line for logs."""
        geo = (f"resize to {self.input_size}x{self.input_size} (no crop)" if not self.crop
               else f"resize {self.resize}, centre crop {self.input_size}")
        who = f"{self.library}'s eval transform: " if self.library else ""
        return (f"{who}{geo}, {self.interpolation}, mean {_fmt(self.mean)}, std {_fmt(self.std)}")


def _fmt(v: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in v)


class HFTransform:
    """A Hugging Face image processor as a ``PIL image -> [3, H, W]`` transform. Loaded lazily
    from its folder, so it pickles as a path (DataLoader workers, Ray)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._processor: Any = None

    def __getstate__(self) -> dict[str, object]:
        return {"folder": self.folder, "_processor": None}

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self._processor is None:
            self._processor = hf_image_processor(self.folder)
        x: torch.Tensor = self._processor(images=img, return_tensors="pt")["pixel_values"][0]
        return x


def hf_image_processor(folder: str) -> Any:
    """``AutoImageProcessor.from_pretrained(folder)`` offline; UserError when there is none."""
    from transformers import AutoImageProcessor

    # Any: transformers' own annotation of from_pretrained changes between releases (typed in some,
    # untyped in others), and a type: ignore that one release needs fails another as unused.
    processor: Any = AutoImageProcessor
    try:
        return processor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"hf:{folder} has no usable image processor (preprocessor_config.json): "
                        f"{str(exc).splitlines()[0][:200]}; save it with processor.save_pretrained(DIR)"
                        ) from None


def parse_triple(text: str, option: str) -> tuple[float, float, float]:
    """``"r,g,b"`` -> three floats; UserError naming ``option`` otherwise."""
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise UserError(f"{option} takes three comma-separated numbers r,g,b, got {text!r}")
    return vals[0], vals[1], vals[2]


def square_preprocessing(input_size: int | None, mean: tuple[float, float, float] | None,
                         std: tuple[float, float, float] | None, what: str) -> Preprocessing:
    """A ``python:`` model's contract: resize to an ``input_size`` square (no crop), normalise;
    ImageNet's values where not given, with one line saying so."""
    defaults = [name for name, v in (("--input-size 224", input_size), ("--mean/--std of ImageNet", mean))
                if v is None]
    if defaults:
        logger.info("%s: using %s (give them if the model was trained otherwise)", what,
                    " and ".join(defaults))
    size = 224 if input_size is None else input_size
    if size < 8:
        raise UserError(f"--input-size {size} is too small (at least 8)")
    return Preprocessing(size, size, mean or IMAGENET_MEAN, std or IMAGENET_STD, crop=False)


def timm_preprocessing(model: nn.Module, input_size: int | None, mean: tuple[float, float, float] | None,
                       std: tuple[float, float, float] | None) -> Preprocessing:
    """timm's eval transform for ``model`` (``resolve_data_config`` of its pretrained config, at
    the input size the model was built for), with ``--input-size/--mean/--std`` overriding."""
    from timm.data.config import resolve_data_config

    args: dict[str, object] = {}
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if input_size is not None:
        args["input_size"] = (3, input_size, input_size)
    elif isinstance(built, (tuple, list)) and len(built) == 2:
        # a model created with img_size=... only takes that size; its pretrained config may say 224
        args["input_size"] = (3, int(built[0]), int(built[1]))
    if mean is not None:
        args["mean"] = mean
    if std is not None:
        args["std"] = std
    cfg: dict[str, Any] = resolve_data_config(args, model=model)  # type: ignore[no-untyped-call]
    _, h, w = cfg["input_size"]
    if h != w:
        raise UserError(f"timm model input {h}x{w} is not square; give --input-size N")
    if cfg.get("crop_mode", "center") != "center":
        raise UserError(f"timm crop_mode {cfg['crop_mode']!r} is not supported (only 'center')")
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interp = str(cfg.get("interpolation", "bilinear"))
    # timm's eval transform: shorter side to floor(size / crop_pct), centre crop (transforms_factory)
    resize = int(h / crop_pct) if crop_pct < 1 else int(h)
    m0, m1, m2 = (float(x) for x in cfg["mean"])
    s0, s1, s2 = (float(x) for x in cfg["std"])
    plain = {"input_size": [3, int(h), int(w)], "interpolation": interp, "mean": [m0, m1, m2],
             "std": [s0, s1, s2], "crop_pct": crop_pct, "crop_mode": "center"}
    return Preprocessing(int(h), resize, (m0, m1, m2), (s0, s1, s2), crop=True,
                         interpolation=interp if interp in INTERPOLATIONS else "bilinear",
                         library="timm", library_config=json.dumps(plain, sort_keys=True))


def hf_preprocessing(folder: str) -> Preprocessing:
    """The image processor saved in ``folder``; its geometry and normalisation read back."""
    proc = hf_image_processor(folder)
    settings = proc.to_dict()
    size = dict(settings.get("size") or {})
    mean = tuple(float(x) for x in (settings.get("image_mean") or IMAGENET_MEAN))
    std = tuple(float(x) for x in (settings.get("image_std") or IMAGENET_STD))
    if not settings.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = int(settings.get("resample", 2))
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(resample, "bilinear")
    crop = bool(settings.get("do_center_crop", False))
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise UserError(f"hf:{folder}: the processor resizes to {size['height']}x{size['width']}; "
                            "only square inputs are supported")
        side, resize = int(size["height"]), int(size["height"])
        crop = False
    elif "shortest_edge" in size:
        resize = int(size["shortest_edge"])
        crop_size = dict(settings.get("crop_size") or {})
        side = int(crop_size.get("height", resize)) if crop else resize
        if not crop:
            raise UserError(f"hf:{folder}: a shortest-edge resize without a crop gives non-square inputs")
    else:
        raise UserError(f"hf:{folder}: cannot read the processor's size {size!r}")
    record = {"folder": folder, "processor": settings.get("image_processor_type", type(proc).__name__),
              "size": size, "mean": list(mean), "std": list(std)}
    return Preprocessing(side, resize, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), crop=crop,
                         interpolation=interp, library="hf", library_config=json.dumps(record, sort_keys=True,
                                                                                        default=str))
