"""Batch statistics without affine parameters: centring and vector-wise batch norm (vBN).

Both keep running statistics for evaluation, like :class:`torch.nn.BatchNorm1d`, and neither has
a learnable shift or scale: a shift would re-introduce the mean that centring removes (and so leak
lower-order signal into tensor products), and a scale would make weight norms incomparable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_batch(x: Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name} expects input of shape (batch, ...), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(
            f"{name} needs a batch of at least 2 samples in training mode (it uses batch "
            f"statistics), got {x.shape[0]}; use a larger batch or call model.eval()"
        )


def masked_mean(x: Tensor, present: Tensor | None) -> tuple[Tensor, int]:
    """Mean over the batch axis of the samples where ``present`` (bool, ``(B,)``) is true.

    Returns ``(mean, count)``; ``present=None`` means every sample.
    """
    if present is None:
        return x.mean(dim=0), x.shape[0]
    count = int(present.sum())
    weights = present.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (x * weights).sum(dim=0) / max(count, 1), count


def use_batch_statistics(module: nn.Module, x: Tensor, present: Tensor | None) -> bool:
    """Training mode with enough present samples for batch statistics.

    Without a mask a training batch of < 2 samples is an error. With a mask, fewer than 2 present
    samples fall back to the running statistics (which are then not updated), so a batch in
    which a modality is (almost) entirely missing still trains the other terms.
    """
    if not module.training:
        return False
    if present is None:
        _check_batch(x, type(module).__name__)
        return True
    return int(present.sum()) >= 2


class BatchCentering(nn.Module):
    """``x ↦ x − E[x]`` per feature: batch mean in training, running mean in evaluation.

    Shape: ``(B, D) → (B, D)``. This is batch norm without scaling and without affine parameters.
    """

    running_mean: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.num_batches_tracked.zero_()

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Centre ``x``; statistics use only the samples where ``present`` is true."""
        if not use_batch_statistics(self, x, present):
            return x - self.running_mean
        mean, _ = masked_mean(x, present)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.num_batches_tracked += 1
        return x - mean

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class VectorBatchNorm(nn.Module):
    """Vector-wise batch norm: ``vBN(u) = (u − E u) / sqrt(E‖u − E u‖² + ε)``.

    One scalar scale for the whole block (not one per coordinate) and no affine parameters, so
    every block leaves with unit expected squared norm whatever its dimension D; the norms of the
    MNL weight blocks acting on different blocks are then comparable.

    Shape: ``(B, *S) → (B, *S)`` with ``prod(S) = num_features``. Training uses batch statistics and
    updates running ones (``running_mean`` of shape ``S``; ``running_sq_norm``, the unbiased
    estimate of E‖u − E u‖², a scalar) with ``momentum``; evaluation uses the running ones.
    """

    running_mean: Tensor
    running_sq_norm: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        # Matches BatchNorm's initial running variance of 1 per coordinate.
        self.register_buffer("running_sq_norm", torch.tensor(float(num_features)))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_sq_norm.fill_(float(self.num_features))
        self.num_batches_tracked.zero_()

    def forward(self, u: Tensor, present: Tensor | None = None) -> Tensor:
        """Normalise ``u``; statistics use only the samples where ``present`` is true."""
        flat = u.reshape(u.shape[0], -1)
        if flat.shape[1] != self.num_features:
            raise ValueError(
                f"VectorBatchNorm expects {self.num_features} features per sample, got "
                f"{flat.shape[1]} (input shape {tuple(u.shape)})"
            )
        if use_batch_statistics(self, u, present):
            mean, n = masked_mean(flat, present)
            centred = flat - mean
            sq_norm, _ = masked_mean(centred.pow(2).sum(dim=1), present)
            with torch.no_grad():
                unbiased = sq_norm.detach() * n / (n - 1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_sq_norm.lerp_(unbiased.to(self.running_sq_norm.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            centred = flat - self.running_mean
            sq_norm = self.running_sq_norm
        return (centred / torch.sqrt(sq_norm + self.eps)).reshape(u.shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
