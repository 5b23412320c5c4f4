"""Shared plumbing of the fusion baselines: encoder bookkeeping, input checks, small MLP heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..encoders import feedforward
from ..model import FusionOutput, encoder_output_dim
from ..terms import validate_modality_names


def mlp_head(
    in_features: int, hidden: Sequence[int], out_features: int, dropout: float
) -> nn.Module:
    """``Linear`` when ``hidden`` is empty, else ``Linear → ReLU (→ Dropout)`` per hidden size."""
    net = feedforward(in_features, hidden, out_features, dropout)
    return net if len(net) > 1 else net[0]


def reject_masks(
    masks: Mapping[str, Tensor | bool] | None, owner: str, modalities: Sequence[str]
) -> None:
    """Baselines have no missing-modality path: any missing entry in ``masks`` is an error (as
    is a mask of a modality the model does not have, or one that is not a bool)."""
    unknown = [m for m in (masks or {}) if m not in modalities]
    if unknown:
        raise ValueError(
            f"{owner}: masks for unknown modalities {unknown}; the model expects {list(modalities)}"
        )
    for m, mask in (masks or {}).items():
        if not isinstance(mask, bool) and not (
            isinstance(mask, Tensor) and mask.dtype == torch.bool
        ):
            raise ValueError(
                f"mask of modality {m!r} must be a bool tensor or a Python bool, got "
                f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}"
            )
        if not bool(mask if isinstance(mask, bool) else mask.all()):
            raise ValueError(
                f"{owner} has no missing-modality path, but modality {m!r} is masked as missing; "
                f"modality dropout and masks need the intense or mnl model"
            )


def check_inputs(inputs: Mapping[str, Tensor], modalities: Sequence[str], owner: str) -> int:
    """Validate ``{modality: tensor}`` against the expected modalities; return the batch size."""
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"{owner}: inputs must be a dict {{modality name: tensor}}, got {type(inputs).__name__}"
        )
    missing = [m for m in modalities if m not in inputs]
    unknown = [k for k in inputs if k not in modalities]
    if missing or unknown:
        parts = [f"missing modalities {missing}"] if missing else []
        if unknown:
            parts.append(f"unknown modalities {unknown}")
        raise ValueError(
            f"{owner}: {'; '.join(parts)}; the model expects {list(modalities)} (baselines have "
            f"no missing-modality path; use interfuse.explain's mean replacement instead)"
        )
    sizes = {}
    for m in modalities:
        x = inputs[m]
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise ValueError(f"{owner}: modality {m!r} must be a batched tensor")
        sizes[m] = x.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{owner}: modalities have different batch sizes: {sizes}")
    return next(iter(sizes.values()))


class EncoderFusion(nn.Module):
    """Base of the baselines that encode each modality separately: ``h_m = f_m(x_m)``.

    Subclasses implement :meth:`fuse` (``{m: (B, d_m)}`` → :class:`FusionOutput`); ``forward`` is
    ``fuse(encode(inputs))``. There is no ``relevance()``: these models have no built-in relevance.
    """

    def __init__(
        self, encoders: Mapping[str, nn.Module], encoder_dims: Mapping[str, int] | None = None
    ) -> None:
        super().__init__()
        self.modalities = validate_modality_names(encoders)
        self.encoder_dims = {
            m: int(encoder_dims[m])
            if encoder_dims and m in encoder_dims
            else encoder_output_dim(m, encoders[m])
            for m in self.modalities
        }
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Encoder outputs ``{modality: (B, d_m)}``."""
        batch = check_inputs(inputs, self.modalities, type(self).__name__)
        embeddings = {}
        for m, encoder in self.encoders.items():
            h = encoder(inputs[m])
            if (
                not isinstance(h, Tensor)
                or h.dim() != 2
                or h.shape != (batch, self.encoder_dims[m])
            ):
                shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(
                    f"the encoder of modality {m!r} must return a tensor of shape "
                    f"({batch}, {self.encoder_dims[m]}), got {shape}"
                )
            embeddings[m] = h
        return embeddings

    def fuse(self, embeddings: Mapping[str, Tensor]) -> FusionOutput:  # pragma: no cover
        raise NotImplementedError

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> FusionOutput:
        """``fuse(encode(inputs))``; ``masks`` may only mark every modality present."""
        reject_masks(masks, type(self).__name__, self.modalities)
        return self.fuse(self.encode(inputs))

    def _embeddings(self, embeddings: Mapping[str, Tensor]) -> list[Tensor]:
        missing = [m for m in self.modalities if m not in embeddings]
        if missing:
            raise ValueError(f"{type(self).__name__}.fuse: missing embeddings for {missing}")
        return [embeddings[m] for m in self.modalities]
