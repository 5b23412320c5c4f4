"""The fast path of the fusion head against the pre-fast-path implementation kept in tests.

``reference_fusion.py`` (next to this file) is a frozen copy of what ``MultimodalModel.fuse``
computed before the fast path. A model and a deep copy are stepped side by side — the model
through ``fuse`` (fast path), the copy through ``reference_fuse`` — and must agree in
predictions, blocks, gradients of every parameter and input, running buffers and relevance,
after several optimiser steps.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from interfuse import MultimodalModel
from interfuse.fusion import fast, pairwise
from interfuse.fusion.fast import (
    FusionPlan,
    _MaskedVbnHead,
    _VbnHead,
    _WickLevel,
    wick_products,
)


def _load(name: str):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_interfuse_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


reference = _load("reference_fusion")
interactions_tests = _load("test_interactions")

BATCH = 12


def build(m: int, order: int, rank: int, dtype: torch.dtype, interactions=None, equal=False):
    names = [f"m{i}" for i in range(m)]
    # unequal widths: several stacks; equal: one stack, shared with the factor projections
    dims = {n: 4 if equal else 3 + i % 3 for i, n in enumerate(names)}
    model = MultimodalModel(
        {n: nn.Identity() for n in names},
        interactions=interactions if interactions is not None else (order if order > 1 else "none"),
        rank=rank,
        num_outputs=3,
        encoder_dims=dims,
    ).to(dtype)
    with torch.no_grad():  # non-zero bias and running statistics, so that every buffer matters
        model.head.bias.normal_()
    return model, names, dims


def random_masks(names, step, gen):
    masks = {n: torch.rand(BATCH, generator=gen) < 0.7 for n in names}
    masks[names[-1]][:] = False  # missing for the whole batch
    if step == 1:  # a single present sample: running statistics, no update
        masks[names[0]][:] = False
        masks[names[0]][2] = True
    return masks


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = max(b.abs().max().item(), 1.0)
    # float32: rounding differences grow over the steps; the largest, one gradient at the eval
    # step after four updates of an order-4 model (M=4 K=4 r=2), is 1.2e-5 of the scale when
    # Ω_p is the same autograd composition on both sides and 2.3e-5 with ours (its scalar
    # arithmetic in float64); every other check stays below 5e-6. float64 checks the math.
    tol = 1e-10 if dtype == torch.float64 else 5e-5
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= tol * scale, f"{what}: max difference {diff:.3g} (scale {scale:.3g})"


CONFIGS = [  # (M, K, r)
    (2, 1, 3),
    (2, 2, 3),
    (2, 1, 3, "equal"),
    (4, 1, 3, "equal"),
    (6, 1, 2, "equal"),
    (2, 2, 3, "equal"),
    (3, 2, 4, "equal"),
    (5, 2, 2, "equal"),
    (3, 2, 4),
    (3, 3, 3),
    (4, 3, 2),
    (4, 4, 2),
    (5, 4, 2),
    (6, 2, 2),
    (6, 3, 2),
    (3, 3, 3, "equal"),
    (4, 3, 2, "equal"),
    (3, 3, 4, "equal"),
    (4, 4, 2, "equal"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masks"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_fast_path_matches_reference(config, masked, dtype):
    m, order, rank = config[:3]
    torch.manual_seed(m * 100 + order * 10 + rank)
    model, names, dims = build(m, order, rank, dtype, equal=len(config) > 3)
    assert model.uses_fast_path()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for step, training in enumerate([True, True, True, False, True, False]):
        model.train(training)
        ref.train(training)
        masks = random_masks(names, step, gen) if masked else None
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=dtype) * 2 + 1 for n, d in dims.items()
        }
        if masked:  # as MultimodalModel.encode leaves them: absent rows are zero
            inputs = {n: torch.where(masks[n][:, None], x, 0.0) for n, x in inputs.items()}
        ours_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        ref_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        y = torch.randint(0, 3, (BATCH,), generator=gen)

        out = model.fuse(ours_in, masks)
        ref_prediction, ref_blocks = reference.reference_fuse(ref, ref_in, masks)
        close(out.prediction, ref_prediction, dtype, f"prediction, step {step}")
        assert list(out.blocks) == list(ref_blocks)
        for name in ref_blocks:
            close(out.blocks[name], ref_blocks[name], dtype, f"block {name}, step {step}")

        # a loss that also reaches the blocks directly (explanations do that)
        def loss(prediction, blocks, regularizer, y=y):
            extra = sum(0.01 * b.pow(3).sum() for b in blocks.values())
            return F.cross_entropy(prediction, y) + 0.05 * regularizer + extra

        opt.zero_grad()
        opt_ref.zero_grad()
        loss(out.prediction, out.blocks, model.regularizer()).backward()
        loss(ref_prediction, ref_blocks, reference.regularizer(ref)).backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            close(p.grad, q.grad, dtype, f"grad {name}, step {step}")
        for n in names:
            close(ours_in[n].grad, ref_in[n].grad, dtype, f"input grad {n}, step {step}")
        for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            if b.is_floating_point():
                close(b, c, dtype, f"buffer {name}, step {step}")
            else:
                assert torch.equal(b, c), f"buffer {name}, step {step}"
        opt.step()
        opt_ref.step()
    ours, theirs = model.relevance(), ref.relevance()
    for t in ours.beta:
        assert ours.beta[t] == pytest.approx(theirs.beta[t], rel=1e-4, abs=1e-7), t


@pytest.mark.parametrize(
    "terms",
    [
        [("m0", "m1", "m2")],
        [("m0", "m2"), ("m1", "m2", "m3")],
        [("m0", "m1", "m2", "m3"), ("m1", "m3")],
    ],
    ids=["triple-only", "pair+triple", "quad+pair"],
)
def test_explicit_term_lists(terms):
    """Sub-terms that are not model terms still provide moments and lower Wick blocks."""
    torch.manual_seed(1)
    model, names, dims = build(4, 0, 3, torch.float64, interactions=terms)
    ref = copy.deepcopy(model)
    inputs = {n: torch.randn(BATCH, d, dtype=torch.float64) for n, d in dims.items()}
    for training in (True, False):
        model.train(training)
        ref.train(training)
        x1 = {n: v.clone().requires_grad_() for n, v in inputs.items()}
        x2 = {n: v.clone().requires_grad_() for n, v in inputs.items()}
        out = model.fuse(x1)
        prediction, _ = reference.reference_fuse(ref, x2)
        close(out.prediction, prediction, torch.float64, "prediction")
        out.prediction.pow(2).sum().backward()
        prediction.pow(2).sum().backward()
        for n in names:
            close(x1[n].grad, x2[n].grad, torch.float64, f"input grad {n}")


def test_a_modality_in_no_interaction_may_have_a_width_of_its_own():
    """Interactions among some modalities only, and a modality outside them whose width no
    projected modality shares (a stack of unimodal blocks with no factor rows): training and
    evaluation agree with the reference."""
    torch.manual_seed(14)
    model, names, dims = build(3, 0, 2, torch.float64, interactions=[("m0", "m1")])
    assert dims["m2"] not in (dims["m0"], dims["m1"])
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(14)
    for training in (True, False):
        model.train(training)
        ref.train(training)
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()
        }
        _step_against_reference(model, ref, inputs, None, torch.float64, f"training={training}")


def test_fallbacks_to_the_module_path():
    dims = {"a": 3, "b": 3}
    plain = MultimodalModel({m: nn.Identity() for m in dims}, iterbn=False, encoder_dims=dims)
    assert not plain.uses_fast_path()
    names = [f"m{i}" for i in range(5)]
    order5 = MultimodalModel(
        {m: nn.Identity() for m in names},
        interactions=5,
        rank=2,
        encoder_dims=dict.fromkeys(names, 2),
    )
    assert not order5.uses_fast_path()  # orders > 4: the module path
    ref = copy.deepcopy(order5)
    x = {m: torch.randn(8, 2) for m in names}
    torch.testing.assert_close(order5.fuse(x).prediction, reference.reference_fuse(ref, x)[0])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_vbns_with_different_eps_take_the_module_path(order):
    """The fast path uses one eps per stack of equal-width blocks: a model whose vBNs differ
    must not take it (it normalised m1 with m0's eps: predictions 0.03-0.04 off)."""
    torch.manual_seed(15)
    model, _, dims = build(3, order, 2, torch.float64, equal=True)
    assert model.uses_fast_path()
    model.norms["m1"].eps = 0.5  # large, so that using m0's eps instead would show
    model._plan = None
    assert not model.uses_fast_path()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(15)
    inputs = {n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()}
    _step_against_reference(model, ref, inputs, None, torch.float64, "eps of m1 = 0.5")


def test_an_encoders_batchnorm_momentum_does_not_turn_the_fast_path_off():
    """Only the head's running statistics share one momentum; a user encoder with its own
    BatchNorm (any momentum, even None = cumulative) must not send the head down the slow path,
    and the fast step must still equal the module path's."""
    torch.manual_seed(16)
    names = ["m0", "m1"]
    encoders = {
        "m0": nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, momentum=0.3)),
        "m1": nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=None)),
    }
    model = MultimodalModel(
        encoders, interactions="pairs", rank=2, num_outputs=3, encoder_dims={n: 6 for n in names}
    ).double()
    assert model.uses_fast_path()
    model.norms["m1"].momentum = 0.2  # the head's own statistics disagree: module path
    model._plan = None
    assert not model.uses_fast_path()
    model.norms["m1"].momentum = 0.1
    model._plan = None
    assert model.uses_fast_path()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(16)
    # the head's step on encoder outputs (dim 6), as the other fast-path tests take it
    inputs = {n: torch.randn(BATCH, 6, generator=gen, dtype=torch.float64) for n in names}
    _step_against_reference(model, ref, inputs, None, torch.float64, "encoders with BatchNorm")


def test_training_batch_of_one_is_an_error():
    model, names, dims = build(2, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.fuse({n: torch.randn(1, d) for n, d in dims.items()})
    model.eval()
    assert model.fuse({n: torch.randn(1, d) for n, d in dims.items()}).prediction.shape == (1, 3)


def test_state_dict_layout_is_unchanged():
    """The fast path reads the modules' own parameters and buffers: old checkpoints load as is."""
    model, _, _ = build(3, 3, 2, torch.float32)
    keys = set(model.state_dict())
    expected = {
        "factors.projections.m0.weight",
        "factors.centering.m0.running_mean",
        "factors.centering.m0.num_batches_tracked",
        "wick.running_mean_m0",
        "wick.running_mean_m0*m1",
        "wick.running_mean_m0*m1*m2",
        "wick.num_batches_tracked",
        "norms.m0*m1*m2.running_mean",
        "norms.m0*m1*m2.running_sq_norm",
        "norms.m0*m1*m2.num_batches_tracked",
        "head.blocks.m0*m1*m2.weight",
        "head.bias",
    }
    assert expected <= keys
    assert model.state_dict()["wick.running_mean_m0*m1*m2"].shape == (2, 2, 2)
    # a state_dict written by the reference path loads into a fresh model and predicts the same
    ref = copy.deepcopy(model)
    x = {n: torch.randn(BATCH, d) for n, d in zip(["m0", "m1", "m2"], [3, 4, 5])}
    reference.reference_fuse(ref, x)  # one training step's statistics
    fresh, _, _ = build(3, 3, 2, torch.float32)
    fresh.load_state_dict(ref.state_dict())
    fresh.eval()
    ref.eval()
    torch.testing.assert_close(fresh.fuse(x).prediction, reference.reference_fuse(ref, x)[0])


# --------------------------------------------------------------------------- the Functions


def test_gradcheck_vbn_head():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen).requires_grad_()
    for centred, keep in [(False, False), (True, False), (False, True), (True, True)]:

        def fn(x, w, centred=centred, keep=keep):
            u = x - x.mean(dim=1, keepdim=True) if centred else x
            y, z, _, _ = _VbnHead.apply(u, w, None, centred, False, keep, 1e-5)
            return y, z

        assert torch.autograd.gradcheck(fn, (x, w)), (centred, keep)


def test_gradcheck_masked_vbn_head():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen).requires_grad_()
    present = torch.rand(3, 7, generator=gen) < 0.6
    present[0] = True
    present[2] = False
    present[2, 1] = True  # one present sample: running statistics
    ok = (present.sum(1) >= 2).tolist()
    running_mean = torch.randn(3, 1, 5, dtype=torch.float64, generator=gen)
    running_sq = torch.rand(3, dtype=torch.float64, generator=gen) + 0.5

    def fn(x, w):
        y, z, _, _ = _MaskedVbnHead.apply(x, w, present, running_mean, running_sq, ok, False, 1e-5)
        return y, z

    assert torch.autograd.gradcheck(fn, (x, w))


@pytest.mark.parametrize("small", [0, 10**9], ids=["bmm", "broadcast"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_gradcheck_wick_level(order, small, monkeypatch):
    """Every correction layout of orders 2–4, both contraction kernels."""
    monkeypatch.setattr(fast, "SMALL_CONTRACTION", small)
    terms = [tuple("abcd"[:order])]
    plan = FusionPlan(
        list("abcd"[:order]), dict.fromkeys("abcd"[:order], 2), terms, list("abcd"[:order]), 2
    )
    level = plan.levels[-1]
    gen = torch.Generator().manual_seed(order)
    num, batch, r = 1, 5, 2
    head = torch.randn(num, batch, r ** (order - 1), dtype=torch.float64, generator=gen)
    last = torch.randn(num, batch, r, dtype=torch.float64, generator=gen)
    shift = torch.randn(num, r ** (order - 1), r, dtype=torch.float64, generator=gen)
    operands = []
    for corr in level.corrections:
        operands.append(
            torch.randn(num, *[r] * corr.moment_order, dtype=torch.float64, generator=gen)
        )
        operands.append(
            torch.randn(num, batch, *[r] * corr.rest_order, dtype=torch.float64, generator=gen)
        )
    inputs = [t.requires_grad_() for t in (head, last, shift, *operands)]

    def fn(head, last, shift, *operands):
        spec = (
            order,
            r,
            [c.layout for c in level.corrections],
            [c.moment_shape for c in level.corrections],
            [c.rest_shape for c in level.corrections],
            None,
            None,
            [None] * len(level.corrections),
        )
        return _WickLevel.apply(spec, head, last, shift, *operands)

    assert torch.autograd.gradcheck(fn, tuple(inputs))


def test_gradcheck_whole_head_function():
    """The one-Function head of orders ≤ 3: a projected subset of the modalities (m3 has no
    factor), pairs read through index rows, one triple, gradients into every output."""
    torch.manual_seed(5)
    terms = [("m0", "m1"), ("m0", "m2"), ("m1", "m2"), ("m0", "m1", "m2")]
    model, names, dims = build(4, 0, 2, torch.float64, interactions=terms, equal=True)
    plan = model.fusion_plan()
    assert plan.pairwise and plan.factor_modalities == ["m0", "m1", "m2"]
    state, weights, _ = fast._pairwise_state(model, plan, torch.device("cpu"))
    assert state.counts == (4, 3, 3, 1)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(6, 4, dtype=torch.float64, generator=gen) for _ in names]
    tensors = [t.detach().clone().requires_grad_() for t in inputs + weights]
    assert torch.autograd.gradcheck(lambda *t: pairwise.pairwise_head(state, t), tensors)
    assert torch.autograd.gradcheck(lambda *t: tuple(pairwise.pairwise_blocks(state, t)), tensors)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_unimodal_head_function(bias):
    """The one-Function head without interactions (output: the prediction) and its blocks
    computed on demand: gradients into each, with and without a bias."""
    torch.manual_seed(6)
    model, names, dims = build(5, 1, 2, torch.float64, equal=True)
    if not bias:
        model.head.bias = None
    plan = model.fusion_plan()
    state, weights, _ = fast._pairwise_state(model, plan, torch.device("cpu"))
    assert state.counts == (5, 0, 0, 0)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(6, 4, dtype=torch.float64, generator=gen) for _ in names]
    tensors = [t.detach().clone().requires_grad_() for t in inputs + weights]

    def fn(*t):
        return pairwise.pairwise_head(state, t), *pairwise.pairwise_blocks(state, t)

    assert torch.autograd.gradcheck(fn, tensors)


def test_gradcheck_masked_whole_head_function():
    """The masked one-Function head: a modality with 1 present sample (running statistics for
    it and its pairs), one absent for the whole batch, the others partly present."""
    torch.manual_seed(7)
    model, names, dims = build(4, 2, 2, torch.float64, equal=True)
    plan = model.fusion_plan()
    state, weights, buffers = fast._pairwise_state(model, plan, torch.device("cpu"))
    with torch.no_grad():  # running statistics that differ from the batch's
        for b in model.buffers():
            if b.is_floating_point():
                b.normal_().abs_()
    gen = torch.Generator().manual_seed(1)
    present = torch.rand(4, 7, generator=gen) < 0.7
    present[0] = True
    present[1] = False
    present[1, 2] = True
    present[3] = False
    inputs = [torch.randn(7, 4, dtype=torch.float64, generator=gen) for _ in names]
    inputs = [torch.where(p[:, None], x, 0.0) for p, x in zip(present, inputs)]
    tensors = [t.detach().clone().requires_grad_() for t in inputs + weights]

    def fn(*t):
        out = pairwise.masked_pairwise_head(state, buffers, present, t)
        return out.prediction, out.unimodal, out.pairs

    assert torch.autograd.gradcheck(fn, tensors)


def test_whole_head_function_is_used_where_it_applies():
    """Equal widths and closed term sets of orders ≤ 3 train through the one Function; anything
    else through the stacked path (an explicit fallback, same values)."""

    def uses_function(model, dims):
        out = model.fuse({n: torch.randn(8, d) for n, d in dims.items()})
        return type(out.prediction.grad_fn).__name__ == "_PairwiseHeadBackward"

    for m, order in [(2, 1), (6, 1), (2, 2), (4, 2), (3, 3), (5, 3)]:
        model, _, dims = build(m, order, 2, torch.float32, equal=True)
        assert uses_function(model, dims), (m, order)
    model, _, dims = build(3, 2, 2, torch.float32)  # unequal widths
    assert not uses_function(model, dims)
    model, _, dims = build(4, 4, 2, torch.float32, equal=True)  # order 4
    assert not uses_function(model, dims)
    triple_only = [("m0", "m1", "m2")]  # its pairs are not terms
    model, _, dims = build(3, 0, 2, torch.float32, interactions=triple_only, equal=True)
    assert not uses_function(model, dims)
    model, _, dims = build(3, 3, 2, torch.float32, equal=True)
    model.eval()
    assert not uses_function(model, dims)
    model.train()  # triples with masks: the stacked path
    masks = {n: torch.rand(8) < 0.7 for n in dims}
    out = model.fuse({n: torch.randn(8, d) for n, d in dims.items()}, masks)
    assert type(out.prediction.grad_fn).__name__ != "_MaskedPairwiseHeadBackward"
    model, _, dims = build(3, 2, 2, torch.float32, equal=True)  # pairs with masks: masked one
    out = model.fuse({n: torch.randn(8, d) for n, d in dims.items()}, masks)
    assert type(out.prediction.grad_fn).__name__ == "_MaskedPairwiseHeadBackward"
    rank = fast.PAIRWISE_MAX_TRIPLE_RANK
    model, _, dims = build(3, 3, rank + 1, torch.float32, equal=True)  # large triples
    assert not uses_function(model, dims)
    model, _, dims = build(3, 3, rank, torch.float32, equal=True)
    assert uses_function(model, dims)


def test_whole_head_function_after_moving_or_loading_tensors():
    """The Function's cached tensor lists follow ``.to()`` and ``load_state_dict(assign=True)``."""
    torch.manual_seed(6)
    model, names, dims = build(3, 3, 2, torch.float32, equal=True)
    x = {n: torch.randn(BATCH, d) for n, d in dims.items()}
    model.fuse(x)
    model.double()
    ref = copy.deepcopy(model)
    x64 = {n: v.double() for n, v in x.items()}
    close(model.fuse(x64).prediction, reference.reference_fuse(ref, x64)[0], torch.float64, "to")
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
        close(b.double(), c.double(), torch.float64, f"{name} after .double()")
    fresh, _, _ = build(3, 3, 2, torch.float64, equal=True)
    model.load_state_dict(fresh.state_dict(), assign=True)
    ref.load_state_dict(fresh.state_dict())
    out = model.fuse(x64).prediction
    close(out, reference.reference_fuse(ref, x64)[0], torch.float64, "assign")
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
        close(b.double(), c.double(), torch.float64, name)


def _replace(model, what, value):
    """Replace a parameter, buffer or submodule of ``model`` by assignment (a copy of
    ``value``): ``what`` is ``(dotted owner path, attribute)``."""
    owner = model.get_submodule(what[0]) if what[0] else model
    value = copy.deepcopy(value)
    if isinstance(value, torch.Tensor) and value.is_floating_point() and what[1] == "weight":
        value = nn.Parameter(value)
    setattr(owner, what[1], value)


def test_whole_head_function_keeps_its_state_until_a_tensor_or_module_is_replaced():
    """The one-Function head gathers its state once (``plan.pairwise_cache``) and reuses it while
    the model is unchanged; a parameter, buffer or submodule replaced by assignment — any of
    them, not only the first — makes it gather again, so that predictions, gradients and
    running buffers still equal the reference's (which reads the model afresh)."""
    torch.manual_seed(8)
    model, names, dims = build(3, 2, 2, torch.float64, equal=True)
    ref = copy.deepcopy(model)
    plan = model.fusion_plan()
    gen = torch.Generator().manual_seed(8)

    def step(what: str) -> None:
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()
        }
        ours_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        ref_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        out = model.fuse(ours_in)
        assert type(out.prediction.grad_fn).__name__ == "_PairwiseHeadBackward"
        ref_prediction, _ = reference.reference_fuse(ref, ref_in)
        close(out.prediction, ref_prediction, torch.float64, f"prediction, {what}")
        model.zero_grad()
        ref.zero_grad()
        out.prediction.pow(2).sum().backward()
        ref_prediction.pow(2).sum().backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            close(p.grad, q.grad, torch.float64, f"grad {name}, {what}")
        for n in names:
            close(ours_in[n].grad, ref_in[n].grad, torch.float64, f"input grad {n}, {what}")
        for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            close(b.double(), c.double(), torch.float64, f"buffer {name}, {what}")

    step("first step")
    cache = plan.pairwise_cache
    step("unchanged")
    assert plan.pairwise_cache is cache, "the state was gathered again for an unchanged model"

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    replacements = [
        (("head.blocks.m0", "weight"), randn(3, 4)),  # the first weight
        (("head.blocks.m2", "weight"), randn(3, 4)),  # another unimodal weight
        (("head.blocks.m1*m2", "weight"), randn(3, 4)),  # a pair's weight
        (("factors.projections.m1", "weight"), randn(2, 4)),
        (("head", "bias"), nn.Parameter(randn(3))),
        (("norms.m0", "num_batches_tracked"), torch.tensor(5)),  # the first counter
        (("norms.m1", "running_mean"), randn(4)),
        (("norms.m0*m2", "running_sq_norm"), randn(()).exp()),
        (("wick", "running_mean_m0*m1"), randn(2, 2)),
        (("factors.centering.m2", "running_mean"), randn(2)),
        (("norms", "m1*m2"), model.norms["m1*m2"]),  # a submodule (a copy of it)
    ]
    for what, value in replacements:
        _replace(model, what, value)
        _replace(ref, what, value)
        step(f"{what} replaced")
        assert plan.pairwise_cache is not cache, what
        cache = plan.pairwise_cache


def _step_against_reference(model, ref, inputs, masks, dtype, what):
    """One training step of ``model.fuse`` and of the reference on a copy: prediction, blocks,
    gradients of parameters and inputs, running buffers."""
    ours_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
    ref_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
    out = model.fuse(ours_in, masks)
    ref_prediction, ref_blocks = reference.reference_fuse(ref, ref_in, masks)
    close(out.prediction, ref_prediction, dtype, f"prediction, {what}")
    for name in ref_blocks:
        close(out.blocks[name], ref_blocks[name], dtype, f"block {name}, {what}")
    y = torch.arange(next(iter(inputs.values())).shape[0]) % 3
    model.zero_grad()
    ref.zero_grad()
    F.cross_entropy(out.prediction, y).backward()
    F.cross_entropy(ref_prediction, y).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if p.grad is None or q.grad is None:  # encoders: not on the head's step
            assert p.grad is None and q.grad is None and name.startswith("encoders."), name
            continue
        close(p.grad, q.grad, dtype, f"grad {name}, {what}")
    for n in inputs:
        close(ours_in[n].grad, ref_in[n].grad, dtype, f"input grad {n}, {what}")
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
        assert b.dtype == c.dtype, name
        if b.is_floating_point():
            close(b, c, dtype, f"buffer {name}, {what}")
        else:
            assert torch.equal(b, c), f"buffer {name}, {what}"
    return out


def test_masked_whole_head_function_with_two_or_one_present_samples_and_loaded_statistics():
    """The masked one-Function head where a modality has exactly 2 present samples (the
    unbiased factor n/(n − 1) = 2 of the running squared norms) and one has 1 (its blocks and
    its pairs' use the running statistics, here non-zero as after loading a checkpoint,
    including the pair blocks' vBN means): everything equals the reference's."""
    torch.manual_seed(9)
    model, names, dims = build(3, 2, 2, torch.float64, equal=True)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():  # running statistics that differ from the batch's
        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
    ref = copy.deepcopy(model)
    masks = {n: torch.ones(BATCH, dtype=torch.bool) for n in names}
    masks["m1"][:] = False
    masks["m1"][[3, 7]] = True  # exactly 2 present: batch statistics, factor 2
    masks["m2"][:] = False
    masks["m2"][7] = True  # one present: running statistics for m2, m0*m2, m1*m2
    inputs = {n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()}
    inputs = {n: torch.where(masks[n][:, None], x, 0.0) for n, x in inputs.items()}
    out = _step_against_reference(model, ref, inputs, masks, torch.float64, "masked step")
    assert type(out.prediction.grad_fn).__name__ == "_MaskedPairwiseHeadBackward"


@pytest.mark.parametrize(
    "config,masked",
    [
        ((3, 2, 2, "equal"), False),
        ((3, 2, 2, "equal"), True),
        ((3, 3, 2, "equal"), False),
        ((3, 3, 3), False),
        ((3, 3, 3), True),
    ],
    ids=["whole-head", "whole-head-masks", "whole-head-triples", "stacked", "stacked-masks"],
)
@pytest.mark.parametrize("only_m1", [False, True], ids=["all-buffers", "m1-buffers"])
def test_running_buffers_of_another_dtype_are_updated_like_the_reference(config, masked, only_m1):
    """Running statistics kept in float64 while the head trains in float32 (all of them, or only
    m1's vBN: buffers of two dtypes in one model): each path converts the batch statistics to the
    buffers' dtype before updating them, as the module path does."""
    m, order, rank = config[:3]
    torch.manual_seed(10)
    model, names, dims = build(m, order, rank, torch.float32, equal=len(config) > 3)
    for module in [model.norms["m1"]] if only_m1 else model.modules():
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point():
                module._buffers[key] = b.double()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(10)
    for step in range(2):
        masks = None
        inputs = {n: torch.randn(BATCH, d, generator=gen) for n, d in dims.items()}
        if masked:
            masks = {n: torch.rand(BATCH, generator=gen) < 0.7 for n in names}
            inputs = {n: torch.where(masks[n][:, None], x, 0.0) for n, x in inputs.items()}
        _step_against_reference(model, ref, inputs, masks, torch.float32, f"step {step}")


@pytest.mark.parametrize(
    "config",
    [(2, 2, 2, "equal"), (3, 3, 2, "equal"), (1, 1, 2, "equal")],
    ids=["pairs", "triples", "one-modality"],
)
def test_training_batch_of_one_is_an_error_on_the_whole_head_function(config):
    """As on the stacked path (``test_training_batch_of_one_is_an_error``): the one-Function
    head checks the number of samples, not another axis of the embeddings or the size of
    another tensor (with one modality, the next tensor is its head weight)."""
    model, names, dims = build(*config[:3], torch.float32, equal=len(config) > 3)
    with pytest.raises(ValueError, match="at least 2 samples in training mode"):
        model.fuse({n: torch.randn(1, d) for n, d in dims.items()})
    model.eval()
    assert model.fuse({n: torch.randn(1, d) for n, d in dims.items()}).prediction.shape == (1, 3)


@pytest.mark.parametrize(
    "config",
    [(2, 2, 2), (2, 2, 2, "equal"), (3, 3, 2, "equal")],
    ids=["stacked", "pairs", "triples"],
)
def test_training_batch_of_two_is_valid_on_every_path(config):
    """Two samples are enough for batch statistics: the stacked path and the one-Function head
    train on them and agree with the reference."""
    torch.manual_seed(11)
    model, names, dims = build(*config[:3], torch.float64, equal=len(config) > 3)
    ref = copy.deepcopy(model)
    inputs = {n: torch.randn(2, d, dtype=torch.float64) for n, d in dims.items()}
    _step_against_reference(model, ref, inputs, None, torch.float64, "batch of 2")


def test_vbn_head_defaults_centre_by_the_batch_mean_and_leave_the_input_unchanged():
    """``vbn_head(x, w, eps)``: ``z_q = (x_q − E x_q) / (E‖x_q − E x_q‖² + ε)^{1/2}`` and
    ``ŷ = Σ_q z_q W_qᵀ`` computed by hand; ``x`` itself is not overwritten."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen) * 2 + 1
    w = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen)
    before = x.clone()
    y, z, sq, mean = fast.vbn_head(x, w, 1e-5)
    assert torch.equal(x, before)
    c = x - x.mean(dim=1, keepdim=True)
    expected_sq = c.pow(2).sum(dim=(1, 2)) / 7
    expected_z = c / (expected_sq + 1e-5).sqrt()[:, None, None]
    close(mean, x.mean(dim=1), torch.float64, "batch mean")
    close(sq, expected_sq, torch.float64, "E‖c‖²")
    close(z, expected_z, torch.float64, "z")
    close(y, sum(expected_z[q] @ w[q].T for q in range(3)), torch.float64, "ŷ")


@pytest.mark.parametrize(
    "config", [(3, 2, 2, "equal"), (3, 3, 3)], ids=["whole-head-masks", "stacked-masks"]
)
def test_a_modality_left_out_of_the_masks_is_present_in_every_sample(config):
    """``fuse(embeddings, masks)`` with masks for some modalities only: the others count as
    present everywhere (as in the reference), on both masked paths."""
    torch.manual_seed(13)
    model, names, dims = build(*config[:3], torch.float64, equal=len(config) > 3)
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(13)
    masks = {n: torch.rand(BATCH, generator=gen) < 0.7 for n in names[1:]}  # none for m0
    inputs = {n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()}
    inputs = {
        n: torch.where(masks[n][:, None], x, 0.0) if n in masks else x for n, x in inputs.items()
    }
    _step_against_reference(model, ref, inputs, masks, torch.float64, "partial masks")


def test_masked_whole_head_function_refuses_a_state_of_another_model():
    """``masked_pairwise_head`` checks each of: no triples, the number of tensors, the number
    of presence rows (each alone is an error)."""
    model, names, dims = build(3, 2, 2, torch.float32, equal=True)
    plan = model.fusion_plan()
    state, weights, buffers = fast._pairwise_state(model, plan, torch.device("cpu"))
    inputs = [torch.randn(BATCH, 4) for _ in names]
    present = torch.ones(3, BATCH, dtype=torch.bool)
    out = pairwise.masked_pairwise_head(state, buffers, present, inputs + weights)
    assert out.prediction.shape == (BATCH, 3)
    with pytest.raises(ValueError, match="need 12 tensors"):
        pairwise.masked_pairwise_head(state, buffers, present, inputs + weights[:-1])
    with pytest.raises(ValueError, match=r"presence stack of 3 rows, got 12 tensors and \(2, 12\)"):
        pairwise.masked_pairwise_head(state, buffers, present[:2], inputs + weights)
    triples, _, _ = build(3, 3, 2, torch.float32, equal=True)
    state3, weights3, buffers3 = fast._pairwise_state(
        triples, triples.fusion_plan(), torch.device("cpu")
    )
    with pytest.raises(ValueError, match="no triples"):
        pairwise.masked_pairwise_head(state3, buffers3, present, inputs + weights3[:-1])


# --------------------------------------------------------------------------- math tests


def test_fast_wick_matches_slow_reference_up_to_order_four():
    """The loop reference of ``test_interactions`` against the fast path's Wick products."""
    factors = interactions_tests.random_factors(n=24, r=3, seed=0, centred=True)
    terms = interactions_tests.ALL_TERMS
    out = wick_products(factors, terms, rank=3)
    numpy_factors = {m: g.numpy() for m, g in factors.items()}
    for term in terms:
        expected = interactions_tests.reference_wick(numpy_factors, term)
        np.testing.assert_allclose(
            out[term].numpy(), expected, atol=1e-10, rtol=0, err_msg=str(term)
        )


def test_fast_wick_is_decorrelated_from_lower_orders():
    n, r = 20_000, 2
    gen = torch.Generator().manual_seed(4)
    cov_root = torch.randn(4 * r, 4 * r, generator=gen, dtype=torch.float64) * 0.5
    cov_root += torch.eye(4 * r, dtype=torch.float64)
    z = torch.randn(n, 4 * r, generator=gen, dtype=torch.float64) @ cov_root
    factors = {m: z[:, i * r : (i + 1) * r] for i, m in enumerate("abcd")}
    factors = {m: g - g.mean(0) for m, g in factors.items()}
    terms = interactions_tests.ALL_TERMS
    wick = wick_products(factors, terms, rank=r)
    wick.update({(m,): g for m, g in factors.items()})
    for term in terms:
        for k in range(1, len(term)):
            for sub in itertools.combinations(term, k):
                t = interactions_tests.z_scores(wick[term].flatten(1), wick[sub].flatten(1))
                assert t.abs().max().item() < 5.5, (term, sub)


# --------------------------------------------------------------------------- memory


def saved_bytes(step) -> int:
    """Bytes of distinct storages autograd saves for backward during ``step()``."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


@pytest.mark.parametrize(
    "m,order,rank,equal", [(3, 3, 8, False), (4, 3, 6, False), (4, 4, 4, False), (3, 3, 4, True)]
)
def test_saved_for_backward_at_most_0_6_of_the_reference(m, order, rank, equal):
    torch.manual_seed(0)
    model, names, dims = build(m, order, rank, torch.float32, equal=equal)
    ref = copy.deepcopy(model)
    x = {n: torch.randn(64, d, requires_grad=True) for n, d in dims.items()}
    ours = saved_bytes(lambda: model.fuse(x).prediction.sum() + model.regularizer())
    theirs = saved_bytes(
        lambda: reference.reference_fuse(ref, x)[0].sum() + reference.regularizer(ref)
    )
    assert ours <= 0.6 * theirs, (ours, theirs, ours / theirs)


def test_closed_under_pairs_needs_every_pair_of_every_triple() -> None:
    # The one-Function head builds a triple from its three pair blocks, so each must be a term.
    closed_under_pairs = pairwise.closed_under_pairs
    triple = ("a", "b", "c")
    all_pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    assert closed_under_pairs([("a",), *all_pairs, triple])
    assert closed_under_pairs([("a",), ("a", "b")])  # no triple: nothing to check
    for missing in all_pairs:
        terms = [p for p in all_pairs if p != missing] + [triple]
        assert not closed_under_pairs(terms), missing


# --------------------------------------------------------------------------- plain operations


@pytest.mark.parametrize(
    "config", [(3, 2, 3), (3, 3, 2, "equal"), (4, 4, 2)], ids=lambda c: "-".join(map(str, c))
)
def test_plain_operations_match_reference_in_eager_mode(config):
    """``fast_fuse(plain=True, defer_updates=True)`` is what ``compile=True`` hands to
    ``torch.compile``; run eagerly (no compiler) it must give the reference's predictions,
    blocks, gradients and (after :func:`apply_updates`) running buffers, in training and in
    evaluation. Orders 2–4 reach every plain function: ``_vbn_head_plain`` (uncentred blocks,
    centred lower orders and top orders with a given mean), ``_moment`` and ``_wick_level_plain``
    (corrections, and the shift in evaluation)."""
    m, order, rank = config[:3]
    torch.manual_seed(20 + m * 10 + order)
    model, names, dims = build(m, order, rank, torch.float64, equal=len(config) > 3)
    ref = copy.deepcopy(model)
    plan = model.fusion_plan()
    gen = torch.Generator().manual_seed(3)
    for step, training in enumerate([True, True, False]):
        model.train(training)
        ref.train(training)
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) + 1
            for n, d in dims.items()
        }
        ours_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        ref_in = {n: x.clone().requires_grad_() for n, x in inputs.items()}
        prediction, blocks, updates = fast.fast_fuse(model, ours_in, plain=True, defer_updates=True)
        if training:
            fast.apply_updates(updates, plan.momentum)
        ref_prediction, ref_blocks = reference.reference_fuse(ref, ref_in)
        close(prediction, ref_prediction, torch.float64, f"prediction, step {step}")
        assert list(blocks) == list(ref_blocks)
        for name in ref_blocks:
            close(blocks[name], ref_blocks[name], torch.float64, f"block {name}, step {step}")
        y = torch.randint(0, 3, (BATCH,), generator=gen)

        def loss(prediction, blocks, y=y):
            extra = sum(0.01 * b.pow(3).sum() for b in blocks.values())
            return F.cross_entropy(prediction, y) + extra

        model.zero_grad()
        ref.zero_grad()
        loss(prediction, blocks).backward()
        loss(ref_prediction, ref_blocks).backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            close(p.grad, q.grad, torch.float64, f"grad {name}, step {step}")
        for n in names:
            close(ours_in[n].grad, ref_in[n].grad, torch.float64, f"input grad {n}, step {step}")
        for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            if b.is_floating_point():
                close(b, c, torch.float64, f"buffer {name}, step {step}")
            else:
                assert torch.equal(b, c), f"buffer {name}, step {step}"
        with torch.no_grad():  # different weights for the next step, as after an optimiser step
            for p, q in zip(model.parameters(), ref.parameters()):
                p.sub_(0.1 * p.grad)
                q.sub_(0.1 * q.grad)


# --------------------------------------------------------------------------- one input at a time


def _single_input_grads(fn, inputs, reference_fn, seed=0):
    """For each input alone (the others not requiring gradients): ``∂⟨c, fn(inputs)⟩`` with a
    random cotangent ``c`` against the same gradient through ``reference_fn`` (plain autograd).

    The hand-written backwards compute only the gradients autograd asks for
    (``ctx.needs_input_grad``): asking for one at a time checks each is computed when needed."""
    outputs = reference_fn(*[t.detach().requires_grad_() for t in inputs])
    gen = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]
    for i in range(len(inputs)):
        ours = [t.detach().requires_grad_(k == i) for k, t in enumerate(inputs)]
        theirs = [t.detach().requires_grad_(k == i) for k, t in enumerate(inputs)]
        out = fn(*ours)
        ref_out = reference_fn(*theirs)
        for o, r in zip(out, ref_out):
            close(o, r, torch.float64, f"output, input {i}")
        total = sum((o * c).sum() for o, c in zip(out, cotangents) if o.requires_grad)
        ref_total = sum((o * c).sum() for o, c in zip(ref_out, cotangents) if o.requires_grad)
        (grad,) = torch.autograd.grad(total, [ours[i]])
        (expected,) = torch.autograd.grad(ref_total, [theirs[i]])
        close(grad, expected, torch.float64, f"gradient of input {i} alone")


@pytest.mark.parametrize(
    "centred,keep,given_mean",
    [(False, False, False), (True, False, False), (False, True, False), (False, False, True)],
    ids=["plain", "centred", "keep-input", "given-mean"],
)
def test_vbn_head_gradient_of_each_input_alone_matches_plain_operations(centred, keep, given_mean):
    """:class:`_VbnHead` (the autograd Function) against ``_vbn_head_plain`` (plain torch, what
    ``torch.compile`` traces) run eagerly: outputs, and the gradient of ``x`` alone and of the
    head weights alone. A ``centred`` input is centred in the graph (the Function's backward
    projects its gradient onto batch mean 0, as every caller's input is centred upstream)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen) * 2 + 1
    w = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen)

    def args(x):
        u = x - x.mean(dim=1, keepdim=True) if centred else x
        return u, (x.mean(dim=1, keepdim=True) if given_mean else None)

    def ours(x, w):
        u, mean = args(x)
        y, z, sq, batch_mean = fast.vbn_head(u, w, 1e-5, mean, centred=centred, keep_input=keep)
        return y, z, sq, *([] if batch_mean is None else [batch_mean])

    def plain(x, w):
        u, mean = args(x)
        y, z, sq, batch_mean = fast.vbn_head(u, w, 1e-5, mean, centred=centred, plain=True)
        return y, z, sq, *([] if batch_mean is None else [batch_mean])

    _single_input_grads(ours, [x, w], plain)


@pytest.mark.parametrize("small", [0, 10**9], ids=["bmm", "broadcast"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_wick_level_gradient_of_each_input_alone_matches_plain_operations(
    order, small, monkeypatch
):
    """:class:`_WickLevel` against ``_wick_level_plain`` run eagerly, every correction layout of
    orders 2–4 and both contraction kernels, with stacks read through index rows (a repeated
    row, so its gradient is a sum): outputs and the gradient of each input alone (prefix
    blocks, last factors, shift, each moment and each rest)."""
    monkeypatch.setattr(fast, "SMALL_CONTRACTION", small)
    names = list("abcd"[:order])
    plan = FusionPlan(names, dict.fromkeys(names, 2), [tuple(names)], names, 2)
    level = plan.levels[-1]
    gen = torch.Generator().manual_seed(order)
    num, batch, r = 2, 5, 2
    rows = torch.tensor([2, 0])  # two stacked terms read from stacks of 3 rows
    again = torch.tensor([1, 1])  # both read the same row

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen)

    head = randn(3, batch, r ** (order - 1))
    last = randn(3, batch, r)
    shift = randn(num, r ** (order - 1), r)
    operands = []
    for corr in level.corrections:
        operands += [randn(num, *[r] * corr.moment_order), randn(3, batch, *[r] * corr.rest_order)]
    spec = (
        order,
        r,
        [c.layout for c in level.corrections],
        [c.moment_shape for c in level.corrections],
        [c.rest_shape for c in level.corrections],
        rows,
        again,
        [again if i % 2 else rows for i in range(len(level.corrections))],
    )

    def ours(head, last, shift, *operands):
        return (_WickLevel.apply(spec, head, last, shift, *operands),)

    def plain(head, last, shift, *operands):
        return (fast._wick_level_plain(spec, head, last, shift, *operands),)

    _single_input_grads(ours, [head, last, shift, *operands], plain)


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weights"])
def test_moment_gradient_of_each_input_alone_matches_plain_operations(weighted):
    """:class:`_Moment` (``E[T_P ⊗ g_l]`` of rows of two stacks, ``1/B`` or presence weights)
    against ``Σ_n w_n T_P,n ⊗ g_l,n`` in plain operations: value and each input's gradient."""
    gen = torch.Generator().manual_seed(4)
    head = torch.randn(3, 6, 4, dtype=torch.float64, generator=gen)
    last = torch.randn(3, 6, 2, dtype=torch.float64, generator=gen)
    rows, again = torch.tensor([2, 0]), torch.tensor([1, 1])
    weights = None
    if weighted:
        present = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.float64)
        weights = present / present.sum(dim=1, keepdim=True)

    def ours(head, last):
        return (fast._Moment.apply(rows, again, head, last, weights),)

    def plain(head, last):
        w = torch.full((2, 6), 1 / 6, dtype=torch.float64) if weights is None else weights
        products = head[rows][:, :, :, None] * last[again][:, :, None, :]  # (2, B, 4, 2)
        return ((products * w[:, :, None, None]).sum(dim=1),)

    _single_input_grads(ours, [head, last], plain)


def test_masked_vbn_head_gradient_of_each_input_alone():
    """:class:`_MaskedVbnHead` against finite differences with only ``x`` and then only the head
    weights requiring gradients (blocks with all, some and one present sample)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen)
    present = torch.rand(3, 7, generator=gen) < 0.6
    present[0] = True
    present[2] = False
    present[2, 1] = True
    ok = (present.sum(1) >= 2).tolist()
    running_mean = torch.randn(3, 1, 5, dtype=torch.float64, generator=gen)
    running_sq = torch.rand(3, dtype=torch.float64, generator=gen) + 0.5

    def fn(x, w):
        y, z, _, _ = _MaskedVbnHead.apply(x, w, present, running_mean, running_sq, ok, False, 1e-5)
        return y, z

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), w))
    assert torch.autograd.gradcheck(fn, (x.detach(), w.requires_grad_()))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masks"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_embeddings_that_are_not_contiguous(layout, training, masked):
    """Encoder outputs in another memory layout (a transpose: dense, but column-major; a slice
    with a step): a modality alone in its width stack is then a view of that tensor, and every
    path agrees with the reference (the stacked path raised a view error on the transposed
    block in training, as elementwise operations keep its layout)."""
    torch.manual_seed(17)
    model, names, dims = build(3, 2, 2, torch.float64)  # widths 3, 4, 5: one stack each
    model.train(training)
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(17)

    def embedding(d):
        if layout == "transposed":
            return torch.randn(d, BATCH, generator=gen, dtype=torch.float64).t()
        return torch.randn(BATCH, 2 * d, generator=gen, dtype=torch.float64)[:, ::2]

    masks = {n: torch.rand(BATCH, generator=gen) < 0.7 for n in names} if masked else None
    inputs = {n: embedding(d) for n, d in dims.items()}
    if masked:
        for n, x in inputs.items():  # in place: the layout stays
            x.masked_fill_(~masks[n][:, None], 0.0)
    assert not any(x.is_contiguous() for x in inputs.values())
    _step_against_reference(model, ref, inputs, masks, torch.float64, layout)


@pytest.mark.parametrize(
    "config,masked",
    [
        ((3, 1, 2, "equal"), False),
        ((3, 2, 2, "equal"), False),
        ((3, 2, 2, "equal"), True),
        ((3, 3, 2, "equal"), False),
        ((3, 3, 3), False),
    ],
    ids=["unimodal", "whole-head", "whole-head-masks", "whole-head-triples", "stacked"],
)
def test_a_loss_on_the_blocks_alone_leaves_the_head_without_gradients(config, masked):
    """A step whose loss reads only the returned blocks (an explanation loss on its own) does
    not reach the head's weights and bias: they get no gradient (``None``), as on the module
    path, so an optimiser skips them. A zero gradient instead would let Adam move them by its
    momentum: the parameters after such a step must equal the reference's."""
    torch.manual_seed(18)
    model, names, dims = build(*config[:3], torch.float64, equal=len(config) > 3)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(18)
    y = torch.arange(BATCH) % 3
    for step in range(2):  # a task step (Adam's momentum), then a step on the blocks alone
        masks = {n: torch.rand(BATCH, generator=gen) < 0.7 for n in names} if masked else None
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()
        }
        if masked:
            inputs = {n: torch.where(masks[n][:, None], x, 0.0) for n, x in inputs.items()}
        inputs = {n: x.requires_grad_() for n, x in inputs.items()}  # as an encoder's output
        out = model.fuse(inputs, masks)
        ref_prediction, ref_blocks = reference.reference_fuse(ref, inputs, masks)
        opt.zero_grad()
        opt_ref.zero_grad()
        if step == 0:
            F.cross_entropy(out.prediction, y).backward()
            F.cross_entropy(ref_prediction, y).backward()
        else:
            sum(b.pow(3).sum() for b in out.blocks.values()).backward()
            sum(b.pow(3).sum() for b in ref_blocks.values()).backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert (p.grad is None) == (q.grad is None), f"grad {name}, step {step}"
            if q.grad is not None:
                close(p.grad, q.grad, torch.float64, f"grad {name}, step {step}")
        opt.step()
        opt_ref.step()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            close(p, q, torch.float64, f"{name} after step {step}")


def test_whole_head_function_notices_a_bias_set_after_none():
    """A head without bias (``head.bias = None``, as ``MNLFusion(bias=False)``) that is given one
    again: the one-Function head's cached state had no bias tensor to watch, and kept
    predicting without it while the reference added it."""
    torch.manual_seed(19)
    model, names, dims = build(3, 2, 2, torch.float64, equal=True)
    model.head.bias = None
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(19)
    for step in range(2):
        inputs = {
            n: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) for n, d in dims.items()
        }
        _step_against_reference(model, ref, inputs, None, torch.float64, f"step {step}")
        bias = torch.randn(3, generator=gen, dtype=torch.float64)
        model.head.bias = nn.Parameter(bias.clone())
        ref.head.bias = nn.Parameter(bias.clone())
