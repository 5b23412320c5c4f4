"""Encoders: shapes, translation invariance of the sequence CNN, clear shape errors."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from interfuse.encoders import MLP, SequenceCNN, SequenceGRU, _ConvGlobalMax, build_encoder


def one_hot(codes: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(codes, 4).permute(0, 2, 1).float()


def test_sequence_cnn_sees_a_motif_anywhere():
    torch.manual_seed(0)
    cnn = SequenceCNN(channels=8, kernel_size=5, output_dim=6, dropout=0)
    background = torch.zeros(60, dtype=torch.long)  # all 'A'
    motif = torch.tensor([1, 2, 3, 2, 1])
    early, late = background.clone(), background.clone()
    early[10:15] = motif
    late[40:45] = motif
    out = cnn(one_hot(torch.stack([early, late])))
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], out[1])  # global max pooling: position does not matter


def generic_cnn(cnn: SequenceCNN, x: torch.Tensor) -> torch.Tensor:
    """SequenceCNN's math in autograd's generic operators: conv → ReLU → amax → Linear."""
    return cnn.project(torch.relu(cnn.conv(x)).amax(dim=-1))


@pytest.mark.parametrize("kernel_size", [9, 4, 1])
def test_sequence_cnn_matches_the_generic_form(kernel_size):
    """The sparse max-pool backward gives autograd's gradients (one-hot input, as in the demo,
    and an input that requires grad)."""
    torch.manual_seed(kernel_size)
    cnn = SequenceCNN(channels=6, kernel_size=kernel_size, output_dim=5, dropout=0).double()
    ref = copy.deepcopy(cnn)
    x = one_hot(torch.randint(0, 4, (7, 30))).double()
    x = (x + 0.1 * torch.randn_like(x)).requires_grad_()  # no exact ties
    x_ref = x.detach().clone().requires_grad_()
    g = torch.randn(7, 5, dtype=torch.float64)
    out, expected = cnn(x), generic_cnn(ref, x_ref)
    torch.testing.assert_close(out, expected)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    for (name, p), (_, q) in zip(cnn.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_conv_global_max_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 11, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _ConvGlobalMax.apply(x, w, b, 1), (x, w, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sequence_cnn_backward_of_a_low_precision_input_under_autocast(dtype):
    """A half-precision input under autocast (the generic form's conv accepts it) used to fail
    in the sparse backward: ``expected scalar type Float but found BFloat16``."""
    torch.manual_seed(5)
    cnn = SequenceCNN(channels=4, kernel_size=3, output_dim=2, dropout=0)
    ref = copy.deepcopy(cnn)
    x = one_hot(torch.randint(0, 4, (3, 12)))
    x = (x + 0.3 * torch.randn_like(x)).to(dtype).requires_grad_()  # no ties
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = cnn(x), generic_cnn(ref, x_ref)
    out.float().sum().backward()
    expected.float().sum().backward()
    for (name, p), (_, q) in zip(cnn.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0.02, atol=0.02, msg=name)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0.02, atol=0.02)


def test_sequence_cnn_ties_between_equal_windows():
    """A repeated k-mer ties the maximum: amax splits the gradient between equal windows, the
    sparse backward takes one of them — the same weight gradient."""
    torch.manual_seed(3)
    cnn = SequenceCNN(channels=4, kernel_size=3, output_dim=2, dropout=0)
    ref = copy.deepcopy(cnn)
    codes = torch.zeros(2, 20, dtype=torch.long)
    codes[:, 3:6] = codes[:, 12:15] = torch.tensor([1, 2, 3])
    x = one_hot(codes)
    (cnn(x).sum()).backward()
    (generic_cnn(ref, x).sum()).backward()
    torch.testing.assert_close(cnn.conv.weight.grad, ref.conv.weight.grad)


def test_sequence_cnn_generic_form_for_other_convolutions():
    """A convolution changed after construction (here: strided) runs the generic form."""
    torch.manual_seed(4)
    cnn = SequenceCNN(channels=3, kernel_size=3, output_dim=2, dropout=0)
    cnn.conv.stride = (2,)
    x = one_hot(torch.randint(0, 4, (2, 15)))
    torch.testing.assert_close(cnn(x), generic_cnn(cnn, x))
    cnn.conv.stride = (1,)
    cnn.activation = nn.Tanh()
    expected = cnn.project(torch.tanh(cnn.conv(x)).amax(dim=-1))
    torch.testing.assert_close(cnn(x), expected)


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


def test_sequence_cnn_dropout_acts_in_training_only():
    torch.manual_seed(0)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (16, 30)), 4).transpose(1, 2).float()
    cnn = build_encoder({"type": "sequence_cnn", "channels": 8, "output_dim": 4, "dropout": 0.5})
    plain = SequenceCNN(channels=8, output_dim=4, dropout=0)
    plain.load_state_dict(cnn.state_dict())  # same parameters: dropout adds none
    cnn.train()
    assert not torch.equal(cnn(x), plain(x))
    cnn.eval()
    torch.testing.assert_close(cnn(x), plain(x))
    with pytest.raises(ValueError, match="dropout must be in"):
        SequenceCNN(dropout=1.0)
    assert SequenceCNN().dropout.p == 0.25  # on by default (docs/training.md)


@pytest.mark.parametrize("kind", [["mlp"], {"name": "mlp"}])
def test_an_unhashable_encoder_type_is_a_clear_error(kind):
    """A spec whose "type" is a list or dict (an edited model description) used to escape as
    ``TypeError: unhashable type`` from the registry lookup."""
    with pytest.raises(ValueError, match="modality 'a': unknown encoder type"):
        build_encoder({"type": kind, "input_dim": 3}, "a")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "sequence_cnn", "channels": 2.5}, "SequenceCNN: channels must be an integer"),
        ({"type": "sequence_cnn", "kernel_size": "9"}, "SequenceCNN: kernel_size must be an int"),
        ({"type": "image_cnn", "in_channels": 3.0}, "ImageCNN: in_channels must be an integer"),
        ({"type": "sequence_gru", "input_dim": 3, "hidden": 4.5}, "SequenceGRU: hidden must be"),
        ({"type": "mlp", "input_dim": "3"}, r"layer sizes must be integers >= 1"),
        ({"type": "mlp", "input_dim": 3, "output_dim": 2.0}, r"layer sizes must be integers"),
        ({"type": "mlp", "input_dim": 3, "hidden": 64}, r"hidden.*list of layer sizes"),
    ],
)
def test_encoder_sizes_of_the_wrong_type_are_one_clear_error(spec, message):
    """Sizes given as floats or strings used to fail inside torch ("out_channels must be
    divisible by groups" for channels=2.5, "empty(): argument 'size' failed to unpack ...") or
    with a bare comparison error."""
    with pytest.raises(ValueError, match=message) as error:
        build_encoder(spec, "a")
    assert "\n" not in str(error.value)


def test_docs_state_the_sequence_cnns_default_dropout():
    """docs/model.md's encoder table said "default 0" while the default is 0.25."""
    text = (Path(__file__).parents[1] / "docs" / "model.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `SequenceCNN`"))
    assert f"default {SequenceCNN().dropout.p:g}" in row
