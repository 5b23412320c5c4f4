"""vBN and centring: batch moments in training, running statistics in evaluation."""

import numpy as np
import pytest
import torch

from interfuse.fusion.interactions import IterBN
from interfuse.fusion.norm import BatchCentering, VectorBatchNorm


def test_vbn_train_mode_moments():
    x = torch.randn(64, 10, dtype=torch.float64) * torch.linspace(0.1, 5, 10) + 3.0
    out = VectorBatchNorm(10, eps=0.0).double()(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(10, dtype=torch.float64))
    assert out.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=1e-12)
    # One scalar scale: the shape of the cloud is kept (ratios of coordinate spreads unchanged).
    ratio = out.std(0) / x.std(0)
    torch.testing.assert_close(ratio, ratio[0].expand(10))


def test_vbn_accepts_tensor_blocks():
    x = torch.randn(32, 3, 3, 3, dtype=torch.float64)
    out = VectorBatchNorm(27, eps=0.0).double()(x)
    assert out.shape == x.shape
    assert out.pow(2).flatten(1).sum(1).mean().item() == pytest.approx(1.0)


def test_vbn_eval_uses_running_statistics():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(40, 6))
    vbn = VectorBatchNorm(6, eps=1e-5, momentum=1.0).double()
    vbn(torch.tensor(x))
    vbn.eval()
    y = np.random.default_rng(2).normal(size=(7, 6))
    out = vbn(torch.tensor(y)).numpy()
    mean = x.mean(0)
    sq_norm = ((x - mean) ** 2).sum(1).sum() / (len(x) - 1)  # unbiased, as BatchNorm
    np.testing.assert_allclose(out, (y - mean) / np.sqrt(sq_norm + 1e-5), rtol=1e-12)


def test_vbn_running_statistics_follow_the_momentum_recursion_with_unbiased_norm():
    """running ← (1 − m)·running + m·batch, with the unbiased E‖u − E u‖² (n − 1), exactly."""
    gen = torch.Generator().manual_seed(3)
    vbn = VectorBatchNorm(4, momentum=0.25).double()
    mean, sq_norm = torch.zeros(4, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    for n in (5, 8, 3):  # small batches: n/(n − 1) is far from 1
        x = torch.randn(n, 4, generator=gen, dtype=torch.float64) * 2.0 + 1.0
        vbn(x)
        batch_sq = (x - x.mean(0)).pow(2).sum() / (n - 1)
        mean = 0.75 * mean + 0.25 * x.mean(0)
        sq_norm = 0.75 * sq_norm + 0.25 * batch_sq
    torch.testing.assert_close(vbn.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vbn.running_sq_norm, sq_norm, rtol=1e-12, atol=1e-12)
    assert vbn.num_batches_tracked.item() == 3


def test_reset_running_stats_restores_the_initial_buffers():
    vbn, centring = VectorBatchNorm(3), BatchCentering(3)
    fresh = {k: v.clone() for k, v in (*vbn.state_dict().items(), *centring.state_dict().items())}
    for module in (vbn, centring):
        module(torch.randn(6, 3) + 5.0)
    assert vbn.running_sq_norm.item() != 3.0 and centring.running_mean.abs().min() > 0
    vbn.reset_running_stats()
    centring.reset_running_stats()
    after = {k: v for k, v in (*vbn.state_dict().items(), *centring.state_dict().items())}
    for key, value in fresh.items():
        assert torch.equal(after[key], value), key
    assert vbn.running_sq_norm.item() == 3.0  # like BatchNorm's variance 1 per coordinate


def test_iterbn_reset_running_stats_zeroes_every_moment():
    wick = IterBN([("a", "b"), ("a", "b", "c")], rank=2)
    wick({m: torch.randn(5, 2) + 1.0 for m in "abc"})
    assert all(b.abs().sum() > 0 for n, b in wick.named_buffers() if n.startswith("running"))
    wick.reset_running_stats()
    for name, buffer in wick.named_buffers():
        assert not buffer.any(), name


def test_vbn_zero_block_stays_zero():
    out = VectorBatchNorm(5)(torch.zeros(8, 5))
    assert torch.equal(out, torch.zeros(8, 5))


def test_vbn_rejects_batch_of_one_in_training_and_wrong_width():
    vbn = VectorBatchNorm(3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        vbn(torch.randn(1, 3))
    with pytest.raises(ValueError, match="expects 3 features"):
        vbn(torch.randn(4, 5))
    vbn.eval()
    assert vbn(torch.randn(1, 3)).shape == (1, 3)


def test_centering_train_and_eval():
    x = torch.randn(50, 3, dtype=torch.float64) + torch.tensor(
        [1.0, -2.0, 5.0], dtype=torch.float64
    )
    c = BatchCentering(3, momentum=1.0).double()
    out = c(x)
    torch.testing.assert_close(out.mean(0), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(out, x - x.mean(0))  # no scaling
    c.eval()
    torch.testing.assert_close(c(x), x - x.mean(0))


def test_no_affine_parameters():
    assert list(VectorBatchNorm(4).parameters()) == []
    assert list(BatchCentering(4).parameters()) == []


def test_default_momentum_is_batch_norms_0_1():
    """From the initial running statistics one training batch moves them 0.1 of the way."""
    x = torch.randn(8, 3, dtype=torch.float64) + 2.0
    centring = BatchCentering(3).double()
    centring(x)
    torch.testing.assert_close(centring.running_mean, 0.1 * x.mean(0))
    vbn = VectorBatchNorm(3).double()
    vbn(x)
    torch.testing.assert_close(vbn.running_mean, 0.1 * x.mean(0))
    unbiased = (x - x.mean(0)).pow(2).sum(1).mean() * 8 / 7
    torch.testing.assert_close(vbn.running_sq_norm, 0.9 * 3.0 + 0.1 * unbiased)
