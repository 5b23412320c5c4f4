"""In-memory multimodal datasets as dicts of tensors, splits, and seeded batch iteration.

Batches are gathered with one index operation per modality (no per-sample Python work, no
collate), so the data pipeline never dominates training time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

Batch = tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]
"""``(inputs, targets, masks)``: ``masks`` maps modalities missing for some samples to a bool
``(B,)`` presence tensor (True = present); it is empty when every sample has every modality."""


class ModalitySplit(Dataset):
    """What every split offers besides its batches: modality names and presence counts, from
    ``inputs`` (``{modality: (N, ...)}``) and ``masks`` (``{modality: bool (N,)}``, only for
    modalities missing somewhere)."""

    inputs: Mapping[str, Any]
    masks: Mapping[str, Any]

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def present_counts(self) -> dict[str, int]:
        """How many samples have each modality."""
        n = len(self)  # type: ignore[arg-type]
        return {m: int(self.masks[m].sum()) if m in self.masks else n for m in self.inputs}


@dataclass
class TensorData(ModalitySplit):
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
    shuffled = [rng.permutation(group) for group in groups]
    sizes = np.array([len(g) for g in shuffled])
    cut_train = np.rint(fractions[0] * sizes).astype(np.int64)
    cut_val = cut_train + np.rint(fractions[1] * sizes).astype(np.int64)
    # rounded per class, the cuts can add up to other split sizes than an unstratified split
    # (10 classes of 3: no validation sample at all); move the cuts of the classes furthest
    # from their share until they add up to the split sizes of the whole
    total_train = int(round(fractions[0] * n))
    _fit_cuts(cut_train, fractions[0] * sizes, total_train, np.zeros_like(sizes), sizes)
    np.maximum(cut_val, cut_train, out=cut_val)
    total_val = min(n, total_train + int(round(fractions[1] * n)))
    _fit_cuts(cut_val, (fractions[0] + fractions[1]) * sizes, total_val, cut_train, sizes)
    parts: list[list[np.ndarray]] = [[], [], []]
    for group, a, b in zip(shuffled, cut_train, cut_val):
        for part, piece in zip(parts, np.split(group, [a, b])):
            part.append(piece)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    if len(train) < 2 or len(val) < 1 or len(test) < 1:
        raise ValueError(
            f"{n} samples are too few to split into train/val/test with fractions {fractions}"
        )
    return train, val, test


def _fit_cuts(
    cuts: np.ndarray, shares: np.ndarray, total: int, low: np.ndarray, high: np.ndarray
) -> None:
    """In place: change ``cuts`` (within ``low .. high``) one at a time until they sum to
    ``total``, each time the one furthest below (or above) its share."""
    while (surplus := int(cuts.sum()) - total) != 0:
        step = 1 if surplus < 0 else -1
        gap = (shares - cuts) * step
        gap[(cuts + step < low) | (cuts + step > high)] = -np.inf
        cuts[int(np.argmax(gap))] += step


class EpochBatchSampler(Sampler[Tensor]):
    """Yields index batches; epoch e is shuffled with a generator seeded by ``(seed, e)``.

    The epoch counter advances on every pass, starting at ``start_epoch``: a resumed run sees
    exactly the batches an uninterrupted run would, with no RNG state to save. Incomplete final
    batches are dropped when shuffling (batch statistics need more than one sample).

    Distributed training (``world_size`` P > 1, this process ``rank``): every process draws the
    same permutation and cuts it into *global* batches of ``P · batch_size`` samples; process r
    takes the r-th slice of ``batch_size`` of each. The union of the P batches of a step is the
    batch one process with ``P · batch_size`` would see, every sample is used at most once per
    epoch (exactly once but for the dropped incomplete global batch), and no sample is padded or
    repeated. Without shuffling (evaluation) the whole order is cut into P contiguous parts.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        start_epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if shuffle and world_size > 1 and n < world_size * 2:
            raise ValueError(
                f"{n} training samples are too few for {world_size} processes with batches of at "
                f"least 2"
            )
        self.n = n
        self.world_size = world_size
        self.rank = rank
        self.batch_size = min(batch_size, n // world_size if shuffle else n)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = start_epoch

    def _part(self) -> tuple[int, int]:
        """``[start, stop)`` of this process's contiguous part of the unshuffled order."""
        base, extra = divmod(self.n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def __len__(self) -> int:
        if self.shuffle:
            return self.n // (self.batch_size * self.world_size)
        start, stop = self._part()
        return -(-(stop - start) // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if not self.shuffle:
            start, stop = self._part()
            if stop > start:  # (an empty part would split into one empty batch)
                yield from torch.arange(start, stop).split(self.batch_size)
            return
        # within torch's 64-bit seeds (unchanged below 2**63) for any seed of a run
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order = torch.randperm(self.n, generator=generator)
        self.epoch += 1
        step = self.batch_size * self.world_size
        batches = order[: len(self) * step].view(len(self), self.world_size, self.batch_size)
        yield from batches[:, self.rank].unbind(0)


def batch_loader(
    data: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    start_epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding whole :data:`Batch` es ``(inputs, targets, masks)`` by index.

    ``data`` is a :class:`TensorData` or any dataset indexed by a 1-D index tensor (the lazily
    read :class:`~interfuse.data.lazy.LazyData`). ``rank``/``world_size``: this process's share in
    distributed training (see :class:`EpochBatchSampler`); ``pin_memory`` for CUDA transfers.
    """
    sampler = EpochBatchSampler(len(data), batch_size, shuffle, seed, start_epoch, rank, world_size)
    return DataLoader(
        data, batch_size=None, sampler=sampler, collate_fn=_identity, pin_memory=pin_memory
    )


def _identity(batch: Batch) -> Batch:
    return batch
