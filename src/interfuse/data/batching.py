"""In-memory multimodal datasets as dicts of tensors, splits, and seeded batch iteration.

Batches are gathered with one index operation per modality (no per-sample Python work, no
collate), so the data pipeline never dominates training time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class TensorData(Dataset):
    """Samples as ``inputs = {modality: (N, ...)}`` and ``targets = (N,)`` or ``(N, k)``.

    Indexing with a 1-D index tensor returns a whole batch ``(inputs, targets)``.
    """

    inputs: dict[str, Tensor]
    targets: Tensor

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("a dataset needs at least one modality")
        n = len(self.targets)
        for m, x in self.inputs.items():
            if not isinstance(x, Tensor):
                raise TypeError(f"modality {m!r}: expected a torch.Tensor, got {type(x).__name__}")
            if x.shape[0] != n:
                raise ValueError(
                    f"modality {m!r} has {x.shape[0]} samples but there are {n} targets"
                )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return {m: x[index] for m, x in self.inputs.items()}, self.targets[index]

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def subset(self, index: Sequence[int] | np.ndarray | Tensor) -> TensorData:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return TensorData({m: x[index] for m, x in self.inputs.items()}, self.targets[index])


def split_indices(
    n: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/validation/test index split, stratified by ``stratify`` labels if given."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(n)]
        if stratify is None
        else [np.flatnonzero(stratify == c) for c in np.unique(stratify)]
    )
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        group = rng.permutation(group)
        cut_train = int(round(fractions[0] * len(group)))
        cut_val = cut_train + int(round(fractions[1] * len(group)))
        for part, piece in zip(parts, np.split(group, [cut_train, cut_val])):
            part.append(piece)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    if len(train) < 2 or len(val) < 1 or len(test) < 1:
        raise ValueError(
            f"{n} samples are too few to split into train/val/test with fractions {fractions}"
        )
    return train, val, test


class EpochBatchSampler(Sampler[Tensor]):
    """Yields index batches; epoch e is shuffled with a generator seeded by ``(seed, e)``.

    The epoch counter advances on every pass, starting at ``start_epoch``: a resumed run sees
    exactly the batches an uninterrupted run would, with no RNG state to save. Incomplete final
    batches are dropped when shuffling (batch statistics need more than one sample).
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int = 0, start_epoch: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = start_epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.shuffle else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
            self.epoch += 1
        else:
            order = torch.arange(self.n)
        yield from (
            order[: len(self) * self.batch_size].split(self.batch_size)
            if self.shuffle
            else order.split(self.batch_size)
        )


def batch_loader(
    data: TensorData, batch_size: int, shuffle: bool, seed: int = 0, start_epoch: int = 0
) -> DataLoader:
    """A DataLoader yielding whole ``(inputs, targets)`` batches gathered by index."""
    sampler = EpochBatchSampler(len(data), batch_size, shuffle, seed, start_epoch)
    return DataLoader(data, batch_size=None, sampler=sampler, collate_fn=_identity)


def _identity(batch: tuple[Mapping[str, Tensor], Tensor]) -> tuple[Mapping[str, Tensor], Tensor]:
    return batch
