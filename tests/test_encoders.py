"""Encoders: shapes, translation invariance of the sequence CNN, clear shape errors."""

import pytest
import torch

from interfuse.encoders import MLP, SequenceCNN, SequenceGRU, build_encoder


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


def front_pad(rows: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.cat([torch.zeros(steps - len(rows), rows.shape[1]), rows])


def test_sequence_gru_lengths_from_front_padding():
    x = torch.zeros(3, 5, 2)
    x[0, 2:] = 1.0  # length 3
    x[1, 1] = 1.0  # a zero row after the first non-zero row still counts: length 4
    # x[2] is all zeros: length 0
    assert SequenceGRU.lengths(x).tolist() == [3, 4, 0]


def test_sequence_gru_ignores_padding():
    torch.manual_seed(0)
    gru = SequenceGRU(3, hidden=6, output_dim=4)
    rows = torch.randn(4, 3)
    short, long = front_pad(rows, 5), front_pad(rows, 11)
    torch.testing.assert_close(gru(short[None]), gru(long[None]))
    batch = torch.stack([front_pad(rows, 7), front_pad(rows[:2], 7)])
    out = gru(batch)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[0], gru(rows[None])[0])
    torch.testing.assert_close(out[1], gru(rows[None, :2])[0])


def test_sequence_gru_all_zero_sequence():
    gru = SequenceGRU(3, hidden=5, output_dim=2, bidirectional=True, num_layers=2)
    x = torch.randn(2, 4, 3)
    x[1] = 0.0
    out = gru(x)
    torch.testing.assert_close(out[1], gru.project.bias)  # zero hidden state -> bias
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gru.parameters() if p.grad is not None)


def test_sequence_gru_errors_and_spec():
    gru = build_encoder({"type": "sequence_gru", "input_dim": 3, "output_dim": 7}, "audio")
    assert isinstance(gru, SequenceGRU) and gru.output_dim == 7
    with pytest.raises(ValueError, match=r"shape \(batch, time, 3\)"):
        gru(torch.randn(2, 3))
    with pytest.raises(ValueError, match="input_dim"):
        SequenceGRU(0)
    with pytest.raises(ValueError, match="dropout"):
        SequenceGRU(3, dropout=1.5)
