"""Models a user brings: ``python:FILE.py:FUNC``, ``python:pkg.mod:FUNC``, ``module:FILE``, ``timm:NAME``,
``hf:DIR``.

Each builds an ``nn.Module`` that maps a normalised ``[B, 3, S, S]`` batch to logits, its class
names and its :class:`~xaidash.compute.model.preprocessing.Preprocessing`:

* ``python:``: ``FUNC(**model_args)`` must return an ``nn.Module`` giving logits; ``--weights
  PATH`` (a state_dict) is optional. Preprocessing: resize to ``--input-size`` square, no crop,
  normalise with ``--mean/--std`` (ImageNet's by default).
* ``module:FILE``: a whole ``nn.Module`` saved with ``torch.save(model, FILE)`` (what many
  training scripts write, and what :func:`save_module` writes for a model handed to
  ``xaidash.compute_run`` in memory). Loading unpickles it, which runs code from the file: give
  only files you trust. ``--weights PATH`` and preprocessing as for ``python:``.
* ``timm:NAME``: ``timm.create_model(NAME, num_classes=len(classes), **model_args)``, weights from
  ``--weights PATH`` (a state_dict) or ``imagenet`` (timm's pretrained weights: its cache, or a
  download). Preprocessing: timm's own eval transform for the model, unless overridden.
* ``hf:DIR``: ``AutoModelForImageClassification`` saved with ``save_pretrained`` (weights in the
  folder), classes from ``config.id2label``, preprocessing from the image processor saved beside
  it; wrapped in :class:`HFClassifier` so the network returns ``.logits``.

Every bad input is a UserError before any work, in one line that says what to do.

A model reference (what a run records in ``config_json["model"]`` and :func:`build` takes back)
is ``{"external": SPEC, "weights": PATH|"imagenet"|None, "classes": [...], "model_args": {...},
"preprocessing": {...}, ...}``; the recorded preprocessing is used as it is on rebuild, so the
explain page feeds the network what the run did.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from xaidash.compute.model.architectures import build_timm, load_fitting, seeded_init
from xaidash.compute.model.checkpoint import sha256_file
from xaidash.compute.model.preprocessing import (
    Preprocessing,
    hf_preprocessing,
    square_preprocessing,
    timm_preprocessing,
)
from xaidash.errors import UserError

logger = logging.getLogger(__name__)

KINDS = ("python", "module", "timm", "hf")


def is_external(spec: str | None) -> bool:
    """``spec`` names a model a user brings (``python:``, ``module:``, ``timm:``, ``hf:``)."""
    return bool(spec) and str(spec).split(":", 1)[0] in KINDS and ":" in str(spec)


def split_spec(spec: str) -> tuple[str, str]:
    """``"timm:vit_tiny"`` -> ``("timm", "vit_tiny")``; UserError for an empty name."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise UserError(f"--model {spec!r}: expected python:FILE.py:FUNC, python:pkg.mod:FUNC, module:FILE, "
                        "timm:NAME or hf:DIR")
    return kind, rest


@dataclass(frozen=True)
class ExternalModel:
    """A built model a user brought, with what a run records about it."""

    model: nn.Module
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    #: what :func:`build` needs to rebuild it
    ref: dict[str, object]
    #: what makes results differ (file hashes, not paths)
    identity: dict[str, object]


class HFClassifier(nn.Module):
    """A Hugging Face image classifier as a plain ``x -> logits`` module (the rest of xaidash
    calls ``model(x)`` and reads a tensor). Its layers are named ``hf.<name in the HF model>``."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.hf(pixel_values=x).logits
        return logits


# ---------------------------------------------------------------------------------------------
# options


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args '{"img_size": 64}'`` -> keyword arguments of the model's constructor."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--model-args must be a JSON object such as '{{\"img_size\": 64}}': {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"--model-args must be a JSON object such as '{{\"img_size\": 64}}', got {text!r}")
    return value


def read_classes_file(path: str) -> tuple[str, ...]:
    """``--classes-file FILE``: one class name per line (blank lines and ``#`` comments ignored)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"--classes-file {p} does not exist")
    names = tuple(ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#"))
    if not names:
        raise UserError(f"--classes-file {p} lists no class names (one per line)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"--classes-file {p} lists {dup!r} twice")
    return names


def _absolute(path: str, what: str) -> str:
    p = Path(path).expanduser().absolute()
    if not p.exists():
        raise UserError(f"{what} {p} does not exist")
    return str(p)


def make_ref(spec: str, weights: str | None, classes: Sequence[str] | None, *, input_size: int | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             model_args: Mapping[str, Any] | None = None) -> dict[str, object]:
    """The model reference of the CLI's options (paths absolute, files checked; nothing built)."""
    kind, rest = split_spec(spec)
    if kind == "python" and rest.split(":", 1)[0].endswith(".py"):
        file, sep, func = rest.rpartition(":")
        if not sep or not func:
            raise UserError(f"--model {spec!r}: give the function too, python:FILE.py:FUNC")
        spec = f"python:{_absolute(file, 'model file')}:{func}"
    elif kind == "module":
        spec = f"module:{_absolute(rest, 'model file')}"
    elif kind == "hf":
        spec = f"hf:{_absolute(rest, 'model folder')}"
        if weights:
            raise UserError("hf: models bring their weights in the folder (save_pretrained); drop --weights")
    w = weights
    if w and w not in ("imagenet", "none"):
        w = _absolute(w, "weights file")
    if w == "imagenet" and kind != "timm":
        raise UserError(f"--weights imagenet is for built-in and timm: models; {kind}: models take a "
                        "state_dict file")
    return {"external": spec, "weights": None if w == "none" else w,
            "classes": list(classes) if classes is not None else None,
            "input_size": input_size, "mean": list(mean) if mean else None, "std": list(std) if std else None,
            "model_args": dict(model_args or {})}


# ---------------------------------------------------------------------------------------------
# building


def build(ref: Mapping[str, Any], dataset_classes: Sequence[str] | None = None) -> ExternalModel:
    """Build the model of a reference (module docstring); classes default to the dataset's."""
    spec = str(ref["external"])
    kind, rest = split_spec(spec)
    classes = tuple(ref["classes"]) if ref.get("classes") else None
    args = dict(ref.get("model_args") or {})
    weights = ref.get("weights")
    size = ref.get("input_size")
    mean = _triple(ref.get("mean"))
    std = _triple(ref.get("std"))
    recorded = ref.get("preprocessing")
    files: dict[str, str] = {}
    if kind == "hf":
        model, classes, pre, files = _build_hf(rest, classes)
    else:
        if classes is None and dataset_classes is not None:
            classes = tuple(dataset_classes)
        if kind == "timm":
            model, classes = build_timm(rest, classes, args, weights if weights == "imagenet" else None)
            pre = timm_preprocessing(model, size if isinstance(size, int) else None, mean, std)
        else:
            if kind == "module":
                model = load_module(rest)
                files["module"] = module_digest(model)
            else:
                model, file = _build_python(rest, args)
                if file:
                    files["source"] = sha256_file(file)
            if classes is None:
                raise UserError(f"{spec}: the model's class names are unknown (unlabeled data); give "
                                "--classes a,b,c or --classes-file FILE")
            pre = square_preprocessing(size if isinstance(size, int) else None, mean, std, spec)
        if isinstance(weights, str) and weights != "imagenet":
            load_fitting(model, weights, spec)
            files["weights"] = sha256_file(weights)
        elif weights is None and kind == "timm":
            logger.warning("%s without --weights: its weights are a seeded random initialisation, so the "
                           "maps explain an untrained network (give --weights PATH or imagenet)", spec)
    if isinstance(recorded, Mapping):
        pre = Preprocessing.from_dict(recorded)  # what the run used, whatever the library says today
    before = ref.get("files")
    if isinstance(before, Mapping) and dict(before) != files:
        changed = sorted(k for k in set(before) | set(files) if before.get(k) != files.get(k))
        raise UserError(f"{spec}: {', '.join(changed)} changed since the run (sha256 differs); the maps "
                        "would not be the run's - recompute, or restore the files")
    model.eval()
    out_ref: dict[str, object] = {**dict(ref), "classes": list(classes), "preprocessing": pre.to_dict(),
                                  "files": files}
    identity: dict[str, object] = {
        "external": spec, "files": files, "classes": list(classes), "model_args": args,
        "weights": "imagenet" if weights == "imagenet" else None, "preprocessing": pre.to_dict()}
    logger.info("%s: %d classes; preprocessing: %s", spec, len(classes), pre.describe())
    return ExternalModel(model, classes, pre, out_ref, identity)


def _triple(v: object) -> tuple[float, float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 3:
        return float(v[0]), float(v[1]), float(v[2])
    return None


def _build_python(target: str, args: Mapping[str, Any]) -> tuple[nn.Module, str | None]:
    """``FILE.py:FUNC`` or ``pkg.mod:FUNC`` -> ``FUNC(**args)`` (checked to be an nn.Module)."""
    where, sep, func_name = target.rpartition(":")
    if not sep or not where or not func_name:
        raise UserError(f"--model python:{target}: expected python:FILE.py:FUNC or python:pkg.mod:FUNC")
    file: str | None = None
    if where.endswith(".py"):
        path = Path(where).expanduser().absolute()
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        file = str(path)
        # a stable module name per file: pickling and deep copies of the model find its classes
        name = "xaidash_user_model_" + hashlib.sha1(file.encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise UserError(f"cannot import {path} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise UserError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
            _pickle_by_value(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise UserError(f"no Python module {where!r} ({exc}); give python:FILE.py:FUNC or a module on "
                            "sys.path") from None
        except Exception as exc:
            raise UserError(f"importing {where} failed: {type(exc).__name__}: {exc}") from None
    func = getattr(module, func_name, None)
    if func is None:
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(func_name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"{where} has no function {func_name!r}{hint}")
    if not callable(func):
        raise UserError(f"{where}:{func_name} is a {type(func).__name__}, not a function returning an "
                        "nn.Module")
    try:
        with seeded_init():
            model = func(**args)
    except Exception as exc:
        raise UserError(f"{where}:{func_name}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}:{func_name}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model, file


def load_module(path: str) -> nn.Module:
    """The ``nn.Module`` that ``torch.save(model, path)`` wrote (``module:FILE``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {p} does not exist")
    try:
        # a whole module is a pickle of its class, so torch's weights_only loader refuses it by design
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot load {p} as a module saved with torch.save(model, FILE): "
                        f"{type(exc).__name__}: {exc} (its classes must be importable here)") from None
    if isinstance(obj, Mapping):
        raise UserError(f"{p} holds a state_dict, not a whole module: give the code that builds the model, "
                        f"--model python:FILE.py:FUNC --weights {p}")
    if not isinstance(obj, nn.Module):
        raise UserError(f"{p} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def module_digest(model: nn.Module) -> str:
    """What identifies a whole module: its class, its structure (``repr``) and its state_dict.

    Not the file's bytes: cloudpickle gives each class defined in a notebook a random tracking id,
    so re-running the cell that defines the class writes different bytes for the same model.
    """
    h = hashlib.sha256(f"{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\n{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_module(model: nn.Module, folder: Path) -> Path:
    """Write ``model`` whole to ``folder/<module_digest>.pt`` for ``module:FILE``; returns the path.

    cloudpickle, not pickle: a class defined in a notebook (``__main__``) is stored by value, so a
    later process (the dashboard's explain page, a Ray worker) can load the file; importable
    classes stay references to their modules. The same model lands on the same file name.
    """
    import cloudpickle

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{module_digest(model)}.pt"
    if out.is_file():
        return out
    tmp = folder / f".{os.getpid()}.pt.tmp"
    try:
        torch.save(model, tmp, pickle_module=cloudpickle)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


#: the modules imported from the users' model files (``python:FILE.py:FUNC``) in this process
_FILE_MODULES: list[ModuleType] = []


def _pickle_by_value(module: ModuleType) -> None:
    """A model's classes would be pickled by reference to a module that exists only in this
    process (workers cannot import it): cloudpickle is told to pickle them by value instead."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    _FILE_MODULES.append(module)


def file_modules() -> tuple[ModuleType, ...]:
    """The modules of the users' model files imported here, for a pickler with its own registry of
    modules pickled by value (Ray ships the plan with its vendored copy of cloudpickle)."""
    return tuple(_FILE_MODULES)


def _build_hf(folder: str, classes: tuple[str, ...] | None
              ) -> tuple[nn.Module, tuple[str, ...], Preprocessing, dict[str, str]]:
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise UserError("hf: models need transformers (pip install 'xaidash[hf]')") from None
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"hf:{folder} is not a folder (give the folder save_pretrained wrote)")
    if not (path / "config.json").is_file():
        raise UserError(f"hf:{folder} has no config.json; save the model with model.save_pretrained(DIR)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        hf = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"hf:{folder}: cannot load an image-classification model: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = tuple(id2label[i] for i in sorted(id2label))
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if classes is not None:
        if len(classes) != len(names):
            raise UserError(f"hf:{folder} has {len(names)} labels in config.id2label, --classes lists "
                            f"{len(classes)}")
        if not generic and tuple(classes) != names:
            raise UserError(f"hf:{folder} names its classes {','.join(names)} in config.id2label; "
                            "--classes differs (drop it, or fix id2label)")
    else:
        classes = names
    files = {f.name: sha256_file(f) for f in sorted(path.iterdir())
             if f.is_file() and f.suffix in (".json", ".safetensors", ".bin")}
    return HFClassifier(hf), classes, hf_preprocessing(str(path)), files


