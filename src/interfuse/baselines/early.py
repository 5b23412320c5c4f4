"""Early fusion: flatten every modality's raw input, concatenate, and read with an MLP.

``ŷ = MLP([vec x_1; …; vec x_M])``. There are no per-modality encoders, so the model has no
``encode``/``fuse`` split; post-hoc explanations replace its *inputs* (by their training mean).
Only modalities with a fixed per-sample shape can be concatenated this way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..model import FusionOutput
from ..models import ModelSpec, register_model
from ..terms import validate_modality_names
from ._common import check_inputs, mlp_head, reject_masks


class EarlyFusion(nn.Module):
    """Concatenation of the flattened inputs → MLP.

    Args:
        input_shapes: ``{modality: per-sample shape}``, e.g. ``{"dna": (4, 100), "audio": (5,)}``.
        num_outputs: C.
        hidden: hidden sizes of the MLP.
        dropout: dropout after each hidden layer.
    """

    def __init__(
        self,
        input_shapes: Mapping[str, Sequence[int]],
        num_outputs: int = 1,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = validate_modality_names(input_shapes)
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        for m in self.modalities:
            shape = input_shapes[m]
            if (
                not isinstance(shape, Sequence)
                or not shape
                or not all(isinstance(s, int) and s >= 1 for s in shape)
            ):
                raise ValueError(
                    f"early fusion needs a fixed per-sample shape of positive sizes for every "
                    f"modality; modality {m!r} has {shape!r} (variable-length or non-array "
                    f"inputs cannot be concatenated: use late fusion, TFN or LMF)"
                )
            self.input_shapes[m] = tuple(int(s) for s in shape)
        self.input_dim = sum(math.prod(s) for s in self.input_shapes.values())
        self.head = mlp_head(self.input_dim, tuple(hidden), num_outputs, dropout)

    def flatten(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """``(B, Σ_m prod(shape_m))``: each modality flattened, concatenated in declared order."""
        batch = check_inputs(inputs, self.modalities, type(self).__name__)
        parts = []
        for m in self.modalities:
            x = inputs[m]
            if tuple(x.shape[1:]) != self.input_shapes[m]:
                raise ValueError(
                    f"early fusion: modality {m!r} has per-sample shape {tuple(x.shape[1:])}, "
                    f"but the model was built for {self.input_shapes[m]}; inputs of varying "
                    f"shape cannot be concatenated"
                )
            if x.is_complex():
                raise ValueError(f"early fusion: modality {m!r} has unsupported dtype {x.dtype}")
            parts.append(x.reshape(batch, -1).to(self._dtype))
        return torch.cat(parts, dim=1)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> FusionOutput:
        """``blocks = {"inputs": concatenated flat inputs}``; ``embeddings`` is empty. ``masks``
        may only mark every modality present (no missing-modality path)."""
        reject_masks(masks, type(self).__name__, self.modalities)
        z = self.flatten(inputs)
        return FusionOutput(self.head(z), {"inputs": z}, {})


def _early_options(config, modalities, shapes):
    if set(shapes) != set(modalities):
        raise ValueError("early fusion needs the per-sample input shape of every modality")
    return {"input_shapes": {m: [int(s) for s in shapes[m]] for m in modalities}, "hidden": [128]}


@register_model(
    "early",
    summary="flattened inputs concatenated → MLP (no built-in relevance)",
    options=_early_options,
)
def _build_early(spec: ModelSpec, encoders: dict[str, nn.Module]) -> nn.Module:
    shapes = spec.options["input_shapes"]
    missing = [m for m in spec.modalities if m not in shapes]
    if missing:
        raise ValueError(f"model 'early': its option 'input_shapes' lacks modalities {missing}")
    return EarlyFusion(
        {m: shapes[m] for m in spec.modalities}, spec.num_outputs, hidden=spec.options["hidden"]
    )
