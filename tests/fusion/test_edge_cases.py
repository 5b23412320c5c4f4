"""Boundaries the mutation runs showed unguarded: two present samples are enough for batch
statistics, one feature (or output) is a valid block, the head adds its bias, rank validation,
the mean over one or no present rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel
from interfuse.fusion.interactions import IterBN, outer_products
from interfuse.fusion.mnl import MNLFusion
from interfuse.fusion.norm import BatchCentering, VectorBatchNorm, masked_mean


def test_two_present_samples_give_batch_statistics_one_gives_running_ones():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]])
    two = torch.tensor([True, True, False])
    centre = BatchCentering(2, momentum=1.0).train()
    out = centre(x, two)
    torch.testing.assert_close(centre.running_mean, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out[:2], torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))
    one = torch.tensor([True, False, False])
    before = centre.running_mean.clone()
    centre(x, one)  # a single present sample: running statistics kept, not updated
    torch.testing.assert_close(centre.running_mean, before)


def test_iterbn_uses_the_batch_moment_with_exactly_two_samples():
    term = ("a", "b")
    iterbn = IterBN([term], rank=1, momentum=1.0).train()
    factors = {"a": torch.tensor([[1.0], [3.0]]), "b": torch.tensor([[2.0], [4.0]])}
    products = outer_products(factors, [term])
    means = iterbn.moments(products)
    torch.testing.assert_close(means[term].reshape(-1), torch.tensor([(2.0 + 12.0) / 2]))


def test_a_block_of_one_feature_is_valid_and_zero_features_are_not():
    vbn = VectorBatchNorm(1).train()
    out = vbn(torch.tensor([[1.0], [3.0]]))
    torch.testing.assert_close(out.pow(2).mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        VectorBatchNorm(0)


def test_the_head_adds_its_bias():
    head = MNLFusion({"a": 2}, num_outputs=1)
    with torch.no_grad():
        head.bias.fill_(5.0)
        head.blocks["a"].weight.fill_(1.0)
    z = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(head({"a": z}), torch.tensor([[8.0]]))
    no_bias = MNLFusion({"a": 2}, num_outputs=1, bias=False)
    with torch.no_grad():
        no_bias.blocks["a"].weight.fill_(1.0)
    torch.testing.assert_close(no_bias({"a": z}), torch.tensor([[3.0]]))


@pytest.mark.parametrize("rank", [0, -1, True, 2.5])
def test_model_rank_must_be_a_positive_integer(rank):
    with pytest.raises(ValueError, match="interaction rank must be an integer >= 1, got"):
        MultimodalModel(
            {"a": nn.Linear(2, 3), "b": nn.Linear(2, 3)}, rank=rank, encoder_dims={"a": 3, "b": 3}
        )


def test_head_block_of_one_feature_is_valid_zero_features_or_outputs_are_not():
    head = MNLFusion({"a": 1}, num_outputs=1)
    assert head({"a": torch.ones(3, 1)}).shape == (3, 1)
    with pytest.raises(ValueError, match="block 'a' has dimension 0"):
        MNLFusion({"a": 0}, num_outputs=1)
    with pytest.raises(ValueError, match="num_outputs must be >= 1, got 0"):
        MNLFusion({"a": 1}, num_outputs=0)


def test_centring_of_one_feature_is_valid_and_zero_features_are_not():
    centre = BatchCentering(1).train()
    torch.testing.assert_close(centre(torch.tensor([[1.0], [3.0]])), torch.tensor([[-1.0], [1.0]]))
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        BatchCentering(0)


def test_masked_mean_of_one_present_row_is_that_row_and_of_none_is_zero():
    x = torch.tensor([[1.0, 2.0], [5.0, 7.0]])
    mean, count = masked_mean(x, torch.tensor([False, True]))
    assert count == 1
    torch.testing.assert_close(mean, torch.tensor([5.0, 7.0]))
    mean, count = masked_mean(x, torch.tensor([False, False]))
    assert count == 0
    torch.testing.assert_close(mean, torch.zeros(2))  # zero, not 0/0
