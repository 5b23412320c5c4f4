"""In-memory multimodal datasets as dicts of tensors, splits, and seeded batch iteration.

Batches are gathered with one index operation per modality (no per-sample Python work, no
collate), so the data pipeline never dominates training time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

Batch = tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]
"""``(inputs, targets, masks)``: ``masks`` maps modalities missing for some samples to a bool
``(B,)`` presence tensor (True = present); it is empty when every sample has every modality."""


@dataclass
class TensorData(Dataset):
    """Samples as ``inputs = {modality: (N, ...)}`` and ``targets = (N,)`` or ``(N, k)``.

    ``masks`` (optional) maps a modality to a bool ``(N,)`` tensor, True where the sample has it;
    the inputs of missing samples are ignored by models with a missing-modality path (they are
    kept finite, 0). Indexing with a 1-D index tensor returns a whole :data:`Batch`.
    """

    inputs: dict[str, Tensor]
    targets: Tensor
    masks: dict[str, Tensor] = field(default_factory=dict)

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
        for m, mask in self.masks.items():
            if m not in self.inputs:
                raise ValueError(f"mask given for unknown modality {m!r}")
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (n,):
                raise ValueError(
                    f"the mask of modality {m!r} must be a bool tensor of shape ({n},)"
                )
        # a modality present everywhere needs no mask
        self.masks = {m: mask for m, mask in self.masks.items() if not bool(mask.all())}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: Tensor) -> Batch:
        return (
            {m: x[index] for m, x in self.inputs.items()},
            self.targets[index],
            {m: mask[index] for m, mask in self.masks.items()},
        )

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def present_counts(self) -> dict[str, int]:
        """How many samples have each modality."""
        n = len(self)
        return {m: int(self.masks[m].sum()) if m in self.masks else n for m in self.inputs}

    def subset(self, index: Sequence[int] | np.ndarray | Tensor) -> TensorData:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        inputs, targets, masks = self[index]
        return TensorData(inputs, targets, masks)


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
    """A DataLoader yielding whole :data:`Batch` es ``(inputs, targets, masks)`` by index."""
    sampler = EpochBatchSampler(len(data), batch_size, shuffle, seed, start_epoch)
    return DataLoader(data, batch_size=None, sampler=sampler, collate_fn=_identity)


def _identity(batch: Batch) -> Batch:
    return batch
