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
        return group_norm_regularizer(self.block_norms(), self.p if p is None else p)

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
