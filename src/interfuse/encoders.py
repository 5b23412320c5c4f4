"""Encoders ``f_m``: one per modality, each mapping a batch of inputs to ``(B, output_dim)``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SequenceCNN(nn.Module):
    """1-D CNN for one-hot sequences ``(B, alphabet, L) → (B, output_dim)``.

    A convolution acts as a bank of motif detectors; global max pooling over positions makes the
    representation see a motif wherever it sits (translation invariance).
    """

    def __init__(
        self,
        alphabet: int = 4,
        channels: int = 32,
        kernel_size: int = 9,
        output_dim: int = 16,
    ) -> None:
        super().__init__()
        for name, value in (
            ("alphabet", alphabet),
            ("channels", channels),
            ("kernel_size", kernel_size),
            ("output_dim", output_dim),
        ):
            if value < 1:
                raise ValueError(f"SequenceCNN: {name} must be >= 1, got {value}")
        self.alphabet = alphabet
        self.output_dim = output_dim
        self.conv = nn.Conv1d(alphabet, channels, kernel_size, padding=kernel_size // 2)
        self.activation = nn.ReLU()
        self.project = nn.Linear(channels, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.alphabet:
            raise ValueError(
                f"SequenceCNN expects one-hot input of shape (batch, {self.alphabet}, length), "
                f"got {tuple(x.shape)}"
            )
        features = self.activation(self.conv(x)).amax(dim=-1)
        return self.project(features)


class MLP(nn.Module):
    """Multi-layer perceptron for feature vectors ``(B, input_dim) → (B, output_dim)``."""

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int] = (64,),
        output_dim: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_dim < 1 or output_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MLP: all layer sizes must be >= 1, got input_dim={input_dim}, "
                f"hidden={tuple(hidden)}, output_dim={output_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, output_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"MLP expects input of shape (batch, {self.input_dim}), got {tuple(x.shape)}"
            )
        return self.layers(x)
