"""Late fusion: concatenate the encoder outputs and read them with a linear or MLP head.

``ŷ = g([h_1; …; h_M])`` with ``h_m = f_m(x_m)`` and ``g`` linear (``hidden=()``) or an MLP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..model import FusionOutput
from ..models import ModelSpec, register_model
from ._common import EncoderFusion, mlp_head


class LateFusion(EncoderFusion):
    """Concatenation of encoder outputs → linear layer or MLP.

    Args:
        encoders: ``{modality: nn.Module}``, each mapping ``x_m`` to ``(B, d_m)``.
        num_outputs: C, outputs of the head.
        hidden: hidden layer sizes of the head; ``()`` gives a linear head.
        encoder_dims: output sizes of encoders that lack an ``output_dim`` attribute.
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_outputs: int = 1,
        hidden: Sequence[int] = (),
        encoder_dims: Mapping[str, int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(encoders, encoder_dims)
        self.fused_dim = sum(self.encoder_dims.values())
        self.head = mlp_head(self.fused_dim, tuple(hidden), num_outputs, dropout)

    def fuse(self, embeddings: Mapping[str, Tensor]) -> FusionOutput:
        """``(B, Σ d_m)`` concatenation → head; ``blocks = {"concat": z}``."""
        z: Tensor = torch.cat(self._embeddings(embeddings), dim=1)
        return FusionOutput(self.head(z), {"concat": z}, dict(embeddings))


@register_model(
    "late",
    summary="encoder outputs concatenated → linear head (no built-in relevance)",
    options=lambda config, modalities, shapes: {"hidden": []},
)
def _build_late(spec: ModelSpec, encoders: dict[str, nn.Module]) -> nn.Module:
    return LateFusion(encoders, spec.num_outputs, hidden=spec.options["hidden"])
