"""A training step of the one-Function head: blocks computed when first read (``StepBlocks``),
gradients like the reference's when the task loss and Ω_p are backpropagated separately, and
first derivatives only under ``create_graph=True``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from interfuse import MultimodalModel
from interfuse.fusion.pairwise import StepBlocks

BATCH = 10
LAM = 0.3
CONFIGS = [(3, "none"), (3, "pairs"), (3, 3)]  # K = 1, pairs, pairs + triple


def build(m: int, interactions, p: float = 2.0):
    torch.manual_seed(3)
    names = [f"m{i}" for i in range(m)]
    model = MultimodalModel(
        {n: nn.Identity() for n in names},
        interactions=interactions,
        rank=3,
        num_outputs=3,
        p=p,
        encoder_dims={n: 4 for n in names},
    ).double()
    assert model.fusion_plan().pairwise
    gen = torch.Generator().manual_seed(4)
    x = {n: torch.randn(BATCH, 4, generator=gen, dtype=torch.float64) for n in names}
    y = torch.arange(BATCH) % 3
    return model, x, y


def inputs(x):
    return {n: t.clone().requires_grad_() for n, t in x.items()}


def grads(model, x_in):
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out.update({f"input {n}": t.grad.clone() for n, t in x_in.items()})
    return out


def assert_same_grads(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("omega_first", [False, True], ids=["loss-first", "omega-first"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_omega_and_loss_differentiated_in_separate_backward_passes(config, omega_first, reference):
    """Ω_p and the task loss of one step backpropagated one after the other, without
    ``retain_graph`` (the first pass frees the head's saved tensors): the gradients add up to
    those of the reference's summed loss."""
    model, x, y = build(*config)
    ref = copy.deepcopy(model)
    ours_in, ref_in = inputs(x), inputs(x)
    out = model.fuse(ours_in)
    omega = model.regularizer()
    parts = [
        lambda: F.cross_entropy(out.prediction, y).backward(),
        lambda: (LAM * omega).backward(),
    ]
    for part in parts[::-1] if omega_first else parts:
        part()
    ref_prediction, _ = reference.reference_fuse(ref, ref_in)
    (F.cross_entropy(ref_prediction, y) + LAM * reference.regularizer(ref)).backward()
    assert_same_grads(grads(model, ours_in), grads(ref, ref_in))


def test_first_derivatives_with_create_graph_and_no_second_derivative(reference):
    """``create_graph=True`` (a gradient penalty) gets the same first derivatives; a second
    derivative through the head raises instead of being silently wrong."""
    model, x, y = build(3, "pairs")
    ref = copy.deepcopy(model)
    ours_in, ref_in = inputs(x), inputs(x)
    out = model.fuse(ours_in)
    loss = F.cross_entropy(out.prediction, y) + LAM * model.regularizer()
    first = torch.autograd.grad(loss, list(ours_in.values()), create_graph=True)
    ref_prediction, _ = reference.reference_fuse(ref, ref_in)
    ref_loss = F.cross_entropy(ref_prediction, y) + LAM * reference.regularizer(ref)
    expected = torch.autograd.grad(ref_loss, list(ref_in.values()))
    for a, b in zip(first, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        sum(g.square().sum() for g in first).backward()


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_step_blocks_are_a_mapping_computed_when_first_read(config, reference):
    model, x, _ = build(*config)
    ref = copy.deepcopy(model)
    out = model.fuse(inputs(x))
    blocks = out.blocks
    assert isinstance(blocks, StepBlocks) and "when first read" in repr(blocks)
    assert list(blocks) == model.term_names and len(blocks) == len(model.term_names)
    _, ref_blocks = reference.reference_fuse(ref, inputs(x))
    for name, value in dict(blocks).items():
        torch.testing.assert_close(value, ref_blocks[name], rtol=1e-10, atol=1e-12, msg=name)
    assert blocks["m0"] is blocks["m0"]  # computed once
    assert "computed)" in repr(blocks)
    with pytest.raises(KeyError):
        blocks["nope"]


def test_step_blocks_refuse_to_be_computed_after_an_in_place_change(reference):
    """The pair blocks depend on the projections: after ``optimizer.step()`` the step's blocks
    can no longer be computed, and reading them says so (one line) instead of returning blocks
    of other projections. Blocks read before the change stay as they were."""
    model, x, y = build(3, "pairs")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model.fuse(inputs(x))
    read = model.fuse(inputs(x))
    before = read.blocks["m0*m1"].detach().clone()
    F.cross_entropy(out.prediction, y).backward()
    opt.step()
    with pytest.raises(RuntimeError, match=r"read `output.blocks` before") as error:
        out.blocks["m0"]
    assert "\n" not in str(error.value)
    assert torch.equal(read.blocks["m0*m1"], before)
    # without interactions the blocks depend on the embeddings only
    model, x, y = build(3, "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x_in = inputs(x)
    out = model.fuse(x_in)
    F.cross_entropy(out.prediction, y).backward()
    opt.step()
    _, ref_blocks = reference.reference_fuse(copy.deepcopy(model), x)
    torch.testing.assert_close(out.blocks["m2"], ref_blocks["m2"], rtol=1e-10, atol=1e-12)
    x_in = inputs(x)
    out = model.fuse(x_in)
    with torch.no_grad():
        x_in["m1"].add_(1.0)  # an embedding changed in place
    with pytest.raises(RuntimeError, match="modified in place"):
        out.blocks["m1"]


def test_step_blocks_follow_the_grad_mode_of_their_step():
    model, x, _ = build(3, "pairs")
    with torch.no_grad():
        quiet = model.fuse(inputs(x))
    loud = model.fuse(inputs(x))
    with torch.no_grad():
        assert loud.blocks["m0*m1"].requires_grad
    assert not quiet.blocks["m0*m1"].requires_grad
