"""vBN and centring: batch moments in training, running statistics in evaluation."""

import numpy as np
import pytest
import torch

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


def test_vbn_running_statistics_converge():
    torch.manual_seed(3)
    vbn = VectorBatchNorm(4)
    for _ in range(200):
        vbn(torch.randn(128, 4) * 2.0 + 1.0)
    torch.testing.assert_close(vbn.running_mean, torch.ones(4), atol=0.15, rtol=0)
    assert vbn.running_sq_norm.item() == pytest.approx(16.0, rel=0.1)
    assert vbn.num_batches_tracked.item() == 200


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
