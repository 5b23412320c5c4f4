"""In-memory batching: seeded epochs, resumable order, stratified splits, shape checks."""

import numpy as np
import pytest
import torch

from interfuse.data.batching import EpochBatchSampler, TensorData, batch_loader, split_indices


def test_epoch_order_depends_only_on_seed_and_epoch():
    full = EpochBatchSampler(50, 8, shuffle=True, seed=3)
    epochs = [torch.cat(list(full)) for _ in range(3)]
    assert not torch.equal(epochs[0], epochs[1])
    resumed = EpochBatchSampler(50, 8, shuffle=True, seed=3, start_epoch=2)
    assert torch.equal(torch.cat(list(resumed)), epochs[2])
    assert len(full) == 6 and all(len(b) == 8 for b in EpochBatchSampler(50, 8, True))


def test_unshuffled_batches_cover_everything_in_order():
    batches = list(EpochBatchSampler(10, 4, shuffle=False))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.arange(10))


def test_loader_yields_whole_batches():
    data = TensorData(
        {"a": torch.arange(20.0).reshape(10, 2), "b": torch.zeros(10, 3)}, torch.arange(10)
    )
    inputs, targets, masks = next(iter(batch_loader(data, 4, shuffle=False)))
    assert masks == {}
    assert inputs["a"].shape == (4, 2) and torch.equal(targets, torch.arange(4))


def test_stratified_split_is_disjoint_complete_and_balanced():
    labels = np.array([0] * 80 + [1] * 20)
    train, val, test = split_indices(100, (0.6, 0.2, 0.2), seed=1, stratify=labels)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    assert labels[train].mean() == pytest.approx(0.2) and labels[test].mean() == pytest.approx(0.2)
    again = split_indices(100, (0.6, 0.2, 0.2), seed=1, stratify=labels)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))


@pytest.mark.parametrize("classes, per_class", [(10, 3), (20, 10), (2, 10), (3, 7)])
def test_stratified_split_sizes_are_those_of_the_whole(classes, per_class):
    # rounded per class, 10 classes of 3 left no validation sample (a ValueError) and 20 classes
    # of 10 gave val 40 and test 20 samples instead of 30 and 30
    labels = np.repeat(np.arange(classes), per_class)
    n = len(labels)
    parts = split_indices(n, seed=2, stratify=labels)
    unstratified = split_indices(n, seed=2)
    assert [len(p) for p in parts] == [len(p) for p in unstratified]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    for part, fraction in zip(parts, (0.7, 0.15, 0.15)):
        counts = np.bincount(labels[part], minlength=classes)
        assert np.all(np.abs(counts - fraction * per_class) < 1)


def test_bad_data_is_reported():
    with pytest.raises(ValueError, match="modality 'b' has 4 samples but there are 5 targets"):
        TensorData({"a": torch.zeros(5, 1), "b": torch.zeros(4, 1)}, torch.zeros(5))
    with pytest.raises(ValueError, match="too few"):
        split_indices(3)
    with pytest.raises(ValueError, match="fractions"):
        split_indices(100, (0.5, 0.5, 0.5))


def test_any_seed_of_a_run_shuffles():
    # a run's seed is any integer >= 0: seed * 1_000_003 + epoch overflowed torch's 64-bit seed
    # (ValueError: Overflow when unpacking long long) from seeds of about 1.8e13 on
    for seed in (2**45, 2**63 + 5):
        batches = list(EpochBatchSampler(10, 4, shuffle=True, seed=seed, start_epoch=3))
        assert [len(b) for b in batches] == [4, 4] and len(torch.cat(batches).unique()) == 8


def test_an_empty_unshuffled_part_has_no_batch():
    # fewer samples than processes: torch.split of an empty part yielded one empty batch,
    # although len() said 0
    parts = [EpochBatchSampler(2, 4, shuffle=False, rank=r, world_size=3) for r in range(3)]
    assert [len(p) for p in parts] == [1, 1, 0]
    assert [[b.tolist() for b in p] for p in parts] == [[[0]], [[1]], []]
