"""The CAM target layer of any classifier: found (or checked when named) by one probe forward.

A layer's output becomes the map ``A`` of the CAM methods (``[B, K, h, w]``) through a
:class:`MapLayout`:

* ``nchw``: a convolutional map ``[B, C, h, w]`` as it is;
* ``nhwc``: channels last ``[B, h, w, C]`` (timm's Swin stages and norms), permuted;
* ``tokens``: a transformer's ``[B, T, C]``: the prefix tokens (class, distillation, register
  tokens: timm's ``num_prefix_tokens``, the patch grid of the HF config) are dropped and the
  ``h·w`` patch tokens reshaped to the patch grid, channels first.

Slicing, reshaping and permuting only re-index the tensor, so ``∂y/∂A`` is the same mapping
applied to ``∂y/∂output``: the gradient methods keep their formulas on ``A``.

:func:`discover` runs the model once on a seeded random batch with a hook on every module and
chooses, when no layer is named:

* the last module whose output is a map (``h, w >= 2``) on the way to the logits - for a CNN its
  last convolutional block, for a Swin the last NHWC stage (or the norm after it);
* when that map is made of tokens (ViT, DeiT, BEiT): the last transformer block's output, or,
  when the patch tokens of that output do not reach the logits (a class-token head reads only
  the class token after the last block, so their gradient is exactly zero and every gradient map
  would be blank), the last block's attention input - the first module inside the block with
  the block's token shape (timm's ``norm1``, HF's ``layernorm_before``), where the patch tokens
  still mix into the class token. That is the layer pytorch-grad-cam documents for ViTs.

Modules that hand their input through unchanged (``Identity``, dropout in eval) and modules
called more than once per forward are never chosen. The probe also finds the classification
head (the last ``nn.Linear`` whose output is the logits): the run's embeddings are its input,
and CAM applies only when the logits equal ``head(GAP(A))`` on the probe.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from xaidash.errors import UserError

if TYPE_CHECKING:
    from xaidash.compute.model.architectures import ModelParts

logger = logging.getLogger(__name__)

LAYOUTS = ("nchw", "nhwc", "tokens")
#: seed of the probe batch (any fixed value: the choice must not depend on the run)
PROBE_SEED = 7
#: at most this many prefix tokens are guessed when the model does not say its patch grid
MAX_GUESSED_PREFIX = 8


@dataclass(frozen=True)
class MapLayout:
    """How a layer's output becomes ``A`` ``[B, K, h, w]`` (see the module docstring)."""

    kind: str = "nchw"
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def to_map(self, t: Tensor) -> Tensor:
        """``t`` (the layer's output, or its gradient) as ``[B, K, h, w]``."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        assert self.grid is not None
        h, w = self.grid
        patches = t[:, self.prefix_tokens:, :]
        return patches.reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.kind}
        if self.kind == "tokens":
            d.update(prefix_tokens=self.prefix_tokens, grid=list(self.grid or ()))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MapLayout:
        if not d:
            return cls()
        grid = d.get("grid")
        return cls(str(d.get("kind", "nchw")), int(d.get("prefix_tokens", 0)),
                   (int(grid[0]), int(grid[1])) if grid else None)

    def describe(self) -> str:
        if self.kind == "tokens":
            assert self.grid is not None
            return (f"tokens: {self.prefix_tokens} prefix token(s) dropped, {self.grid[0]}x{self.grid[1]} "
                    "patch grid")
        return "channels-last map, permuted" if self.kind == "nhwc" else "spatial map"


@dataclass(frozen=True)
class TargetLayer:
    """The chosen layer, how its output becomes ``A``, and what the head makes possible."""

    name: str
    layout: MapLayout
    channels: int
    height: int
    width: int
    #: the ``nn.Linear`` that gives the logits (the embeddings are its input); None: not found
    head: str | None
    #: ``head`` when the logits are ``head(GAP(A))`` (CAM applies), else None
    linear_head: str | None
    reason: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: whose input the embeddings are: ``head`` for models a user brings; None = ``GAP(A)``, which
    #: the built-in architectures have always stored (the head's input for most of them)
    embedding_layer: str | None = None

    def to_dict(self) -> dict[str, object]:
        """What the run records (``config_json["model"]["target"]``)."""
        return {"name": self.name, "layout": self.layout.to_dict(), "map": [self.channels, self.height,
                                                                             self.width],
                "head": self.head, "linear_head": self.linear_head, "embedding_layer": self.embedding_layer,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetLayer:
        """Inverse of :meth:`to_dict`."""
        k, h, w = (int(v) for v in d["map"])
        return cls(str(d["name"]), MapLayout.from_dict(d.get("layout")), k, h, w,
                   _opt(d.get("head")), _opt(d.get("linear_head")), reason=str(d.get("reason", "")),
                   embedding_layer=_opt(d.get("embedding_layer")))


def _opt(v: object) -> str | None:
    return None if v is None else str(v)


def target_for(parts: ModelParts, num_classes: int, named: str | None) -> TargetLayer:
    """The run's target layer for a built model.

    Built-in architectures keep their table (default layer, the linear head CAM uses there, and
    ``GAP(A)`` embeddings), with the layer checked by the probe; any other model gets the layer
    :func:`discover` finds or checks, CAM where the probe shows ``logits = head(GAP(A))`` and
    the head's input as embeddings.
    """
    if parts.target_layer:
        name = named or parts.target_layer
        found = discover(parts.model, parts.preprocessing.input_size, num_classes, named=name,
                         what=parts.arch or "the model")
        linear = parts.linear_head if name == parts.target_layer else None
        why = "the architecture's default layer" if named is None else "named with --target-layer"
        cam = ("CAM applies: GAP + one linear head" if linear else
               "CAM not applicable: the head is not GAP + one linear layer on this layer")
        chosen = dataclasses.replace(found, linear_head=linear, reason=f"{why}; {cam}", embedding_layer=None)
    else:
        found = discover(parts.model, parts.preprocessing.input_size, num_classes, named=named,
                         what=parts.arch or "the model")
        chosen = dataclasses.replace(found, embedding_layer=found.head)
    logger.info("target layer %s (%s; A = %dx%dx%d): %s", chosen.name, chosen.layout.describe(),
                chosen.channels, chosen.height, chosen.width, chosen.reason)
    for note in chosen.notes:
        logger.warning("%s", note)
    return chosen


def output_tensor(output: object) -> Tensor | None:
    """The tensor a module returns: itself, or the first element of a tuple (HF layers)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def replace_output(output: object, new: Tensor) -> object:
    """``output`` with its tensor (see :func:`output_tensor`) replaced by ``new``."""
    if isinstance(output, Tensor):
        return new
    assert isinstance(output, (tuple, list))
    rest = list(output[1:])
    return type(output)([new, *rest]) if isinstance(output, list) else (new, *rest)


def resolve_layer_name(model: nn.Module, name: str) -> str:
    """``name`` if the model has it; UserError listing the nearest names otherwise."""
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return name
    # wrapped models (HF: the wrapper's ``hf``) also accept the name inside the wrapper
    for n in names:
        if n.endswith("." + name) and n.split(".", 1)[1] == name:
            return str(n)
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
    shown = close or [n for n in names if "." not in n]
    raise UserError(f"no layer {name!r} in the model; nearest names: {', '.join(shown)} "
                    f"({len(names)} layers in all; dotted paths allowed)")


def logits_of(output: object) -> Tensor:
    """A model's logits: the tensor it returns (or ``.logits`` of a HF output)."""
    t = getattr(output, "logits", output)
    t = output_tensor(t)
    if t is None:
        raise UserError(f"the model returns a {type(output).__name__}, not a logits tensor [B, classes]")
    return t


@dataclass
class _Seen:
    order: int
    calls: int
    shape: tuple[int, ...]
    passthrough: bool


def _probe_shapes(model: nn.Module, x: Tensor) -> tuple[dict[str, _Seen], Tensor]:
    seen: dict[str, _Seen] = {}
    counter = iter(range(1 << 30))
    handles = []

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            t = output_tensor(output)
            prev = seen.get(name)
            calls = 1 + (prev.calls if prev else 0)
            first_in = inputs[0] if inputs else None
            seen[name] = _Seen(next(counter), calls, tuple(t.shape) if t is not None else (),
                               t is not None and t is first_in)
        return fn

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            logits = logits_of(model(x))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the model fails on a {x.shape[-1]}x{x.shape[-2]} input: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def _patch_grid(model: nn.Module, tokens: int) -> tuple[int, tuple[int, int], str]:
    """``(prefix tokens, patch grid (h, w), where it came from)`` for ``tokens`` tokens; prefix -1
    when no grid fits."""
    for m in model.modules():
        grid = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        if isinstance(grid, (tuple, list)) and len(grid) == 2:
            gh, gw = int(grid[0]), int(grid[1])
            if tokens >= gh * gw:
                return tokens - gh * gw, (gh, gw), "timm's patch grid"
        cfg = getattr(m, "config", None)
        img, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
        if isinstance(img, int) and isinstance(patch, int) and patch > 0:
            g = img // patch
            if tokens >= g * g:
                return tokens - g * g, (g, g), "the HF config's image and patch size"
    for p in range(0, MAX_GUESSED_PREFIX + 1):
        side = math.isqrt(tokens - p) if tokens > p else 0
        if side >= 2 and side * side == tokens - p:
            return p, (side, side), "the square patch grid"
    return -1, (0, 0), ""


def _classify(shape: tuple[int, ...], model: nn.Module, batch: int) -> tuple[MapLayout, int, int, int] | None:
    """The layout of an output of ``shape`` and its ``(K, h, w)``; None when it is no map."""
    if len(shape) < 3 or shape[0] != batch:
        return None
    if len(shape) == 4:
        _, a, b, c = shape
        nchw, nhwc = b == c and b >= 2, a == b and a >= 2
        if nhwc and (not nchw or getattr(model, "output_fmt", "") == "NHWC"):
            return MapLayout("nhwc"), c, a, b
        if nchw:
            return MapLayout("nchw"), a, b, c
        return None
    if len(shape) == 3:
        _, t, c = shape
        p, (h, w), _ = _patch_grid(model, t)
        if p < 0:
            return None
        if h < 2 or w < 2:
            return None
        return MapLayout("tokens", p, (h, w)), c, h, w
    return None


def _blocks(model: nn.Module) -> Iterator[tuple[str, list[str]]]:
    """Every stack of transformer/CNN blocks: a ModuleList/Sequential whose children (at least
    one) are all of one class, with the dotted names of its children."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            kids = list(m.named_children())
            if kids and len({type(k) for _, k in kids}) == 1:
                yield name, [f"{name}.{n}" if name else n for n, _ in kids]


def _capture(model: nn.Module, name: str, x: Tensor, layout: MapLayout,
             grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(A, logits, ∂Σlogits/∂A or None)`` of one forward captured at ``name``."""
    layer = model.get_submodule(name)
    box: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> object:
        t = output_tensor(output)
        assert t is not None
        leaf = t.detach().requires_grad_(grad)
        box["a"] = leaf
        return replace_output(output, leaf * 1.0 if grad else leaf)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            logits = logits_of(model(x))
            g = torch.autograd.grad(logits.sum(), box["a"])[0] if grad else None
    finally:
        handle.remove()
    a = layout.to_map(box["a"].detach())
    return a, logits.detach(), (layout.to_map(g) if g is not None else None)


def _head_input(model: nn.Module, head: str, x: Tensor) -> Tensor:
    box: dict[str, Tensor] = {}

    def pre(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        box["x"] = inputs[0].detach()

    handle = model.get_submodule(head).register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return box["x"].flatten(1)


def _cam_applies(model: nn.Module, head: str | None, a: Tensor, logits: Tensor) -> tuple[bool, str]:
    if head is None:
        return False, "no nn.Linear head gives the logits"
    fc = model.get_submodule(head)
    assert isinstance(fc, nn.Linear)
    if fc.in_features != a.shape[1]:
        return False, f"{head} takes {fc.in_features} features, the map has {a.shape[1]} channels"
    with torch.no_grad():
        expect = fc(a.mean(dim=(2, 3)).to(fc.weight.dtype)).float()
    err = float((expect - logits.float()).abs().max())
    if err > 1e-3 * (1.0 + float(logits.abs().max())):
        return False, f"the logits are not {head}(GAP(A)) (they differ by {err:.3g})"
    return True, f"the logits are {head}(GAP(A))"


def probe_input(model: nn.Module, input_size: int, batch: int = 2) -> Tensor:
    """The seeded random batch of the probe, on the model's device."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    p = next(model.parameters(), None)
    x = torch.randn(batch, 3, input_size, input_size, generator=gen)
    return x.to(p.device if p is not None else "cpu")


def discover(model: nn.Module, input_size: int, num_classes: int, named: str | None = None,
             what: str = "the model") -> TargetLayer:
    """The target layer of ``model`` (eval mode): ``named``, checked, or found (module docstring).

    UserError, before any work, when the logits do not have ``num_classes`` columns, the named
    layer does not exist or gives no map, or no layer gives one.
    """
    was_training = model.training
    model.eval()
    try:
        return _discover(model, input_size, num_classes, named, what)
    finally:
        model.train(was_training)


def _discover(model: nn.Module, input_size: int, num_classes: int, named: str | None,
              what: str) -> TargetLayer:
    x = probe_input(model, input_size)
    seen, logits = _probe_shapes(model, x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise UserError(f"{what} returns {tuple(logits.shape)} for a batch of {x.shape[0]}; it must return "
                        "logits [batch, classes]")
    if logits.shape[1] != num_classes:
        raise UserError(f"{what} gives {logits.shape[1]} logits per image, but there are {num_classes} "
                        "classes; give --classes (or --classes-file) with one name per output")
    modules = dict(model.named_modules())
    linear_outs = [n for n, s in seen.items() if isinstance(modules[n], nn.Linear)
                   and s.shape == tuple(logits.shape)]
    head = max(linear_outs, key=lambda n: seen[n].order) if linear_outs else None
    end = seen[head].order if head else 1 << 30

    notes: list[str] = []
    if named is not None:
        name = resolve_layer_name(model, named)
        s = seen.get(name)
        if s is None:
            raise UserError(f"layer {name!r} is not called when {what} runs; name a layer on the way to "
                            "the logits")
        found = _classify(s.shape, model, x.shape[0])
        if found is None:
            raise UserError(f"layer {name!r} outputs {s.shape}, which is no map: give a layer with a "
                            "[B, C, h, w] map, [B, h, w, C] (Swin) or [B, tokens, C] (ViT) output")
        if s.calls > 1:
            notes.append(f"{name} runs {s.calls} times per forward; its last call is used")
        reason = "named with --target-layer"
    else:
        cands = [(n, s) for n, s in seen.items() if s.calls == 1 and not s.passthrough and s.order < end
                 and _classify(s.shape, model, x.shape[0]) is not None]
        if not cands:
            raise UserError(f"no layer of {what} outputs a map (B, C, h, w with h, w >= 2, or ViT/Swin "
                            "tokens) at this input size; give --target-layer NAME or a larger --input-size")
        name, s = max(cands, key=lambda c: c[1].order)
        found = _classify(s.shape, model, x.shape[0])
        assert found is not None
        reason = f"the last module whose output is a map ({found[0].kind}) on the way to the head"
        if found[0].kind == "tokens":
            name, reason = _token_layer(model, seen, name, x, found[0], s.shape, end)
            found = _classify(seen[name].shape, model, x.shape[0])
            assert found is not None
    layout, k, h, w = found
    a, logits, _ = _capture(model, name, x, layout, grad=False)
    ok, why = _cam_applies(model, head, a, logits)
    target = TargetLayer(name, layout, k, h, w, head, head if ok else None,
                         reason=f"{reason}; CAM {'applies' if ok else 'not applicable'}: {why}",
                         notes=tuple(notes))
    return target


def _token_layer(model: nn.Module, seen: dict[str, _Seen], last: str, x: Tensor, layout: MapLayout,
                 shape: tuple[int, ...], end: int) -> tuple[str, str]:
    """The transformer rule for a token model whose last token output is ``last``."""
    stacks = [(n, kids) for n, kids in _blocks(model)
              if kids[-1] in seen and seen[kids[-1]].shape == shape and seen[kids[-1]].order < end]
    if not stacks:
        return last, "the last module with a token output before the head (no block stack found)"
    _, kids = max(stacks, key=lambda st: seen[st[1][-1]].order)
    block = kids[-1]
    _, _, g = _capture(model, block, x, layout, grad=True)
    assert g is not None
    if bool((g != 0).any()):
        return block, "the last transformer block's token output"
    inner = [n for n, s in seen.items() if n.startswith(block + ".") and s.shape == shape and s.calls == 1
             and not s.passthrough]
    if not inner:
        return block, "the last transformer block's token output (its patch tokens get no gradient)"
    first = min(inner, key=lambda n: seen[n].order)
    return first, ("the last transformer block's attention input: the patch tokens of the block's output "
                   "do not reach the logits (class-token head)")


def embedding_of(model: nn.Module, head: str, x: Tensor) -> Tensor:
    """The input of ``head`` for ``x`` (tests and tools; the engine captures it during its forward)."""
    return _head_input(model, head, x)
