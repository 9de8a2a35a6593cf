"""The xaidash checkpoint: one file that carries everything ``compute`` needs about a model.

On disk it is ``torch.save`` of a plain dict (only str/int/float/bool/list/dict/tensors, so
it loads with ``torch.load(weights_only=True)`` - no arbitrary code runs when opening it)::

    format            "xaidash-checkpoint"   (what tells our files from any other .pt)
    version           1
    arch              e.g. "resnet18", or "timm:NAME" (train_args["model_args"]: its JSON kwargs)
    classes           ["cat", "dog", "horse"]
    preprocessing     {"input_size", "resize", "mean", "std"}
    small_input_stem  bool (ResNet CIFAR-style stem)
    state_dict        parameter name -> tensor
    train_args        the training arguments (plain types)
    metrics           final validation metrics
    versions          {"torch", "torchvision", "xaidash"}
    created           ISO-8601 UTC time

Writing is atomic (temporary file in the same directory, fsync, rename), so a killed
``train`` never leaves a half-written checkpoint under the final name. The file's sha256 is
recorded on load so a run can tell later whether the checkpoint changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xaidash.compute.model.architectures import ModelParts, build_model, check_arch, imagenet_class_names
from xaidash.compute.model.preprocessing import Preprocessing
from xaidash.errors import UserError

if TYPE_CHECKING:
    import torch

    from xaidash.compute.datasets.sources import Dataset

FORMAT = "xaidash-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A model and its metadata, in memory (see module docstring for the file layout)."""

    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    small_input_stem: bool
    state_dict: dict[str, torch.Tensor]
    train_args: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    path: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The dict that is saved (no path/sha256: they describe the file, not its content)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.arch,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "small_input_stem": bool(self.small_input_stem),
            "state_dict": self.state_dict,
            "train_args": self.train_args,
            "metrics": self.metrics,
            "versions": self.versions or current_versions(),
            "created": self.created or now_iso(),
        }


def now_iso() -> str:
    """Current UTC time, ISO-8601, seconds precision."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def current_versions() -> dict[str, str]:
    """torch / torchvision / xaidash versions, recorded for reproducibility."""
    import torch
    import torchvision

    from xaidash import __version__

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses.
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "xaidash": str(__version__)}


# sha256 of files keyed by (path, size, mtime): the dashboard verifies a run's checkpoint on every
# uploaded image, and a checkpoint is re-hashed only when the file changed
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (memoized per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).absolute()), st.st_size, st.st_mtime_ns)
    sha = _SHA_CACHE.get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        sha = _SHA_CACHE[key] = h.hexdigest()
    return sha


def check_writable(path: str | Path) -> Path:
    """Make sure ``path`` can be written (its directory exists or is created, and is writable)
    *before* a long training run, not after it. Returns the absolute path."""
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise UserError(f"--out {p} is a directory; give a file name such as {p / 'model.pt'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=".xaidash-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {p.parent}: {exc.strerror or exc}") from None
    return p


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    """Write ``ckpt`` to ``path`` atomically; sets ``ckpt.path`` and ``ckpt.sha256``."""
    import torch

    target = check_writable(path)
    payload = ckpt.to_dict()
    payload["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    ckpt.path = str(target)
    ckpt.sha256 = sha256_file(target)
    ckpt.versions = payload["versions"]
    ckpt.created = payload["created"]


def _not_ours(p: Path, why: str) -> UserError:
    return UserError(
        f"{p} is not an xaidash checkpoint ({why}); for a plain state_dict trained elsewhere use "
        "--model ARCH --weights PATH --classes a,b,c instead of --checkpoint"
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`. UserError if the file is missing,
    corrupt, or not an xaidash checkpoint (e.g. a plain state_dict)."""
    import torch

    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only refuses pickled objects: a full-model pickle or something else entirely.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # torch's message is long; the line naming the refused object is the useful one.
        useful = [ln for ln in lines if "Unsupported" in ln or "error" in ln.lower()]
        reason = (useful or lines or [type(exc).__name__])[0]
        raise _not_ours(p, f"cannot be read safely: {reason[:160]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise _not_ours(p, "no xaidash format marker")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{p} is an xaidash checkpoint of version {version}; this xaidash reads <= {VERSION}")
    try:
        ckpt = Checkpoint(
            arch=check_arch(str(obj["arch"])),
            classes=[str(c) for c in obj["classes"]],
            preprocessing=Preprocessing.from_dict(obj["preprocessing"]),
            small_input_stem=bool(obj.get("small_input_stem", False)),
            state_dict=dict(obj["state_dict"]),
            train_args=dict(obj.get("train_args") or {}),
            metrics=dict(obj.get("metrics") or {}),
            versions=dict(obj.get("versions") or {}),
            created=str(obj.get("created", "")),
            path=str(p),
            sha256=sha256_file(p),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p}: corrupt xaidash checkpoint ({type(exc).__name__}: {exc})") from None
    return ckpt


def model_from_checkpoint(ckpt: Checkpoint) -> ModelParts:
    """Rebuild the network from ``ckpt`` (eval mode) with the checkpoint's preprocessing."""
    import dataclasses

    from xaidash.compute.model.architectures import load_weights_into

    args = ckpt.train_args.get("model_args")
    parts = build_model(ckpt.arch, len(ckpt.classes), "none", ckpt.preprocessing.input_size,
                        small_input_stem=ckpt.small_input_stem,
                        model_args=json.loads(args) if isinstance(args, str) and args else None)
    load_weights_into(parts.model, ckpt.state_dict, ckpt.arch, ckpt.path or "checkpoint")
    parts.model.eval()
    return dataclasses.replace(parts, preprocessing=ckpt.preprocessing)


def checkpoint_from_weights(arch: str, weights: str, classes: list[str] | None) -> Checkpoint:
    """An in-memory checkpoint for ``--model ARCH --weights imagenet|PATH --classes ...``.

    ``weights="imagenet"``: the ImageNet classifier as is; ``classes`` may be omitted (the 1000
    ImageNet names are used) or must have 1000 entries. A path: a plain state_dict (or an
    xaidash checkpoint) of ``arch`` whose head has ``len(classes)`` outputs.
    """
    check_arch(arch)
    if weights in ("none", ""):
        raise UserError("--weights none has no trained classifier to explain; give imagenet or a path")
    if weights == "imagenet":
        names = imagenet_class_names()
        if classes and len(classes) != len(names):
            raise UserError(f"--weights imagenet has {len(names)} classes, --classes lists {len(classes)}")
        classes = list(classes) if classes else names
        parts = build_model(arch, len(classes), "imagenet")
        path, sha = None, None
    else:
        if not classes:
            raise UserError("--weights PATH needs --classes a,b,c (the class names, in output order)")
        p = Path(weights).expanduser().absolute()
        parts = build_model(arch, len(classes), str(p))
        path, sha = str(p), sha256_file(p)
    return Checkpoint(
        arch=arch,
        classes=list(classes),
        preprocessing=parts.preprocessing,
        small_input_stem=parts.small_input_stem,
        state_dict=parts.model.state_dict(),
        train_args={"weights": weights},
        metrics={},
        versions=current_versions(),
        created=now_iso(),
        path=path,
        sha256=sha,
    )


def check_classes(classes: Sequence[str], dataset: Dataset) -> None:
    """UserError when a model's classes do not match a labeled dataset's (unlabeled
    ``folder:`` data always fits: predictions need no labels)."""
    if dataset.classes is None or list(dataset.classes) == list(classes):
        return
    if sorted(dataset.classes) == sorted(classes):
        raise UserError(
            f"the dataset lists the checkpoint's classes in another order ({', '.join(dataset.classes)}); "
            f"list them as the checkpoint does: {','.join(classes)}"
        )
    raise UserError(
        f"checkpoint classes [{', '.join(classes)}] do not match the dataset's classes "
        f"[{', '.join(dataset.classes)}]; use the dataset the model was trained on (or a class subset "
        "SPEC with the same classes, e.g. cifar10:cat,dog,horse)"
    )
