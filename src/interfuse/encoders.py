"""Encoders ``f_m``: one per modality, each mapping a batch of inputs to ``(B, output_dim)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from .registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")
"""Encoders by name: ``build_encoder({"type": name, **kwargs})`` calls ``ENCODERS.get(name)``."""

CUSTOM = "custom"
"""Encoder type recorded for a user's ``nn.Module`` that is not registered by name."""


def register_encoder(
    name: str, *, replace: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that makes an encoder class (or factory) buildable by name from a spec.

    >>> @register_encoder("tiny")
    ... class Tiny(nn.Linear):
    ...     def __init__(self, input_dim: int, output_dim: int = 8) -> None:
    ...         super().__init__(input_dim, output_dim)
    ...         self.output_dim = output_dim
    """
    return ENCODERS.register(name, replace=replace)


def build_encoder(spec: Mapping[str, Any], modality: str = "?") -> nn.Module:
    """Instantiate an encoder from ``{"type": name, **kwargs}`` through :data:`ENCODERS`."""
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind == CUSTOM:
        raise ValueError(
            f"modality {modality!r} was trained with a custom encoder "
            f"({kwargs.get('class', 'an nn.Module')}) that is not registered by name; pass the "
            f"module again (encoders={{{modality!r}: module}}) or register it with "
            f"@register_encoder"
        )
    if kind not in ENCODERS:
        raise ValueError(
            f"modality {modality!r}: unknown encoder type {kind!r}; known: {ENCODERS.names()}"
        )
    try:
        return ENCODERS.get(kind)(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"modality {modality!r}: bad options for encoder {kind!r}: {error}"
        ) from None


def _is_size(value: object) -> bool:
    """An integer >= 1 (a layer size); not a bool, float or string."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _check_sizes(owner: str, sizes: Sequence[tuple[str, object]]) -> None:
    for name, value in sizes:
        if not _is_size(value):
            raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")


class _ConvGlobalMax(torch.autograd.Function):
    """``max_l conv1d(x, W, b)[:, :, l]`` (stride 1, zero padding ``p``) with a sparse backward.

    The maximum over positions passes its gradient to one position per (sample, channel), so
    ``∂W[c] = Σ_b g[b, c] · x̃[b, :, l*+j]_j`` (``x̃`` the padded input, ``l* = argmax``) is a
    gather of one window per (sample, channel) — not the full convolution backward that autograd
    runs for ``conv1d`` followed by ``amax``. ``∂b = Σ_b g``; ``∂x̃`` scatters ``g[b, c] W[c]``
    into the same windows. On ties, :func:`torch.amax` splits the gradient evenly between the
    tied positions and this takes one of them: the same gradient wherever the tied windows are
    equal (the usual cause of exact ties, e.g. a repeated k-mer of a one-hot sequence).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # noqa: D102
        values, where = F.conv1d(x, weight, bias, padding=padding).max(dim=-1)
        ctx.padding = padding
        ctx.save_for_backward(x, weight, where)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, weight, where = ctx.saved_tensors
        # under autocast the forward ran in low precision (and the input may be low precision
        # too): gradients in the parameters' dtype, the input's gradient in the input's
        grad = grad.to(weight.dtype)
        channels, alphabet, width = weight.shape
        batch, pad = x.shape[0], ctx.padding
        # window positions in the padded input, (B, 1, C·k) → expanded over the alphabet
        offsets = torch.arange(width, device=x.device)
        index = (where[:, :, None] + offsets).view(batch, 1, channels * width)
        index = index.expand(batch, alphabet, channels * width)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            windows = F.pad(x, (pad, pad)).gather(2, index).view(batch, alphabet, channels, width)
            grad_w = torch.einsum("bc,bacj->caj", grad, windows.to(grad.dtype))
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0)
        if ctx.needs_input_grad[0]:
            spread = (grad[:, :, None, None] * weight).transpose(1, 2)  # (B, A, C, k)
            padded = grad.new_zeros(batch, alphabet, x.shape[2] + 2 * pad)
            padded.scatter_add_(2, index, spread.reshape(batch, alphabet, channels * width))
            grad_x = padded[:, :, pad : pad + x.shape[2]].to(x.dtype)
        return grad_x, grad_w, grad_b, None


@register_encoder("sequence_cnn")
class SequenceCNN(nn.Module):
    """1-D CNN for one-hot sequences ``(B, alphabet, L) → (B, output_dim)``.

    A convolution acts as a bank of motif detectors; global max pooling over positions makes the
    representation see a motif wherever it sits (translation invariance). ``dropout`` drops
    pooled detector outputs in training, as in DeepBind (Alipanahi et al., Nature Biotechnology
    2015): on a weak motif modality trained alone 0.25 lifts what the model learns from 2,800
    samples by up to 1.7×, and with modality dropout it brings the relevance of weak modalities
    close to the truth (BENCHMARKS.md §1.1). It can keep a model from finding XOR-type
    interactions; :func:`interfuse.train.fit`'s restart trains without it when that happens.
    """

    def __init__(
        self,
        alphabet: int = 4,
        channels: int = 32,
        kernel_size: int = 9,
        output_dim: int = 16,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        _check_sizes(
            "SequenceCNN",
            (
                ("alphabet", alphabet),
                ("channels", channels),
                ("kernel_size", kernel_size),
                ("output_dim", output_dim),
            ),
        )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SequenceCNN: dropout must be in [0, 1), got {dropout}")
        self.alphabet = alphabet
        self.output_dim = output_dim
        self.conv = nn.Conv1d(alphabet, channels, kernel_size, padding=kernel_size // 2)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.project = nn.Linear(channels, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.alphabet:
            raise ValueError(
                f"SequenceCNN expects one-hot input of shape (batch, {self.alphabet}, length), "
                f"got {tuple(x.shape)}"
            )
        conv = self.conv
        if _plain_conv(conv) and type(self.activation) is nn.ReLU:
            # max_l relu(conv) = relu(max_l conv) (ReLU is monotone), with a sparse backward
            features = self.activation(
                _ConvGlobalMax.apply(x, conv.weight, conv.bias, conv.padding[0])
            )
        else:  # a conv changed after construction (stride, dilation, …): the generic form
            features = self.activation(conv(x)).amax(dim=-1)
        return self.project(self.dropout(features))


def _plain_conv(conv: nn.Conv1d) -> bool:
    """A stride-1, undilated, ungrouped, zero-padded ``Conv1d`` (what :class:`_ConvGlobalMax`
    computes)."""
    return (
        conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
    )


def feedforward(
    in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0
) -> nn.Sequential:
    """``Linear → ReLU (→ Dropout)`` per hidden size, then a final ``Linear``."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a list of layer sizes such as [64], got {hidden!r}")
    if not all(_is_size(n) for n in (in_features, *hidden, out_features)):
        raise ValueError(
            f"layer sizes must be integers >= 1, got in={in_features!r}, "
            f"hidden={tuple(hidden)!r}, out={out_features!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@register_encoder("mlp")
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
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.layers = feedforward(input_dim, hidden, output_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"MLP expects input of shape (batch, {self.input_dim}), got {tuple(x.shape)}"
            )
        return self.layers(x)


@register_encoder("sequence_gru")
class SequenceGRU(nn.Module):
    """GRU over front zero-padded feature sequences ``(B, T, input_dim) → (B, output_dim)``.

    Lengths are derived from the padding (the MultiBench convention: padding rows are all zero
    and come first): a sequence starts at its first row with a non-zero entry and runs to the
    end, so zero rows after that point count as data. The valid rows are moved to the front,
    packed (``pack_padded_sequence``) so the GRU never reads padding, and the last layer's final
    hidden state (both directions if ``bidirectional``) is projected to ``output_dim``. An
    all-zero sequence has length 0: its hidden state is taken as zeros, so its output is the
    projection's bias.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: int = 64,
        output_dim: int = 32,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sizes(
            "SequenceGRU",
            (
                ("input_dim", input_dim),
                ("hidden", hidden),
                ("output_dim", output_dim),
                ("num_layers", num_layers),
            ),
        )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SequenceGRU: dropout must be in [0, 1), got {dropout}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.gru = nn.GRU(
            input_dim,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.project = nn.Linear(hidden * self.directions, output_dim)

    @staticmethod
    def lengths(x: Tensor) -> Tensor:
        """Valid length of each front-padded sequence: ``T`` minus the leading all-zero rows."""
        nonzero = (x != 0).any(dim=-1)  # (B, T)
        first = torch.where(nonzero.any(dim=1), nonzero.int().argmax(dim=1), x.shape[1])
        return x.shape[1] - first

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.input_dim:
            raise ValueError(
                f"SequenceGRU expects input of shape (batch, time, {self.input_dim}), "
                f"got {tuple(x.shape)}"
            )
        batch, steps, _ = x.shape
        lengths = self.lengths(x)
        # Shift every sequence so its valid rows come first (row t reads x[start + t]).
        start = (steps - lengths).unsqueeze(1)
        index = torch.arange(steps, device=x.device).unsqueeze(0) + start
        valid = index < steps
        index = index.clamp(max=steps - 1).unsqueeze(-1).expand(-1, -1, x.shape[2])
        shifted = x.gather(1, index) * valid.unsqueeze(-1).to(x.dtype)
        packed = pack_padded_sequence(
            shifted, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, h_n = self.gru(packed)  # (layers * directions, B, hidden)
        last = h_n[-self.directions :].transpose(0, 1).reshape(batch, -1)
        last = last * (lengths > 0).unsqueeze(1).to(last.dtype)
        return self.project(last)


@register_encoder("image_cnn")
class ImageCNN(nn.Module):
    """Small CNN for images ``(B, C, H, W) → (B, output_dim)``.

    Two 3×3 convolutions with ReLU (the second with stride 2), global average pooling over the
    positions, and a linear projection. Any image size works (pooling removes H and W); images
    smaller than 3×3 are padded by the convolutions.
    """

    def __init__(self, in_channels: int, channels: int = 16, output_dim: int = 32) -> None:
        super().__init__()
        _check_sizes(
            "ImageCNN",
            (("in_channels", in_channels), ("channels", channels), ("output_dim", output_dim)),
        )
        self.in_channels = in_channels
        self.output_dim = output_dim
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.project = nn.Linear(2 * channels, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ImageCNN expects images of shape (batch, {self.in_channels}, height, width), "
                f"got {tuple(x.shape)}"
            )
        return self.project(self.features(x).mean(dim=(2, 3)))
