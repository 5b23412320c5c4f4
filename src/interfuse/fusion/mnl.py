"""Multiple-norm-learning (MNL) head: one linear block per term, lp-norm relevance weights β.

The objective of Interpretable Tensor Fusion learns term weights β ≥ 0, ‖β‖_p ≤ 1, by penalising
Σ_t ‖W_t‖²/β_t (derivation: docs/model.md §8).
Minimising over β in closed form (Kloft et al., *lp-Norm Multiple Kernel Learning*, JMLR 2011;
Varshneya et al., *Interpretable Tensor Fusion*, IJCAI 2024) leaves the group-norm regulariser

    Ω_p(W) = (Σ_t ‖W_t‖_F^q)^{2/q},   q = 2p/(p+1),

whose minimiser is  β_t = ‖W_t‖^{2/(p+1)} / (Σ_s ‖W_s‖^{2p/(p+1)})^{1/p}.  These β are the
relevance scores; their normalisation β_t / Σ_s β_s is the display form ("share").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..results import Relevance


def check_p(p: float) -> float:
    p = float(p)
    if not math.isfinite(p) or p < 1:
        raise ValueError(f"the norm parameter p must be a finite real number >= 1, got {p}")
    return p


def group_norm_regularizer(norms: Tensor, p: float) -> Tensor:
    """``Ω_p = (Σ_t a_t^q)^{2/q}`` for block norms ``a_t ≥ 0`` and ``q = 2p/(p+1)``.

    Equals ``min {Σ_t a_t²/β_t : β ≥ 0, ‖β‖_p ≤ 1}``.
    """
    p = check_p(p)
    q = 2 * p / (p + 1)
    return norms.pow(q).sum().pow(2 / q)


def block_regularizer(weights: Sequence[Tensor], p: float) -> Tensor:
    """``Ω_p = (Σ_t ‖W_t‖_F^q)^{2/q}``, ``q = 2p/(p+1)``, of weight blocks ``W_t`` of any shapes:
    :func:`group_norm_regularizer` of their Frobenius norms, differentiable in the blocks (first
    and second derivatives, forward mode, batched gradients).

    For blocks of one dtype on the CPU, outside ``torch.compile`` and ``torch.func`` transforms,
    it is one autograd Function doing the arithmetic on the T norms as Python numbers (speed:
    the autograd graph of the composition, a norm per block, two powers and a sum, costs 2–6 %
    of a small fusion training step on a CPU; BENCHMARKS.md §3). Elsewhere it is the
    composition: on a GPU reading the norms would wait for the device.
    """
    p = check_p(p)
    if not weights:
        raise ValueError("block_regularizer needs at least one weight block")
    if torch._C._are_functorch_transforms_active():  # vmap, jvp, hessian: a norm per block
        # (``_foreach_norm`` has no batching rule and no usable forward-mode derivative)
        return group_norm_regularizer(
            torch.stack([torch.linalg.vector_norm(w) for w in weights]), p
        )
    first = weights[0]
    if (
        first.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and all(w.dtype == first.dtype for w in weights)
    ):
        return _CpuBlockRegularizer.apply(2 * p / (p + 1), *weights)
    return group_norm_regularizer(torch.stack(torch._foreach_norm(weights)), p)


def _power(base: float, exponent: float) -> float:
    """``base ** exponent`` for ``base ≥ 0``, ``inf`` where a float overflows (as tensors do)."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def _coefficients(weights: Sequence[Tensor], q: float) -> Tensor:
    """``c_t = 2 S^{2/q−1} a_t^{q−2}`` (0 for a zero block) from the blocks, differentiably."""
    norms = torch.stack([torch.linalg.vector_norm(w) for w in weights])
    positive = norms > 0
    safe = torch.where(positive, norms, torch.ones_like(norms))  # no inf, even unselected
    powered = torch.where(positive, safe.pow(q - 2), torch.zeros_like(norms))
    return powered * (2 * norms.pow(q).sum().pow(2 / q - 1))


class _CpuBlockRegularizer(torch.autograd.Function):
    """:func:`block_regularizer` on the CPU. With ``a_t = ‖W_t‖`` and ``S = Σ_s a_s^q``,

        ∂Ω/∂W_t = c_t W_t,   c_t = 2 S^{2/q−1} a_t^{q−2}   (c_t = 0 for a zero block: the limit
        for q > 1, and the subgradient the composition's norm takes for q = 1),

    so the backward pass is one product per block with coefficients computed in the forward
    pass (in float64 arithmetic, from the norms in the blocks' dtype), and the forward-mode
    derivative is ``Σ_t c_t ⟨W_t, Ẇ_t⟩``. Where a derivative is itself differentiated
    (``create_graph=True``, reverse mode over forward mode) or batched (``is_grads_batched``,
    vectorised Jacobians), the coefficients are recomputed from the blocks with tensor
    operations, so higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, q, *weights):  # noqa: ANN001, ANN205, D102
        norms = torch.stack(torch._foreach_norm(weights)).tolist()
        total = sum(_power(a, q) for a in norms)
        value = _power(total, 2 / q)
        scale = 2 * _power(total, 2 / q - 1) if total > 0 else 0.0
        ctx.coefficients = [scale * _power(a, q - 2) if a > 0 else 0.0 for a in norms]
        if math.isnan(value):  # a NaN reaches every block's gradient, as in the composition
            ctx.coefficients = [math.nan] * len(norms)
        ctx.q = q
        ctx.save_for_backward(*weights)
        ctx.save_for_forward(*weights)
        return weights[0].new_tensor(value)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205, D102
        weights = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled() or torch._C._functorch.is_legacy_batchedtensor(grad):
            coefficients = (_coefficients(weights, ctx.q) * grad).unbind(0)
            pairs = zip(weights, coefficients, wanted)
            return None, *(w * c if want else None for w, c, want in pairs)
        factor = grad.item()
        if all(wanted):  # the usual case
            return None, *torch._foreach_mul(weights, [c * factor for c in ctx.coefficients])
        picked = [i for i, want in enumerate(wanted) if want]
        products = torch._foreach_mul(
            [weights[i] for i in picked], [ctx.coefficients[i] * factor for i in picked]
        )
        grads: list[Tensor | None] = [None] * len(weights)
        for i, value in zip(picked, products):
            grads[i] = value
        return None, *grads

    @staticmethod
    def jvp(ctx, _q, *tangents):  # noqa: ANN001, ANN205, D102
        weights = ctx.saved_tensors
        coefficients: Sequence[float | Tensor] = ctx.coefficients
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            coefficients = _coefficients(weights, ctx.q).unbind(0)  # reverse mode follows
        out = weights[0].new_zeros(())
        for w, tangent, c in zip(weights, tangents, coefficients):
            if tangent is not None:
                out = out + c * (w * tangent).sum()
        return out


def optimal_beta(norms: Tensor, p: float) -> Tensor:
    """Closed-form minimiser ``β_t = a_t^{2/(p+1)} / (Σ_s a_s^{2p/(p+1)})^{1/p}`` (‖β‖_p = 1).

    All-zero norms give β = 0 (every β is then optimal).
    """
    p = check_p(p)
    numerator = norms.pow(2 / (p + 1))
    denominator = norms.pow(2 * p / (p + 1)).sum().pow(1 / p)
    if denominator == 0:
        return torch.zeros_like(norms)
    return numerator / denominator


class MNLFusion(nn.Module):
    """``ŷ = Σ_t W_t z_t + b`` with one weight block ``W_t ∈ R^{C×D_t}`` per term.

    Args:
        block_dims: ``{term name: D_t}``, in the order terms should be listed.
        num_outputs: C (classes for classification, targets for regression).
        p: default lp-norm parameter (p ≥ 1) for :meth:`regularizer` and :meth:`relevance`.

    Input: ``{term name: (B, D_t)}``; output ``(B, C)``. Train with ``task loss + λ·regularizer()``
    and no weight decay on this module (Ω_p is its regulariser).
    """

    def __init__(
        self, block_dims: Mapping[str, int], num_outputs: int, p: float = 2.0, bias: bool = True
    ) -> None:
        super().__init__()
        if not block_dims:
            raise ValueError("MNLFusion needs at least one block")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        for name, dim in block_dims.items():
            if dim < 1:
                raise ValueError(f"block {name!r} has dimension {dim}; it must be >= 1")
        self.p = check_p(p)
        self.num_outputs = num_outputs
        self.blocks = nn.ModuleDict(
            {name: nn.Linear(dim, num_outputs, bias=False) for name, dim in block_dims.items()}
        )
        self.bias = nn.Parameter(torch.zeros(num_outputs)) if bias else None

    @property
    def term_names(self) -> list[str]:
        return list(self.blocks)

    def forward(self, blocks: Mapping[str, Tensor]) -> Tensor:
        missing = [t for t in self.blocks if t not in blocks]
        if missing:
            raise ValueError(f"MNLFusion is missing blocks for terms {missing}")
        out = sum(layer(blocks[t]) for t, layer in self.blocks.items())
        return out + self.bias if self.bias is not None else out

    def block_norms(self) -> Tensor:
        """``‖W_t‖_F`` for every term, in :attr:`term_names` order."""
        return torch.stack(torch._foreach_norm([b.weight for b in self.blocks.values()]))

    def regularizer(self, p: float | None = None) -> Tensor:
        """``Ω_p(W) = (Σ_t ‖W_t‖_F^q)^{2/q}``, differentiable."""
        weights = [block.weight for block in self.blocks.values()]
        return block_regularizer(weights, self.p if p is None else p)

    @torch.no_grad()
    def relevance(self, p: float | None = None) -> Relevance:
        """Detached relevance scores β (‖β‖_p = 1) and shares (sum to 1) per term."""
        p = self.p if p is None else p
        return relevance_from_norms(self.term_names, self.block_norms().detach().double().cpu(), p)

    def output_relevance(self, output: int, p: float | None = None) -> Relevance:
        """Relevance for one output k (e.g. one label of a multilabel task): the same closed form
        applied to the norms ``‖W_t[k, :]‖`` of the rows that produce output k."""
        if not 0 <= output < self.num_outputs:
            raise ValueError(f"output must be in 0..{self.num_outputs - 1}, got {output}")
        p = self.p if p is None else p
        norms = [layer.weight[output].detach().double().norm() for layer in self.blocks.values()]
        return relevance_from_norms(self.term_names, torch.stack(norms).cpu(), p)

    def extra_repr(self) -> str:
        return f"terms={self.term_names}, num_outputs={self.num_outputs}, p={self.p:g}"


def relevance_from_norms(
    names: Sequence[str], norms: Sequence[float] | Tensor, p: float
) -> Relevance:
    """:class:`Relevance` from block norms ``‖W_t‖_F`` (e.g. read from a saved checkpoint)."""
    p = check_p(p)
    beta = optimal_beta(torch.as_tensor(norms, dtype=torch.float64), p)
    total = beta.sum()
    shares = beta / total if total > 0 else beta
    return Relevance(
        p=p,
        beta={n: float(b) for n, b in zip(names, beta)},
        shares={n: float(s) for n, s in zip(names, shares)},
    )
