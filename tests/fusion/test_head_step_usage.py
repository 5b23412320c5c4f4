"""Patterns of use of a training step of the one-Function head (blocks computed on demand) and
of ``regularizer()`` that must behave as with the module-by-module reference, with encoders
that have a graph of their own (the embeddings are not leaves). A step that computed Ω_p
itself (tried, see BENCHMARKS.md §3, sixth pass) broke the first of them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from interfuse import MultimodalModel

BATCH = 10
LAM = 0.3
NAMES = ["a", "b", "c"]
CONFIGS = ["none", "pairs", 3]  # K = 1, pairs, pairs + triple


def build(interactions, p: float = 2.0):
    """A model whose encoders are small networks (their backward passes need saved tensors),
    a reference copy of it, two batches and their targets."""
    torch.manual_seed(3)
    model = MultimodalModel(
        {n: nn.Sequential(nn.Linear(5, 4), nn.Tanh()) for n in NAMES},
        interactions=interactions,
        rank=3,
        num_outputs=3,
        p=p,
        encoder_dims={n: 4 for n in NAMES},
    ).double()
    assert model.fusion_plan().pairwise
    gen = torch.Generator().manual_seed(4)
    batches = [
        {n: torch.randn(BATCH, 5, generator=gen, dtype=torch.float64) for n in NAMES}
        for _ in range(2)
    ]
    return model, copy.deepcopy(model), batches, torch.arange(BATCH) % 3


def reference_loss(reference, ref, x, masks=None):
    prediction, _ = reference.reference_fuse(ref, ref.encode(x, masks), masks)
    return F.cross_entropy(prediction, torch.arange(BATCH) % 3)


def assert_same_grads(model, ref):
    for (name, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("early", [True, False], ids=["omega-read-first", "omega-read-after"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_omega_differentiated_after_the_loss_with_encoders(config, early, reference):
    """``loss.backward()`` then ``(λ·regularizer()).backward()`` (the regulariser once per
    optimiser step, after the micro-batches): the first pass frees the encoders' graph, and
    the second must not need it, as with Ω_p computed on its own."""
    model, ref, (x, _), y = build(config)
    out = model(x)
    omega = model.regularizer() if early else None
    F.cross_entropy(out.prediction, y).backward()
    (LAM * (omega if early else model.regularizer())).backward()
    (reference_loss(reference, ref, x) + LAM * reference.regularizer(ref)).backward()
    assert_same_grads(model, ref)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_gradient_accumulation_with_a_masked_micro_batch(config, reference):
    """Micro-batches without and then with masks, one optimiser step (the head's weights do
    not change in between), the predictions kept (e.g. for metrics): the masked step's
    ``regularizer()`` works and the gradients are the reference's."""
    model, ref, (x1, x2), y = build(config)
    masks = {"a": torch.arange(BATCH) % 2 == 0}
    kept = []
    for x, m in ((x1, None), (x2, masks)):
        out = model(x, masks=m)
        kept.append(out.prediction)
        (F.cross_entropy(out.prediction, y) + LAM * model.regularizer()).backward()
        ref_loss = reference_loss(reference, ref, x, ref.presence(x, m))
        (ref_loss + LAM * reference.regularizer(ref)).backward()
    assert_same_grads(model, ref)


def test_a_frozen_head_gives_an_omega_without_gradient():
    """With the head's weights frozen (training the encoders only), Ω_p is a constant, as
    before: it does not require grad."""
    model, _, (x, _), _ = build("pairs")
    model.head.requires_grad_(False)
    out = model(x)
    assert out.prediction.requires_grad
    assert not model.regularizer().requires_grad


@pytest.mark.parametrize("p", [0.5, float("inf"), 0.0, -1.0])
def test_an_invalid_head_p_is_refused_by_regularizer_not_used_by_the_step(p):
    """``model.head.p`` set to a value ``check_p`` refuses: the training step runs as before
    (it does not read p) and ``regularizer()`` says what is wrong."""
    model, _, (x, _), y = build("pairs")
    model.head.p = p
    out = model(x)
    F.cross_entropy(out.prediction, y).backward()
    with pytest.raises(ValueError, match="finite real number >= 1"):
        model.regularizer()


def test_an_in_place_change_to_the_returned_omega_does_not_reach_later_calls():
    """``omega *= λ`` or ``omega.detach_()`` on what ``regularizer()`` returned must not change
    what later calls return (a new tensor each call)."""
    model, _, (x, _), _ = build("pairs")
    out = model(x)
    expected = model.head.regularizer().detach()
    omega = model.regularizer()
    omega *= LAM
    again = model.regularizer()
    torch.testing.assert_close(again.detach(), expected, rtol=1e-12, atol=0)
    again.detach_()
    third = model.regularizer()
    assert third.requires_grad
    torch.testing.assert_close(third.detach(), expected, rtol=1e-12, atol=0)
    assert out.prediction.requires_grad  # the step's prediction was alive throughout


def test_step_blocks_first_read_under_inference_mode_keep_their_gradient(reference):
    """Blocks first read inside ``torch.inference_mode()`` (e.g. to log their norms) are the
    step's blocks, as before: later used in a loss, their gradient reaches the encoders."""
    model, ref, (x, _), y = build(3)
    out = model(x)
    with torch.inference_mode():
        out.blocks["a*b"].norm()
    aux = sum(block.square().mean() for block in out.blocks.values())
    (F.cross_entropy(out.prediction, y) + aux).backward()
    prediction, blocks = reference.reference_fuse(ref, ref.encode(x))
    aux = sum(block.square().mean() for block in blocks.values())
    (F.cross_entropy(prediction, y) + aux).backward()
    assert_same_grads(model, ref)
