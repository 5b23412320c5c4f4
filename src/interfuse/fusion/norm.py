"""Batch statistics without affine parameters: centring and vector-wise batch norm (vBN).

Both keep running statistics for evaluation, like :class:`torch.nn.BatchNorm1d`, and neither has
a learnable shift or scale: a shift would re-introduce the mean that centring removes (and so leak
lower-order signal into tensor products), and a scale would make weight norms incomparable.

Distributed training: batch moments are per process by default (like ``BatchNorm``). With
``sync_stats`` on (:func:`set_sync_stats`, ``--sync-stats``) every moment is computed over the
union of the processes' batches, as :class:`torch.nn.SyncBatchNorm` does: each process sums its
present rows, ``Σ_r Σ_{i present} x_i`` and ``Σ_r n_r`` are all-reduced, and the mean is their
quotient. The all-reduce of the sums is differentiable (its backward all-reduces the gradients),
so P processes with batch b compute the same values and gradients as one process with batch P·b.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _check_batch(x: Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name} expects input of shape (batch, ...), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(
            f"{name} needs a batch of at least 2 samples in training mode (it uses batch "
            f"statistics), got {x.shape[0]}; use a larger batch or call model.eval()"
        )


def distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SumOverProcesses(torch.autograd.Function):
    """``Σ_r x_r`` over the processes; the gradient of every ``x_r`` is ``Σ_r ∂L_r/∂(Σ x)``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]  # noqa: D102
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]  # noqa: D102
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def present_count(x: Tensor, present: Tensor | None, sync: bool = False) -> int:
    """Number of samples where ``present`` is true (all of ``x``'s rows for ``None``); with
    ``sync`` in a process group, the total over all processes."""
    local = x.shape[0] if present is None else int(present.sum())
    if not (sync and distributed()):
        return local
    count = torch.tensor([local], dtype=torch.float64, device=x.device)
    dist.all_reduce(count)
    return int(count.item())


def masked_mean(
    x: Tensor, present: Tensor | None, sync: bool = False, count: int | None = None
) -> tuple[Tensor, int]:
    """Mean over the batch axis of the samples where ``present`` (bool, ``(B,)``) is true.

    Returns ``(mean, count)``; ``present=None`` means every sample. With ``sync`` in a process
    group, ``mean = all_reduce(Σ_i present_i x_i) / all_reduce(n)`` over all processes
    (differentiable; ``count``, when given, is the already reduced n).
    """
    if not (sync and distributed()):
        if present is None:
            return x.mean(dim=0), x.shape[0]
        local = int(present.sum()) if count is None else count
        weights = present.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (x * weights).sum(dim=0) / max(local, 1), local
    total_count = present_count(x, present, sync=True) if count is None else count
    if present is None:
        local_sum = x.sum(dim=0)
    else:
        local_sum = (x * present.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))).sum(dim=0)
    return _SumOverProcesses.apply(local_sum) / max(total_count, 1), total_count


def use_batch_statistics(
    module: nn.Module, x: Tensor, present: Tensor | None, sync: bool = False
) -> tuple[bool, int]:
    """``(training mode with enough present samples for batch statistics, present count)``.

    Without a mask a training batch of < 2 samples is an error. With a mask, fewer than 2 present
    samples fall back to the running statistics (which are then not updated), so a batch in
    which a modality is (almost) entirely missing still trains the other terms. With ``sync`` the
    count is over all processes (every process takes the same decision).
    """
    if not module.training:
        return False, 0
    if present is None:
        _check_batch(x, type(module).__name__)
    count = present_count(x, present, sync)
    return (present is None or count >= 2), count


def set_sync_stats(module: nn.Module, sync: bool) -> None:
    """Switch batch moments of every centring, vBN and IterBN inside ``module`` to all
    processes (``True``) or this process (``False``); see the module docstring."""
    for child in module.modules():
        if hasattr(child, "sync_stats"):
            child.sync_stats = sync


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
        self.sync_stats = False  # batch moments over all processes (set_sync_stats)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.num_batches_tracked.zero_()

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Centre ``x``; statistics use only the samples where ``present`` is true."""
        batch, count = use_batch_statistics(self, x, present, self.sync_stats)
        if not batch:
            return x - self.running_mean
        mean, _ = masked_mean(x, present, self.sync_stats, count)
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
        self.sync_stats = False  # batch moments over all processes (set_sync_stats)
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
        batch, count = use_batch_statistics(self, u, present, self.sync_stats)
        if batch:
            mean, n = masked_mean(flat, present, self.sync_stats, count)
            centred = flat - mean
            sq_norm, _ = masked_mean(centred.pow(2).sum(dim=1), present, self.sync_stats, count)
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
