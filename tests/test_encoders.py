"""Encoders: shapes, translation invariance of the sequence CNN, clear shape errors."""

import pytest
import torch

from interfuse.encoders import MLP, SequenceCNN


def one_hot(codes: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(codes, 4).permute(0, 2, 1).float()


def test_sequence_cnn_sees_a_motif_anywhere():
    torch.manual_seed(0)
    cnn = SequenceCNN(channels=8, kernel_size=5, output_dim=6)
    background = torch.zeros(60, dtype=torch.long)  # all 'A'
    motif = torch.tensor([1, 2, 3, 2, 1])
    early, late = background.clone(), background.clone()
    early[10:15] = motif
    late[40:45] = motif
    out = cnn(one_hot(torch.stack([early, late])))
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], out[1])  # global max pooling: position does not matter


def test_sequence_cnn_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"one-hot input of shape \(batch, 4, length\)"):
        SequenceCNN()(torch.randn(3, 100))


def test_mlp_shapes_and_errors():
    mlp = MLP(5, hidden=(7, 3), output_dim=2, dropout=0.1)
    assert mlp(torch.randn(4, 5)).shape == (4, 2)
    assert mlp.output_dim == 2
    with pytest.raises(ValueError, match=r"shape \(batch, 5\)"):
        mlp(torch.randn(4, 6))
    with pytest.raises(ValueError, match="dropout"):
        MLP(5, dropout=1.0)
    with pytest.raises(ValueError, match="layer sizes"):
        MLP(0)
