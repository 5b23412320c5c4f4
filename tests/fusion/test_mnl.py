"""MNL head: closed-form β and Ω_p against a numerical optimiser, relevance, gradients."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from interfuse.fusion.mnl import MNLFusion, block_regularizer, group_norm_regularizer, optimal_beta

P_VALUES = [1.0, 4.0 / 3.0, 2.0, 3.0]


def numerical_minimum(a: np.ndarray, p: float) -> tuple[np.ndarray, float]:
    """min Σ a_t² / β_t  s.t.  β ≥ 0, ‖β‖_p ≤ 1, solved by SLSQP from several starts."""
    best = None
    rng = np.random.default_rng(0)
    for _ in range(5):
        start = rng.uniform(0.1, 1.0, size=a.size)
        start /= np.linalg.norm(start, ord=p)
        res = minimize(
            lambda b: np.sum(a**2 / b),
            start,
            method="SLSQP",
            bounds=[(1e-9, 1.0)] * a.size,
            constraints=[{"type": "ineq", "fun": lambda b: 1.0 - np.sum(b**p)}],
            options={"ftol": 1e-14, "maxiter": 2000},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x, float(best.fun)


@pytest.mark.parametrize("p", P_VALUES)
def test_closed_form_beta_matches_numerical_optimum(p):
    a = np.array([1.3, 0.7, 0.2, 2.1, 0.05])
    beta_numeric, value_numeric = numerical_minimum(a, p)
    beta = optimal_beta(torch.tensor(a, dtype=torch.float64), p).numpy()
    omega = group_norm_regularizer(torch.tensor(a, dtype=torch.float64), p).item()
    assert np.sum(beta**p) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(beta, beta_numeric, rtol=2e-3, atol=2e-4)
    assert omega == pytest.approx(value_numeric, rel=1e-6)
    # The closed form is feasible and attains Ω_p, so nothing feasible can do better.
    assert np.sum(a**2 / beta) == pytest.approx(omega, rel=1e-10)


@pytest.mark.parametrize("p", P_VALUES)
def test_regularizer_has_gradient(p):
    head = MNLFusion({"a": 3, "b": 5, "a*b": 9}, num_outputs=2, p=p).double()
    with torch.no_grad():
        head.blocks["b"].weight.zero_()  # a zero block must not produce NaN gradients
    omega = head.regularizer()
    omega.backward()
    for name, block in head.blocks.items():
        assert block.weight.grad is not None, name
        assert torch.isfinite(block.weight.grad).all(), name
    assert head.blocks["a"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_regularizer_gradcheck(p):
    weights = [torch.randn(2, d, dtype=torch.float64, requires_grad=True) for d in (3, 4, 6)]

    def omega(*ws):
        norms = torch.stack([torch.linalg.vector_norm(w) for w in ws])
        return group_norm_regularizer(norms, p)

    assert torch.autograd.gradcheck(omega, weights)


def _composition(weights, p):
    """Ω_p through autograd's own operations: the reference for ``block_regularizer``."""
    return group_norm_regularizer(torch.stack([w.norm() for w in weights]), p)


def _blocks(dtype=torch.float64, zero=(), seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(2, d, generator=gen, dtype=dtype) for d in (3, 5, 1, 8)]
    for i in zero:
        weights[i].zero_()
    return [w.requires_grad_() for w in weights]


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("zero", [(), (1,), (0, 1, 2, 3)])
def test_block_regularizer_matches_the_composition(p, zero):
    """Value and gradients of the CPU Function against autograd through the formula, with zero
    blocks (gradient 0 there, as the composition's subgradient) and all blocks zero."""
    ours, reference = _blocks(zero=zero), _blocks(zero=zero)
    value = block_regularizer(ours, p)
    assert type(value.grad_fn).__name__ == "_CpuBlockRegularizerBackward"
    expected = _composition(reference, p)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)
    (3.0 * value).backward()
    (3.0 * expected).backward()
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12)
    for i in zero:
        assert torch.equal(ours[i].grad, torch.zeros_like(ours[i]))


def test_block_regularizer_in_float32_keeps_the_dtype_and_agrees():
    ours, reference = _blocks(torch.float32), _blocks(torch.float32)
    value = block_regularizer(ours, 1.5)
    assert value.dtype == torch.float32 and value.shape == ()
    expected = _composition(reference, 1.5)
    torch.testing.assert_close(value, expected)
    value.backward()
    expected.backward()
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # inside gradcheck
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_block_regularizer_first_second_and_forward_mode_derivatives(p):
    weights = _blocks(seed=1)
    assert torch.autograd.gradcheck(lambda *w: block_regularizer(w, p), weights)
    assert torch.autograd.gradgradcheck(lambda *w: block_regularizer(w, p), weights)
    assert torch.autograd.gradcheck(
        lambda *w: block_regularizer(w, p),
        weights,
        check_forward_ad=True,
        check_backward_ad=False,
        check_batched_grad=False,
    )


def _hessian_vector_product(weights, tangents, p, regularizer):
    """Reverse mode over forward mode: ``∇_W ⟨∇Ω, Ẇ⟩``."""
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(w, t) for w, t in zip(weights, tangents)]
        tangent = torch.autograd.forward_ad.unpack_dual(regularizer(duals, p)).tangent
    return torch.autograd.grad(tangent, weights)


@pytest.mark.parametrize("p", [1.0, 1.5, 3.0])
def test_block_regularizer_higher_derivatives_in_every_order_of_modes(p):
    """Reverse over forward, forward over reverse and batched gradients agree with the
    composition (they need the coefficients as functions of the blocks, not as numbers)."""
    gen = torch.Generator().manual_seed(2)
    tangents = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in _blocks()]
    ours = _hessian_vector_product(_blocks(), tangents, p, block_regularizer)
    expected = _hessian_vector_product(_blocks(), tangents, p, _composition)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)

    def forward_over_reverse(regularizer):
        weights = _blocks()
        with torch.autograd.forward_ad.dual_level():
            duals = [torch.autograd.forward_ad.make_dual(w, t) for w, t in zip(weights, tangents)]
            grads = torch.autograd.grad(regularizer(duals, p), duals, create_graph=True)
            return [torch.autograd.forward_ad.unpack_dual(g).tangent for g in grads]

    for got, want in zip(forward_over_reverse(block_regularizer), expected):
        torch.testing.assert_close(got, want)

    weights = _blocks()
    value = block_regularizer(weights, p)
    batched = torch.autograd.grad(
        value,
        weights,
        grad_outputs=torch.tensor([1.0, -2.0], dtype=value.dtype),
        is_grads_batched=True,
    )
    reference = _blocks()
    first = torch.autograd.grad(_composition(reference, p), reference)
    for got, want in zip(batched, first):
        torch.testing.assert_close(got, torch.stack([want, -2.0 * want]))


def test_block_regularizer_under_torch_func_transforms():
    weights = [w.detach() for w in _blocks()]

    def omega(w0):
        return block_regularizer([w0, *weights[1:]], 2.0)

    def reference(w0):
        return _composition([w0, *weights[1:]], 2.0)

    batch = torch.stack([weights[0], 2 * weights[0]])
    torch.testing.assert_close(torch.vmap(omega)(batch), torch.vmap(reference)(batch))
    tangent = torch.ones_like(weights[0])
    torch.testing.assert_close(
        torch.func.jvp(omega, (weights[0],), (tangent,)),
        torch.func.jvp(reference, (weights[0],), (tangent,)),
    )
    torch.testing.assert_close(
        torch.func.hessian(omega)(weights[0]), torch.func.hessian(reference)(weights[0])
    )


def test_block_regularizer_overflow_nan_and_mixed_dtypes_behave_as_the_composition():
    big = [torch.full((1, 1), 1e154, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    value = block_regularizer(big, 1.0)  # float64 arithmetic overflows: inf, no exception
    assert value.item() == float("inf")
    weights = _blocks()
    with torch.no_grad():
        weights[1][0, 0] = float("nan")
    value = block_regularizer(weights, 2.0)
    value.backward()
    assert value.isnan() and all(w.grad.isnan().all() for w in weights)
    mixed = [torch.randn(2, 3, requires_grad=True), torch.randn(2, 4, dtype=torch.float64)]
    value = block_regularizer(mixed, 2.0)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, _composition([w.double() for w in mixed], 2.0))


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("case", ["one block", "small norms"])
def test_block_regularizer_one_block_and_norms_below_one(p, case):
    """A single block, and blocks whose Σ‖W_t‖^q is below 1: value, gradient and forward-mode
    derivative as the composition's."""
    scale, count = (1.0, 1) if case == "one block" else (0.02, 4)
    ours = [(w.detach() * scale).requires_grad_() for w in _blocks()[:count]]
    reference = [w.detach().clone().requires_grad_() for w in ours]
    value, expected = block_regularizer(ours, p), _composition(reference, p)
    torch.testing.assert_close(value, expected)
    (-1.5 * value).backward()
    (-1.5 * expected).backward()
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got.grad, want.grad)
    tangents = [torch.ones_like(w) for w in ours]
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(w.detach(), t) for w, t in zip(ours, tangents)]
        tangent = torch.autograd.forward_ad.unpack_dual(block_regularizer(duals, p)).tangent
    first = [w.grad / -1.5 for w in reference]
    torch.testing.assert_close(tangent, sum((g * t).sum() for g, t in zip(first, tangents)))


def test_block_regularizer_gradient_with_create_graph_is_the_plain_gradient():
    """The recomputed (differentiable) coefficients give the same first derivative, 0 and
    finite at a zero block."""
    weights = _blocks(zero=(2,))
    plain = torch.autograd.grad(block_regularizer(weights, 1.5), weights)
    graph = torch.autograd.grad(block_regularizer(weights, 1.5), weights, create_graph=True)
    for got, want in zip(graph, plain):
        torch.testing.assert_close(got, want)
    assert torch.equal(graph[2], torch.zeros_like(graph[2]))


def test_block_regularizer_leaves_frozen_blocks_alone():
    weights = _blocks()
    weights[2].requires_grad_(False)
    reference = [w.detach().clone().requires_grad_(w.requires_grad) for w in weights]
    (2.5 * block_regularizer(weights, 2.0)).backward()
    (2.5 * _composition(reference, 2.0)).backward()
    assert weights[2].grad is None
    for i in (0, 1, 3):
        torch.testing.assert_close(weights[i].grad, reference[i].grad)


def test_block_regularizer_in_compiled_code_is_the_composition(monkeypatch):
    """Compiled code gets the plain composition (the Function reads the norms as Python
    numbers, which a compiler cannot trace)."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    value = block_regularizer(_blocks(), 2.0)
    assert type(value.grad_fn).__name__ == "PowBackward0"
    torch.testing.assert_close(value, _composition(_blocks(), 2.0))


def test_block_regularizer_needs_a_block_and_a_valid_p():
    with pytest.raises(ValueError, match="at least one weight block"):
        block_regularizer([], 2.0)
    with pytest.raises(ValueError, match="p must be"):
        block_regularizer(_blocks(), 0.5)


def test_regularizer_of_the_head_is_the_block_regularizer_of_its_weights():
    head = MNLFusion({"a": 3, "b": 5, "a*b": 9}, num_outputs=2, p=3.0).double()
    weights = [block.weight for block in head.blocks.values()]
    torch.testing.assert_close(head.regularizer(), _composition(weights, 3.0))
    torch.testing.assert_close(head.regularizer(1.0), _composition(weights, 1.0))


def test_relevance_beta_and_shares():
    head = MNLFusion({"x": 4, "y": 4, "x*y": 16}, num_outputs=1, p=3.0).double()
    with torch.no_grad():
        head.blocks["x"].weight.fill_(1.0)  # norm 2
        head.blocks["y"].weight.fill_(0.5)  # norm 1
        head.blocks["x*y"].weight.zero_()
    rel = head.relevance()
    beta = np.array([rel.beta[t] for t in ("x", "y", "x*y")])
    assert np.sum(beta**3) == pytest.approx(1.0)
    assert sum(rel.shares.values()) == pytest.approx(1.0)
    assert rel.shares["x*y"] == 0.0
    # β_t ∝ a_t^{2/(p+1)} = a_t^{1/2}: ratio of x to y is sqrt(2).
    assert rel.beta["x"] / rel.beta["y"] == pytest.approx(np.sqrt(2.0))
    assert rel.ranking() == ["x", "y", "x*y"]
    assert "x*y" in rel.table()


def test_relevance_p1_shares_equal_beta():
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=2, p=1.0)
    rel = head.relevance()
    for t in rel.beta:
        assert rel.beta[t] == pytest.approx(rel.shares[t])


def test_relevance_is_plain_floats_from_the_float64_block_norms():
    torch.manual_seed(0)
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=2, p=2.0)  # float32 weights, with grad
    rel = head.relevance()
    assert all(type(v) is float for v in (*rel.beta.values(), *rel.shares.values()))
    norms = np.array(
        [np.linalg.norm(head.blocks[t].weight.detach().double().numpy()) for t in "ab"]
    )
    beta = norms ** (2 / 3) / np.sum(norms ** (4 / 3)) ** 0.5  # p = 2
    assert [rel.beta[t] for t in "ab"] == pytest.approx(beta, rel=1e-6)
    assert [rel.shares[t] for t in "ab"] == pytest.approx(beta / beta.sum(), rel=1e-6)


@pytest.mark.parametrize("p", P_VALUES)
def test_all_zero_block_norms_give_zero_beta_and_zero_shares(p):
    beta = optimal_beta(torch.zeros(3, dtype=torch.float64), p)
    assert torch.equal(beta, torch.zeros(3, dtype=torch.float64))
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=1, p=p)
    with torch.no_grad():
        for block in head.blocks.values():
            block.weight.zero_()
    rel = head.relevance()
    assert rel.beta == {"a": 0.0, "b": 0.0} and rel.shares == {"a": 0.0, "b": 0.0}


def test_one_non_zero_block_gets_beta_one():
    beta = optimal_beta(torch.tensor([0.0, 3.0, 0.0], dtype=torch.float64), 2.0)
    assert beta.tolist() == [0.0, 1.0, 0.0]


def test_forward_is_sum_of_blocks():
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=4)
    za, zb = torch.randn(5, 2), torch.randn(5, 3)
    expected = za @ head.blocks["a"].weight.T + zb @ head.blocks["b"].weight.T + head.bias
    torch.testing.assert_close(head({"a": za, "b": zb}), expected)


@pytest.mark.parametrize("p", [0.5, float("nan"), float("inf"), -1.0])
def test_invalid_p_is_rejected(p):
    with pytest.raises(ValueError, match="p must be"):
        MNLFusion({"a": 2}, num_outputs=1, p=p)
    head = MNLFusion({"a": 2}, num_outputs=1)
    with pytest.raises(ValueError, match="p must be"):
        head.relevance(p)
    with pytest.raises(ValueError, match="p must be"):
        head.regularizer(p)


def test_missing_block_is_named():
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=1)
    with pytest.raises(ValueError, match="'b'"):
        head({"a": torch.randn(4, 2)})


def test_output_relevance_uses_the_rows_of_one_output():
    torch.manual_seed(0)
    single = MNLFusion({"a": 3, "b": 2}, num_outputs=1, p=2.0)
    one, whole = single.output_relevance(0), single.relevance()
    assert one.shares == pytest.approx(whole.shares) and one.beta == pytest.approx(whole.beta)
    head = MNLFusion({"a": 3, "b": 2}, num_outputs=2, p=2.0)
    with torch.no_grad():
        head.blocks["a"].weight[1].zero_()  # output 1 does not read term a
    assert head.output_relevance(1).shares["a"] == 0.0
    assert head.output_relevance(0).shares["a"] > 0.0
    with pytest.raises(ValueError, match="output must be in 0..1"):
        head.output_relevance(2)


def test_default_p_is_2():
    head = MNLFusion({"a": 2, "b": 3}, num_outputs=1)
    beta = torch.tensor(list(head.relevance().beta.values()))
    assert head.p == 2.0 and float(beta.pow(2).sum()) == pytest.approx(1.0, abs=1e-12)
