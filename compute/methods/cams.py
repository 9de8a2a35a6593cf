"""Class-activation maps: the engine's one pass (CAM, Grad-CAM, Grad-CAM++, LayerCAM, XGradCAM,
HiResCAM, EigenCAM) and Score-CAM, exactly as in the papers.

Notation (``docs/METHODS.md``, "The methods"): ``A`` are the activations of the target layer,
shape ``[B, K, h, w]``; ``c`` is the target class of each image; ``g = ∂logit_c/∂A``. The map
formulas are pure functions of ``A``, ``g`` and ``c`` in :mod:`xaidash.compute.methods.cam_maps`
(re-exported here); most are ``map = N(f(Σ_k w_k · A_k))``, ``f`` ReLU (identity for CAM), ``N``
per-map min-max normalization to ``[0, 1]``.

Structure (after torch-cam's ``core.py``): the base classes own the weighted sum, the ReLU and the
normalization; each method is one small class. The target ("which score to explain") is separate
from the method, as in pytorch-grad-cam: the methods receive a tensor of class indices.
:class:`CamEngine` owns the hook (a context manager that always removes it in ``finally``) and
runs *one* forward and *one* backward pass per batch for all gradient methods (EigenCAM needs
only the forward). The backward pass stops at ``A`` - the network's parameters are never
differentiated. Score-CAM (its masked forwards) is defined here.

Any layer whose output can be made into ``[B, K, h, w]`` is a target: a transformer's tokens or a
Swin's channels-last map pass through a :class:`~xaidash.compute.model.layers.MapLayout` (prefix
tokens dropped, patch grid restored, channels first). That only re-indexes the tensor, so the
gradient is mapped the same way and every formula reads ``A`` and ``g`` unchanged.

Where we deliberately differ from torch-cam and pytorch-grad-cam is documented per class and in
``docs/METHODS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaidash.compute.methods.cam_maps import (
    CAM,
    BaseCAM,
    CamInputs,
    EigenCAM,
    GradCAM,
    GradCAMpp,
    HiResCAM,
    LayerCAM,
    WeightedCAM,
    XGradCAM,
    minmax_normalize,
    pass_methods,
)
from xaidash.compute.model.layers import MapLayout, output_tensor, replace_output
from xaidash.constants import GRADIENT_METHODS, METHODS, TARGET_KINDS
from xaidash.errors import UserError, choices_error

__all__ = [
    "CAM",
    "GRADIENT_METHODS",
    "METHODS",
    "TARGET_KINDS",
    "BaseCAM",
    "CamEngine",
    "CamInputs",
    "EigenCAM",
    "ForwardResult",
    "GradCAM",
    "GradCAMpp",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "ScoreCamStats",
    "XGradCAM",
    "minmax_normalize",
]

logger = logging.getLogger(__name__)


@dataclass
class ScoreCamStats:
    """Bookkeeping of the last Score-CAM call (for logs, tests and the run's ``scorecam_note``)."""

    images: int = 0
    channels: int = 0  # B * K
    constant_skipped: int = 0  # channels with max == min: weight 0, no forward
    not_selected: int = 0  # dropped by the ``max_channels`` approximation
    duplicates: int = 0  # non-constant channels whose normalized mask repeats another's
    forwards: int = 0  # masked images actually run through the network
    approximate: bool = False


class ScoreCAM(WeightedCAM):
    r"""Score-CAM (Wang et al. 2020, https://arxiv.org/abs/1910.01279; official implementation
    https://github.com/haofanwang/Score-CAM).

    .. math:: H_k = \frac{U(A_k) - \min U(A_k)}{\max U(A_k) - \min U(A_k)}, \qquad
              \alpha_k = \mathrm{softmax}\big(f(X \circ H_k)\big)_c, \qquad
              L^c = N\Big(\mathrm{ReLU}\big(\sum_k \alpha_k A_k\big)\Big)

    ``U`` is bilinear upsampling (``align_corners=False``) to the input size; channels with a
    constant ``U(A_k)`` are skipped (weight 0), as in the official code. ``X`` is the *normalized*
    input, so a masked-out pixel becomes 0 = the dataset mean. The softmax is over the classes of
    the masked input's logits (a probability, as in the paper and the official code). The map is
    kept at the layer's native resolution (bilinear upsampling is linear, so ``U`` of our map is
    the official full-resolution map before its ReLU).

    Exact speed-ups (same numbers as the one-channel-at-a-time loop, up to float rounding):
    masks of several images are run through the network together in batches of ``batch_size``
    under ``torch.inference_mode()``; constant channels (the common case after a ReLU) cost no
    forward; within an image, channels whose low-resolution min-max-normalized maps are
    bit-identical share one forward (an affine map commutes with bilinear upsampling and min-max
    is affine-invariant, so identical normalized low-res maps give identical ``H_k``).
    ``H_k`` is computed as ``N(U(N_lowres(A_k)))``, mathematically equal to ``N(U(A_k))``.

    ``max_channels`` (default ``None`` = exact) keeps only the top-N channels per image by mean
    activation; the others get weight 0. That is an approximation the caller must label.

    Deliberate differences from the peers: pytorch-grad-cam's ``ScoreCAM`` takes a softmax over
    *channels* of the raw target logits (and upsamples with ``align_corners=True``, no constant
    skip); torch-cam's takes a softmax over channels of ``logit_c(X∘M_k) - logit_c(X)`` with the
    normalization done at low resolution with an epsilon. Neither is the official weight.
    """

    name = "scorecam"

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        max_channels: int | None = None,
        channels_last: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_channels is not None and max_channels < 1:
            raise ValueError(f"max_channels must be >= 1 or None, got {max_channels}")
        self.model = model
        self.batch_size = batch_size
        self.max_channels = max_channels
        self.channels_last = channels_last
        self.stats = ScoreCamStats()

    def weights(self, inp: CamInputs) -> Tensor:
        if inp.inputs is None:
            raise ValueError("Score-CAM needs the normalized network input")
        x = inp.inputs
        acts = inp.activations
        b, k, h, w = acts.shape
        flat = acts.flatten(2)  # [B, K, hw]
        lo = flat.amin(-1, keepdim=True)
        hi = flat.amax(-1, keepdim=True)
        valid = (hi > lo).squeeze(-1)  # [B, K]; constant channels are skipped (official code)
        stats = ScoreCamStats(images=b, channels=b * k, constant_skipped=int((~valid).sum()))
        if self.max_channels is not None and self.max_channels < k:
            score = flat.mean(-1).masked_fill(~valid, float("-inf"))
            top = score.topk(self.max_channels, dim=1).indices
            keep = torch.zeros_like(valid).scatter_(1, top, True)
            stats.not_selected = int((valid & ~keep).sum())
            stats.approximate = stats.not_selected > 0
            valid &= keep

        weights = acts.new_zeros(b, k)
        b_idx, k_idx = valid.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            self.stats = stats
            return weights
        span = (hi - lo).squeeze(-1)[b_idx, k_idx].unsqueeze(-1)
        rows = (flat[b_idx, k_idx] - lo.squeeze(-1)[b_idx, k_idx].unsqueeze(-1)) / span  # [N, hw]
        # Exact dedup per image: prepend the image index (exact in fp32 below 2**24) so equal
        # masks of different images stay separate; unique() compares whole rows bit for bit.
        keyed = torch.cat([b_idx.unsqueeze(1).to(rows.dtype), rows], dim=1)
        uniq, inverse = torch.unique(keyed, dim=0, return_inverse=True)
        stats.duplicates = int(rows.shape[0] - uniq.shape[0])
        stats.forwards = int(uniq.shape[0])
        u_img = uniq[:, 0].long()
        u_masks = uniq[:, 1:].reshape(-1, 1, h, w)
        probs = self._masked_probs(x, u_masks, u_img, inp.targets)
        weights[b_idx, k_idx] = probs[inverse].to(weights.dtype)
        self.stats = stats
        return weights

    def _masked_probs(self, x: Tensor, masks: Tensor, img: Tensor, targets: Tensor) -> Tensor:
        """``softmax(f(X_img ∘ H))_c`` for each low-res normalized mask, in batches.

        The masked forwards run eager. torch.compile of the model was measured and does not pay
        off: ResNet-18 over 64 masked 224-px inputs on the 2-core AMX CPU, best of 5, gave
        fp32 0.96x (default) / 1.06x (freezing) and bf16 0.72x / 0.80x of eager. On top of that
        compiling costs 5-32 s, and every new batch shape (the last batch of an image) recompiles
        for another 6-18 s. Not measured on a GPU yet.
        """
        size = x.shape[-2:]
        out: list[Tensor] = []
        targets = targets.to(x.device)
        with torch.inference_mode():
            for start in range(0, masks.shape[0], self.batch_size):
                stop = start + self.batch_size
                # Upsample the whole chunk of masks in one call, then min-max on the
                # upsampled grid: that is H_k of the paper exactly.
                up = F.interpolate(masks[start:stop].to(x.dtype), size=size, mode="bilinear",
                                   align_corners=False)
                up = minmax_normalize(up)
                chunk_img = img[start:stop].to(x.device)
                batch = x[chunk_img] * up
                # NHWC input lets oneDNN pick its faster channels-last convolutions on CPU
                # (None = auto: CPU only; on CUDA it pays off with fp16/bf16 kernels).
                if self.channels_last or (self.channels_last is None and batch.device.type == "cpu"):
                    batch = batch.contiguous(memory_format=torch.channels_last)
                logits = self.model(batch).float()
                probs = logits.softmax(dim=1)
                out.append(probs.gather(1, targets[chunk_img].unsqueeze(1)).squeeze(1))
        # clone() turns the inference tensors into normal ones that may be used anywhere.
        return torch.cat(out).clone()


def folded_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` (eval mode) for forward-only bulk work: every BatchNorm that follows a
    convolution folded into it (``torch.fx.experimental.optimization.fuse``), weights in
    channels-last layout. Equal up to rounding; the caller measures the deviation (bf16 runs do).

    Measured on the 2-core EPYC (AVX512-BF16, no AMX), ResNet-18, 32 masked 224-px inputs under
    bf16 autocast: 6.9 ms/img with channels-last weights, 6.0 folded, vs 10.2 for the NCHW
    model and 15.8 in fp32. A model fx cannot trace (data-dependent control flow) is copied
    unfolded. Call it before a :class:`CamEngine` hooks the model: the copy has no hooks.
    """
    from torch.fx.experimental.optimization import fuse

    copy_: nn.Module
    try:
        copy_ = fuse(model.eval(), inplace=False)
    except Exception as e:  # any tracing failure means "cannot fold", not an error
        logger.info("cannot fold BatchNorm into the convolutions (%s); using an unfolded copy", e)
        import copy

        copy_ = copy.deepcopy(model).eval()
    if channels_last:
        copy_ = copy_.to(memory_format=torch.channels_last)
    return copy_


@dataclass
class ForwardResult:
    """Everything one :meth:`CamEngine.forward` produces for a batch."""

    logits: Tensor  # [B, C] fp32
    activations: Tensor  # [B, K, h, w] detached (after the layer's MapLayout)
    #: [B, K] global average pool of the activations, or [B, D] the head's input when the engine
    #: was given ``embedding_layer``
    embedding: Tensor
    # (method, target_kind) -> [B, h, w] in [0, 1]; "cam" absent when not applicable.
    maps: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    targets: dict[str, Tensor] = field(default_factory=dict)  # target_kind -> [B]


def _submodule(model: nn.Module, dotted: str) -> nn.Module:
    try:
        return model.get_submodule(dotted)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise choices_error("layer", dotted, names) from None


class CamEngine:
    """Hooks a model's target layer and computes the CAM family for whole batches.

    Use as a context manager; the forward hook is registered on enter and removed in ``finally``
    on exit, even when the body raises::

        with CamEngine(model.eval(), "layer4", "fc") as engine:
            res = engine.forward(x, ("cam", "gradcam", "gradcampp", "layercam"), true_labels=y)
            sc = engine.scorecam(x, res.activations, res.targets["pred"])

    One forward pass gives logits, activations ``A`` and the embedding (``GAP(A)``, or the input
    of ``embedding_layer`` - the classification head - when one is given); one backward
    pass of ``Σ_b logit_{b, c_b}`` gives ``∂logit_c/∂A`` for every image at once (exact per image
    because, in eval mode, images in a batch do not interact). The forward runs under
    ``torch.no_grad()`` and the hook switches gradient recording on only *after* ``A``: ``A`` is
    replaced by a fresh leaf, so autograd records just the head (for a ResNet: GAP + fc) and the
    backbone costs what an inference forward costs. Parameters are never differentiated (their
    ``.grad`` stays ``None``) and their ``requires_grad`` flags are left untouched.
    """

    def __init__(self, model: nn.Module, target_layer: str, linear_head: str | None, *,
                 layout: MapLayout | None = None, embedding_layer: str | None = None) -> None:
        self.model = model
        self.target_layer = target_layer
        self.linear_head = linear_head
        self.layout = layout or MapLayout()
        self.embedding_layer = embedding_layer
        self._layer = _submodule(model, target_layer)
        self._embedding_module = _submodule(model, embedding_layer) if embedding_layer else None
        self._pre_handle: torch.utils.hooks.RemovableHandle | None = None
        self._head_input: Tensor | None = None
        self._fc: nn.Linear | None = None
        if linear_head is not None:
            fc = _submodule(model, linear_head)
            if not isinstance(fc, nn.Linear):
                raise UserError(f"linear head {linear_head!r} is a {type(fc).__name__}, not nn.Linear")
            self._fc = fc
        self.cam_applicable: bool = self._fc is not None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._mode: str | None = None  # None: hook inactive; "capture" | "grad"
        self._captured: Tensor | None = None
        #: the methods of the one pass (all but CAM and Score-CAM), in canonical order
        self._methods: dict[str, BaseCAM] = {m.name: m for m in pass_methods()}
        self.last_scorecam_stats = ScoreCamStats()

    # -- hook lifecycle -------------------------------------------------------------------
    def __enter__(self) -> CamEngine:
        self._handle = self._layer.register_forward_hook(self._hook)
        if self._embedding_module is not None:
            self._pre_handle = self._embedding_module.register_forward_pre_hook(self._embedding_hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hook and drop captured tensors (idempotent)."""
        try:
            if self._handle is not None:
                self._handle.remove()
            if self._pre_handle is not None:
                self._pre_handle.remove()
        finally:
            self._handle = None
            self._pre_handle = None
            self._mode = None
            self._captured = None
            self._head_input = None

    def _embedding_hook(self, module: nn.Module, inputs: tuple[object, ...]) -> None:
        if self._mode is not None and inputs and isinstance(inputs[0], Tensor):
            self._head_input = inputs[0].detach()

    def _hook(self, module: nn.Module, inputs: tuple[object, ...], output: object) -> object:
        if self._mode is None:
            # Score-CAM / faithfulness forwards run with the hook attached but inactive.
            return None
        tensor = output_tensor(output)
        expect = 3 if self.layout.kind == "tokens" else 4
        if tensor is None or tensor.dim() != expect:
            raise UserError(
                f"target layer {self.target_layer!r} must output a {self.layout.kind} tensor of {expect} "
                f"dimensions, got {type(output).__name__}{tuple(tensor.shape) if tensor is not None else ''}"
            )
        leaf = tensor.detach()
        if self._mode == "grad":
            # Record autograd from here on only: the rest of the forward (the head) builds a
            # graph whose only leaf needing a gradient is A. The enclosing no_grad() restores
            # the caller's grad mode when the forward returns.
            torch.set_grad_enabled(True)
            leaf.requires_grad_(True)
        self._captured = leaf
        # Hand the network a copy: an in-place op after the target layer (e.g. DenseNet's
        # F.relu(inplace=True)) must neither corrupt A nor modify a leaf that requires grad.
        return replace_output(output, leaf.clone())

    # -- the gradient methods ---------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def forward(
        self,
        x: Tensor,
        methods: Sequence[str] = GRADIENT_METHODS,
        true_labels: Tensor | None = None,
    ) -> ForwardResult:
        """One forward (+ one backward when a gradient method is asked) for a batch.

        ``x`` is the normalized input ``[B, 3, H, W]``. Computes the methods of ``methods`` but
        ``scorecam`` (ignored here, see :meth:`scorecam`; EigenCAM needs no backward) for the target
        "pred" (argmax) and, when ``true_labels`` is given, also for "true" (all rows; only
        meaningful where pred != true). ``cam`` is absent when :attr:`cam_applicable` is False.
        """
        for m in methods:
            if m not in METHODS:
                raise choices_error("method", m, METHODS)
        if self._handle is None:
            raise RuntimeError("CamEngine must be used as a context manager (with CamEngine(...) as e:)")
        if self.model.training:
            raise RuntimeError("CamEngine needs the model in eval mode (call model.eval())")
        want = [m for m in self._methods if m in methods]
        want_grad = [m for m in want if self._methods[m].needs_gradients]
        if want_grad and torch.is_inference_mode_enabled():
            raise RuntimeError("Grad-CAM needs autograd: do not call CamEngine.forward under inference_mode")
        x = x.to(self._device)

        self._captured = None
        self._head_input = None
        self._mode = "grad" if want_grad else "capture"
        try:
            with torch.no_grad():
                logits = self.model(x)
            # set by the hooks during the forward (mypy narrowed them to None above)
            acts = cast("Tensor | None", self._captured)
            head_input = cast("Tensor | None", self._head_input)
        finally:
            self._mode = None
            self._captured = None
            self._head_input = None
        if acts is None:
            raise RuntimeError(f"target layer {self.target_layer!r} was not called during the forward pass")
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise RuntimeError("the model must return logits [B, C]")

        a = self.layout.to_map(acts.detach()).float()
        pooled = a.mean(dim=(2, 3))
        if self._embedding_module is not None:
            if head_input is None:
                raise RuntimeError(f"embedding layer {self.embedding_layer!r} was not called in the forward")
            embedding = head_input.flatten(1).float()
        else:
            embedding = pooled
        targets = {"pred": logits.detach().argmax(dim=1)}
        if true_labels is not None:
            targets["true"] = true_labels.to(device=logits.device, dtype=torch.long)

        do_cam = "cam" in methods and self._cam_ok(pooled, logits.detach())
        grads: dict[str, Tensor] = {}
        if want_grad:
            kinds = list(targets)
            for i, kind in enumerate(kinds):
                score = logits.gather(1, targets[kind].unsqueeze(1)).sum()
                # Per-image exact: Σ_b logit_{b,c_b} only depends on image b through row b.
                (g,) = torch.autograd.grad(score, acts, retain_graph=i < len(kinds) - 1)
                grads[kind] = self.layout.to_map(g).float()

        maps: dict[tuple[str, str], Tensor] = {}
        for kind, tgt in targets.items():
            inp = CamInputs(activations=a, targets=tgt, gradients=grads.get(kind))
            if do_cam:
                maps[("cam", kind)] = self._cam_method()(inp)
            for m in want:
                method = self._methods[m]
                if not method.needs_gradients and kind != "pred":
                    # class-agnostic (EigenCAM): the same map for every target, computed once
                    maps[(m, kind)] = maps[(m, "pred")]
                else:
                    maps[(m, kind)] = method(inp)
        return ForwardResult(
            logits=logits.detach().float(), activations=a, embedding=embedding, maps=maps, targets=targets
        )

    def _cam_method(self) -> CAM:
        assert self._fc is not None
        return CAM(self._fc.weight)

    def _cam_ok(self, embedding: Tensor, logits: Tensor) -> bool:
        """Check the GAP + linear assumption on this very batch; never emit a wrong CAM.

        If ``logits != fc(GAP(A))`` the declared head does not directly follow the pooled target
        layer (wrong ``linear_head`` name, extra layers in between): CAM is then switched off for
        the rest of the run with a warning.
        """
        if not self.cam_applicable or self._fc is None:
            return False
        fc = self._fc
        if fc.in_features != embedding.shape[1]:
            self._cam_off(f"{self.linear_head} has {fc.in_features} inputs, the layer {embedding.shape[1]}")
            return False
        with torch.no_grad():
            expect = F.linear(embedding.to(fc.weight.dtype), fc.weight, fc.bias).float()
        if expect.shape != logits.shape:
            self._cam_off(f"{self.linear_head} gives {tuple(expect.shape)}, the model {tuple(logits.shape)}")
            return False
        err = (expect - logits.float()).abs().max().item() if logits.numel() else 0.0
        if err > 1e-3 * (1.0 + logits.abs().max().item()):
            self._cam_off(f"logits differ from {self.linear_head}(GAP(A)) by {err:.3g}")
            return False
        return True

    def _cam_off(self, why: str) -> None:
        logger.warning("CAM not applicable: %s; the head is not GAP + one linear layer", why)
        self.cam_applicable = False

    # -- Score-CAM ----------------------------------------------------------------------------
    def scorecam(
        self,
        x: Tensor,
        activations: Tensor,
        targets: Tensor,
        batch_size: int = 256,
        max_channels: int | None = None,
        channels_last: bool | None = None,
        masked_model: nn.Module | None = None,
    ) -> Tensor:
        """Score-CAM maps ``[B, h, w]`` in ``[0, 1]`` (see :class:`ScoreCAM`).

        ``x`` is the *normalized* input (masked pixels become the dataset mean, 0);
        ``activations`` are ``ForwardResult.activations`` of the same ``x``. Batched across
        channels and images; identical normalized masks are computed once. ``max_channels``
        switches on the (labelled) top-N approximation; the default is exact. ``masked_model``
        runs the masked forwards instead of the engine's model (e.g. :func:`folded_copy` for
        bf16). Statistics of the call are left in :attr:`last_scorecam_stats`.
        """
        if self.model.training:
            raise RuntimeError("Score-CAM needs the model in eval mode (call model.eval())")
        dev = self._device
        method = ScoreCAM(masked_model or self.model, batch_size=batch_size, max_channels=max_channels,
                          channels_last=channels_last)
        prev, self._mode = self._mode, None  # the hook must not capture the masked forwards
        try:
            a = activations.detach().to(dev).float()
            maps = method(CamInputs(activations=a, targets=targets.to(dev), inputs=x.to(dev)))
        finally:
            self._mode = prev
        self.last_scorecam_stats = method.stats
        return maps
