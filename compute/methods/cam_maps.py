"""The maps of the engine's one pass: CAM, Grad-CAM, Grad-CAM++, LayerCAM, XGradCAM, HiResCAM, EigenCAM.

Notation (``docs/METHODS.md``, "The methods"): ``A`` are the activations of the target layer, shape
``[B, K, h, w]``; ``c`` is the target class of each image; ``g = ∂logit_c/∂A``. Every method is
``map = N(f(raw))`` where ``raw`` is ``[B, h, w]``, ``f`` is ReLU (identity for CAM) and ``N`` is
per-map min-max normalization to ``[0, 1]`` (a constant map, e.g. all zeros after ReLU, becomes all
zeros rather than NaN). For most methods ``raw = Σ_k w_k · A_k`` with a per-channel weight ``w``
that defines the method (:class:`WeightedCAM`); LayerCAM and HiResCAM weight each pixel of each
channel, EigenCAM projects ``A`` on its first singular vector (:class:`BaseCAM`'s ``raw_map``).

Structure (after torch-cam's ``core.py``): the base owns the ReLU and the normalization (and, for
the weighted ones, the sum); each method is one small class. These are pure functions of ``A``,
``g`` and ``c``; :class:`~xaidash.compute.methods.cams.CamEngine` (``cams.py``) produces those from
one forward and one backward pass per batch, and Score-CAM (its masked forwards) lives there too.
Where we deliberately differ from torch-cam and pytorch-grad-cam is documented per class below
and in ``docs/METHODS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CAM",
    "BaseCAM",
    "CamInputs",
    "EigenCAM",
    "GradCAM",
    "GradCAMpp",
    "HiResCAM",
    "LayerCAM",
    "WeightedCAM",
    "XGradCAM",
    "minmax_normalize",
    "pass_methods",
    "weighted_sum",
]


def minmax_normalize(maps: Tensor) -> Tensor:
    """Min-max normalize each map over its last two (spatial) dimensions to ``[0, 1]``.

    ``N(M) = (M - min M) / (max M - min M)``. A constant map (``max == min``, typically all zeros
    after ReLU) becomes all zeros: there is no evidence to show, and a NaN would poison the store
    and every aggregate computed from it. Unlike torch-cam / pytorch-grad-cam we add no epsilon
    to the denominator, so the maximum is exactly 1.
    """
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    ok = span > 0
    # torch.where evaluates both branches: divide by 1 where the span is 0 to avoid 0/0.
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


@dataclass
class CamInputs:
    """What a weight computation may look at, for one target kind.

    activations: ``A`` ``[B, K, h, w]`` fp32, detached.
    targets: ``c`` ``[B]`` class indices.
    gradients: ``g = ∂logit_c/∂A`` ``[B, K, h, w]``; ``None`` for gradient-free methods.
    inputs: the normalized network input ``[B, 3, H, W]``; only Score-CAM needs it.
    """

    activations: Tensor
    targets: Tensor
    gradients: Tensor | None = None
    inputs: Tensor | None = None


class BaseCAM:
    """Base of every method: ``map = N(f(raw))`` with ``raw = raw_map(A, g, c)`` ``[B, h, w]``.

    ``f`` is ReLU (identity where :attr:`relu` is False) and ``N`` :func:`minmax_normalize`. Most
    methods are a weighted channel sum and derive from :class:`WeightedCAM`; the ones that weight
    every pixel of every channel (LayerCAM, HiResCAM) or project the activations (EigenCAM)
    override :meth:`raw_map` itself.
    """

    name: ClassVar[str]
    #: Apply ReLU before normalization (every method except CAM).
    relu: ClassVar[bool] = True
    #: Needs ``g``: the engine runs its one backward pass only when an asked method does.
    needs_gradients: ClassVar[bool] = False

    def raw_map(self, inp: CamInputs) -> Tensor:
        """The map before ReLU and normalization, ``[B, h, w]``."""
        raise NotImplementedError

    def __call__(self, inp: CamInputs) -> Tensor:
        """The normalized maps ``[B, h, w]`` in ``[0, 1]``."""
        raw = self.raw_map(inp)
        if self.relu:
            raw = F.relu(raw)
        return minmax_normalize(raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightedCAM(BaseCAM):
    """``map = N(f(Σ_k w_k · A_k))``: subclasses override only :meth:`weights` (``[B, K]``).

    The weighted sum is one ``einsum`` over ``K`` for the whole batch.
    """

    def weights(self, inp: CamInputs) -> Tensor:
        raise NotImplementedError

    def raw_map(self, inp: CamInputs) -> Tensor:
        return weighted_sum(inp.activations, self.weights(inp))

    def combine(self, activations: Tensor, weights: Tensor) -> Tensor:
        """``N(f(Σ_k w_k A_k))`` for weights ``[B, K]`` and activations ``[B, K, h, w]``."""
        raw = weighted_sum(activations, weights)
        if self.relu:
            raw = F.relu(raw)
        return minmax_normalize(raw)


def weighted_sum(activations: Tensor, weights: Tensor) -> Tensor:
    """``Σ_k w_k A_k`` ``[B, h, w]`` for weights ``[B, K]`` and activations ``[B, K, h, w]``."""
    return torch.einsum("bk,bkhw->bhw", weights.to(activations.dtype), activations)


class CAM(WeightedCAM):
    r"""Class Activation Mapping (Zhou et al. 2016, https://arxiv.org/abs/1512.04150).

    .. math:: L^c = N\Big(\sum_k W_{c,k} A_k\Big)

    with ``W`` the weight matrix of the linear layer that directly follows global average pooling
    of ``A``. No ReLU (the paper shows the raw class activation map). Only defined for a
    GAP + single-linear head; :class:`CamEngine` reports it "not applicable" otherwise instead of
    producing a wrong map. The bias adds a constant and vanishes in the normalization.

    torch-cam's ``CAM`` computes the same map (its docstring mentions a ReLU, its code applies none).
    """

    name = "cam"
    relu = False

    def __init__(self, fc_weight: Tensor) -> None:
        # [C, K]; a 1x1-conv head would be [C, K, 1, 1].
        self.fc_weight = fc_weight.detach().reshape(fc_weight.shape[0], -1)

    def weights(self, inp: CamInputs) -> Tensor:
        return self.fc_weight.to(inp.activations.dtype)[inp.targets]


class GradCAM(WeightedCAM):
    r"""Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

    .. math:: w_k = \frac{1}{hw}\sum_{i,j} \frac{\partial y^c}{\partial A_k(i,j)}, \qquad
              L^c = N\Big(\mathrm{ReLU}\big(\sum_k w_k A_k\big)\Big)

    with ``y^c`` the pre-softmax logit. Same map as torch-cam's and pytorch-grad-cam's ``GradCAM``
    (they normalize with an epsilon in the denominator; we do not).
    """

    name = "gradcam"
    needs_gradients = True

    def weights(self, inp: CamInputs) -> Tensor:
        assert inp.gradients is not None
        return inp.gradients.mean(dim=(2, 3))


class GradCAMpp(WeightedCAM):
    r"""Grad-CAM++ (Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063, Eq. 19).

    .. math:: \alpha_k^{ij} = \frac{g_k(i,j)^2}{2\,g_k(i,j)^2 + \sum_{a,b} A_k(a,b)\, g_k(i,j)^3},
              \qquad w_k = \sum_{i,j} \alpha_k^{ij}\,\mathrm{ReLU}(g_k(i,j)),
              \qquad L^c = N\Big(\mathrm{ReLU}\big(\sum_k w_k A_k\big)\Big)

    with ``g = ∂y^c/∂A``. Eq. 19 is derived for an exponential score ``exp(S_c)``, whose higher
    derivatives reduce to powers of the first one; the powers-of-``g`` form is the canonical
    definition here. ``α = 0`` where ``g = 0`` (0/0 in the formula) and where the denominator
    vanishes.

    Deliberate differences from the peers (see ``docs/METHODS.md``): pytorch-grad-cam adds
    ``eps = 1e-6`` to the denominator, which is *not* negligible when ``g² ≈ 1e-6`` (a ResNet
    head gives ``g = W/(hw) ≈ 1e-3``). torch-cam 0.5's ``GradCAMpp`` intends the same formula,
    but divides a boolean-indexed copy in place (``alpha[mask].div_(...)``), so the division is
    lost and it effectively uses ``α = g²``, i.e. ``w_k = Σ g²·ReLU(g)``.
    """

    name = "gradcampp"
    needs_gradients = True

    def weights(self, inp: CamInputs) -> Tensor:
        assert inp.gradients is not None
        g = inp.gradients
        g2 = g * g
        # Σ_ab A_k(a, b) per channel, broadcast over (i, j).
        a_sum = inp.activations.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + a_sum * (g2 * g)
        ok = (g != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g))
        return (alpha * F.relu(g)).sum(dim=(2, 3))


class LayerCAM(BaseCAM):
    r"""LayerCAM (Jiang et al. 2021, IEEE TIP 30, https://doi.org/10.1109/TIP.2021.3089943).

    .. math:: \hat A_k(i,j) = \mathrm{ReLU}\big(g_k(i,j)\big)\,A_k(i,j), \qquad
              L^c = N\Big(\mathrm{ReLU}\big(\sum_k \hat A_k\big)\Big)

    Each pixel of each channel is weighted by its own positive gradient instead of a channel
    mean, so the map keeps detail where the gradient varies over space. The paper's extra
    ``tanh(2·M / max M)`` rescaling is only for fusing the maps of several (shallow) layers and is
    not applied: one target layer here, and neither peer applies it to a single layer's map
    (torch-cam only in ``fuse_cams``). Same map as pytorch-grad-cam's and torch-cam's ``LayerCAM``
    (they normalize with an epsilon in the denominator; we do not).
    """

    name = "layercam"
    needs_gradients = True

    def raw_map(self, inp: CamInputs) -> Tensor:
        assert inp.gradients is not None
        return (F.relu(inp.gradients) * inp.activations).sum(dim=1)


class XGradCAM(WeightedCAM):
    r"""XGrad-CAM (Fu et al. 2020, BMVC, https://arxiv.org/abs/2008.02312).

    .. math:: w_k = \sum_{i,j} \frac{A_k(i,j)}{\sum_{a,b} A_k(a,b)}\, g_k(i,j), \qquad
              L^c = N\Big(\mathrm{ReLU}\big(\sum_k w_k A_k\big)\Big)

    The gradient averaged with the channel's own activations as weights (derived by the paper
    from its "sensitivity" and "conservation" axioms). Where a channel's sum ``Σ_ab A_k(a,b)`` is
    exactly 0 its weight is 0: after a ReLU that channel is all zeros and contributes nothing to
    the map whatever its weight; on a signed layer (transformer tokens) a zero-sum channel has no
    defined weight, and 0 is the choice that neither invents nor amplifies evidence. Signed
    channels whose sum is merely *small* get large weights - that is the formula, kept as is.

    pytorch-grad-cam's ``XGradCAM`` adds ``eps = 1e-7`` to the denominator instead: the same map
    wherever ``|Σ A_k| >> 1e-7`` (every channel of a ReLU layer that is not all zero), different
    for signed channels whose sum is near 0 (theirs then gives a huge weight, ours 0 only at
    exactly 0). torch-cam's ``XGradCAM`` divides by ``Σ A_k + 1e-8``.
    """

    name = "xgradcam"
    needs_gradients = True

    def weights(self, inp: CamInputs) -> Tensor:
        assert inp.gradients is not None
        a = inp.activations
        s = a.sum(dim=(2, 3))  # [B, K]
        ok = s != 0
        num = (a * inp.gradients).sum(dim=(2, 3))
        return torch.where(ok, num / torch.where(ok, s, torch.ones_like(s)), torch.zeros_like(s))


class HiResCAM(BaseCAM):
    r"""HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891).

    .. math:: L^c = N\Big(\mathrm{ReLU}\big(\sum_k g_k \odot A_k\big)\Big)

    The element-wise product of gradient and activation summed over channels (Grad-CAM without
    the spatial averaging of ``g``). For a head of one linear layer over the *flattened* ``A`` the
    raw map sums, location by location, exactly to the logit minus its bias (the paper's argument
    that HiResCAM shows the locations the score is computed from); for global average pooling +
    one linear layer ``g`` is constant over space and HiResCAM equals Grad-CAM. Same map as
    pytorch-grad-cam's ``HiResCAM`` (before its epsilon-normalization).
    """

    name = "hirescam"
    needs_gradients = True

    def raw_map(self, inp: CamInputs) -> Tensor:
        assert inp.gradients is not None
        return (inp.gradients * inp.activations).sum(dim=1)


class EigenCAM(BaseCAM):
    r"""Eigen-CAM (Muhammad & Yeasin 2020, IJCNN, https://arxiv.org/abs/2008.00299).

    .. math:: M = [A(i,j)^\top]_{ij} \in \mathbb{R}^{hw \times K} = U \Sigma V^\top, \qquad
              L = N\big(\mathrm{ReLU}(s \cdot M v_1)\big), \qquad
              s = \operatorname{sign}\Big(\sum_{i,j} (M v_1)_{ij}\Big)

    ``v_1`` is the first right singular vector of the *uncentred* pixel-by-channel matrix (as the
    paper writes it: the SVD of the activations themselves), so ``M v_1 = σ_1 u_1`` is the best
    rank-one summary of ``A`` over space. No gradient and no class: the map is the same for every
    target (the engine computes it once per batch). SVD leaves the sign of ``v_1`` arbitrary (the
    LAPACK / cuSOLVER routine decides); we fix it so that the map's sum is non-negative,
    equivalently ``v_1`` points along the image's mean activation vector ``Σ_ij A(i,j)``
    (``Σ_ij (M v_1)_ij = (1^\top M) v_1``). For a ReLU layer (``A >= 0``) that makes ``M v_1 >= 0``
    everywhere (Perron-Frobenius), so the ReLU changes nothing; on a signed layer (tokens) the
    ReLU keeps the side that agrees with the mean. A sum of exactly 0 (e.g. ``A = 0``) keeps the
    routine's sign. Computed in the activations' dtype (fp32).

    pytorch-grad-cam 1.5's ``EigenCAM`` (``get_2d_projection``) differs on both counts: it
    *centres* each channel over the pixels before the SVD (``M - mean_ij M``; its comment says the
    uncentred image "is negative", which is the sign ambiguity, not a property of the uncentred
    projection) and fixes no sign, so its map (after its ReLU) is, depending on the routine,
    either the above-mean or the below-mean half of the first principal component.
    """

    name = "eigencam"

    def raw_map(self, inp: CamInputs) -> Tensor:
        a = inp.activations
        b, k, h, w = a.shape
        m = a.reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
        # The top singular pair from the symmetric eigenproblem of the smaller Gram matrix
        # (hw x hw for a CNN's 7x7 x 512, K x K for many tokens): 8x faster than a batched SVD
        # (32 maps, one thread of the 2-core AMD EPYC Zen 5, shared: 7x7 x 512 24 vs 195 ms,
        # ViT-B's 14x14 x 768 0.34 vs 1.45 s), and no less accurate for the top
        # vector (its error scales with λ1 / (λ1 - λ2) = σ1² / ((σ1 - σ2)(σ1 + σ2)), as the SVD's
        # with σ1 / (σ1 - σ2)).
        proj: Tensor
        if h * w <= k:
            vals, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # ascending eigenvalues
            sigma = vals[:, -1:].clamp(min=0).sqrt()
            proj = vecs[:, :, -1] * sigma  # σ_1 u_1 = M v_1, [B, hw]
        else:
            _, vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)
            proj = (m @ vecs[:, :, -1:]).squeeze(-1)  # M v_1
        sign = torch.where(proj.sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
        return (proj * sign).reshape(b, h, w)


def pass_methods() -> tuple[BaseCAM, ...]:
    """One instance of each method the engine's pass computes (all but CAM, which needs the
    model's head, and Score-CAM, which needs masked forwards), in canonical order."""
    return (GradCAM(), GradCAMpp(), LayerCAM(), XGradCAM(), HiResCAM(), EigenCAM())
