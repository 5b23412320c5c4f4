"""Tensor Fusion Network (Zadeh et al., *Tensor Fusion Network for Multimodal Sentiment
Analysis*, EMNLP 2017).

Each encoder output is first projected to a small size k, ``a_m = P_m h_m ∈ R^k``, and extended by
a constant 1; the fused representation is the flattened outer product

    z = vec(⊗_m [a_m; 1]) ∈ R^{(k+1)^M},

which holds every unimodal (``a_m ⊗ 1 ⊗ …``), bimodal, …, M-modal multiplicative term at once; an
MLP reads ``z``. The projection (not in the original, which used the full ``h_m``) keeps the size
``(k+1)^M`` tractable for M up to about 4 (k = 8, M = 4: 6561 coordinates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..model import FusionOutput
from ..models import ModelSpec, register_model
from ._common import EncoderFusion, mlp_head

MAX_FUSED_DIM = 1_000_000


def tensor_fusion(factors: Sequence[Tensor]) -> Tensor:
    """``vec(⊗_m [a_m; 1])``: ``[(B, k_m)]`` → ``(B, Π (k_m + 1))``; the first factor varies
    slowest."""
    z = factors[0].new_ones(factors[0].shape[0], 1)
    for a in factors:
        a1 = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        z = (z.unsqueeze(2) * a1.unsqueeze(1)).flatten(start_dim=1)
    return z


class TensorFusion(EncoderFusion):
    """TFN: projections ``P_m`` → outer product of ``[P_m h_m; 1]`` → MLP.

    Args:
        encoders: ``{modality: nn.Module}``, each mapping ``x_m`` to ``(B, d_m)``.
        num_outputs: C.
        factor_dim: k, the size each ``h_m`` is projected to before the outer product.
        hidden: hidden sizes of the post-fusion MLP (``()``: linear).
        encoder_dims: output sizes of encoders that lack an ``output_dim`` attribute.
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_outputs: int = 1,
        factor_dim: int = 8,
        hidden: Sequence[int] = (64,),
        encoder_dims: Mapping[str, int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(encoders, encoder_dims)
        if factor_dim < 1:
            raise ValueError(f"TFN factor_dim must be >= 1, got {factor_dim}")
        self.factor_dim = factor_dim
        self.fused_dim = (factor_dim + 1) ** len(self.modalities)
        if self.fused_dim > MAX_FUSED_DIM:
            raise ValueError(
                f"TFN with {len(self.modalities)} modalities and factor_dim={factor_dim} has "
                f"{self.fused_dim} fused coordinates (> {MAX_FUSED_DIM}); use a smaller "
                f"factor_dim or LMF (low-rank tensor fusion)"
            )
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, factor_dim) for m, d in self.encoder_dims.items()}
        )
        self.head = mlp_head(self.fused_dim, tuple(hidden), num_outputs, dropout)

    def fuse(self, embeddings: Mapping[str, Tensor]) -> FusionOutput:
        """``z = vec(⊗_m [P_m h_m; 1])`` → MLP; ``blocks = {"tensor": z}``."""
        h = self._embeddings(embeddings)
        z = tensor_fusion([self.projections[m](x) for m, x in zip(self.modalities, h)])
        return FusionOutput(self.head(z), {"tensor": z}, dict(embeddings))


@register_model(
    "tfn",
    summary="tensor fusion network, outer product of [P_m h_m; 1] (--rank = projected size)",
    options=lambda config, modalities, shapes: {"rank": config.rank, "hidden": [64]},
)
def _build_tfn(spec: ModelSpec, encoders: dict[str, nn.Module]) -> nn.Module:
    return TensorFusion(
        encoders,
        spec.num_outputs,
        factor_dim=spec.options["rank"],
        hidden=spec.options["hidden"],
    )
