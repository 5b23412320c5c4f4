"""IterBN against a slow reference and against the properties a Wick product must have."""

import itertools
import math

import numpy as np
import pytest
import torch

from interfuse.fusion.interactions import InteractionFactors, IterBN, outer_products

MODALITIES = ("a", "b", "c", "d")


def reference_wick(factors: dict[str, np.ndarray], term: tuple[str, ...]) -> np.ndarray:
    """Slow Wick product, written independently: one scalar recursion per index tuple.

    For an index tuple (i_1, …, i_k) the coordinate is the Wick product of the scalar variables
    x_j = g_{term_j}[:, i_j]; positions are subsets encoded as bitmasks, expectations batch means.
    """
    k = len(term)
    n, r = factors[term[0]].shape
    out = np.zeros((n,) + (r,) * k)
    for index in itertools.product(range(r), repeat=k):
        xs = [factors[m][:, i] for m, i in zip(term, index)]

        def raw(mask, xs=xs):
            value = np.ones(n)
            for j in range(k):
                if mask >> j & 1:
                    value = value * xs[j]
            return value

        wick = {0: np.ones(n)}
        for mask in sorted(range(1, 1 << k), key=lambda m: bin(m).count("1")):
            value = raw(mask)
            sub = mask
            while sub:  # every non-empty sub-mask R of mask
                value = value - raw(sub).mean() * wick[mask & ~sub]
                sub = (sub - 1) & mask
            wick[mask] = value
        out[(slice(None),) + index] = wick[(1 << k) - 1]
    return out


def random_factors(n, r, seed, centred=False, dtype=torch.float64):
    """Correlated, skewed factors (so that every correction term matters)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 3, generator=gen, dtype=dtype)
    factors = {}
    for m in MODALITIES:
        mix = torch.randn(3, r, generator=gen, dtype=dtype)
        g = latent @ mix + 0.5 * torch.randn(n, r, generator=gen, dtype=dtype)
        g = g + 0.3 * g.pow(2) + torch.randn(r, generator=gen, dtype=dtype)
        factors[m] = g - g.mean(0) if centred else g
    return factors


ALL_TERMS = [t for k in (2, 3, 4) for t in itertools.combinations(MODALITIES, k)]


@pytest.mark.parametrize("centred", [False, True])
def test_matches_slow_reference_up_to_order_four(centred):
    factors = random_factors(n=24, r=3, seed=0, centred=centred)
    iterbn = IterBN(ALL_TERMS, rank=3).double()
    out = iterbn(factors)
    numpy_factors = {m: g.numpy() for m, g in factors.items()}
    for term in ALL_TERMS:
        expected = reference_wick(numpy_factors, term)
        np.testing.assert_allclose(
            out[term].numpy(), expected, atol=1e-10, rtol=0, err_msg=str(term)
        )


def test_order_two_and_three_closed_forms():
    f = random_factors(n=30, r=2, seed=1, centred=True)
    a, b, c = f["a"], f["b"], f["c"]
    out = IterBN([("a", "b"), ("a", "b", "c")], rank=2).double()(f)
    t_ab = torch.einsum("ni,nj->nij", a, b)
    torch.testing.assert_close(out[("a", "b")], t_ab - t_ab.mean(0))
    t_abc = torch.einsum("ni,nj,nk->nijk", a, b, c)
    e_ab = t_ab.mean(0)
    e_ac = torch.einsum("ni,nk->nik", a, c).mean(0)
    e_bc = torch.einsum("nj,nk->njk", b, c).mean(0)
    expected = (
        t_abc
        - t_abc.mean(0)
        - torch.einsum("ij,nk->nijk", e_ab, c)
        - torch.einsum("ik,nj->nijk", e_ac, b)  # E[T_ac] sits at axes (i, k), not (i, j)
        - torch.einsum("jk,ni->nijk", e_bc, a)
    )
    torch.testing.assert_close(out[("a", "b", "c")], expected)


@pytest.mark.parametrize("centred", [False, True])
def test_zero_batch_mean(centred):
    f = random_factors(n=40, r=3, seed=2, centred=centred)
    out = IterBN(ALL_TERMS, rank=3).double()(f)
    for term, value in out.items():
        assert value.mean(0).abs().max().item() < 1e-12, term


def test_constant_factor_zeroes_the_block():
    f = random_factors(n=20, r=3, seed=3)
    f["c"] = torch.tensor([0.7, -1.2, 3.0], dtype=torch.float64).expand(20, 3).clone()
    out = IterBN(ALL_TERMS, rank=3).double()(f)
    for term, value in out.items():
        if "c" in term:
            assert value.abs().max().item() < 1e-12, term
        else:
            assert value.abs().max().item() > 1e-3, term


def z_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """t-statistics of E[x_i y_j] = 0 for every coordinate pair of centred x (n, p) and y (n, q).

    Products of Gaussians are heavy-tailed, so the standard error is estimated per pair from the
    sample of x_i y_j rather than assumed to be 1/sqrt(n).
    """
    x = x - x.mean(0)
    y = y - y.mean(0)
    prod = x[:, :, None] * y[:, None, :]
    return prod.mean(0) / (prod.std(0) / math.sqrt(x.shape[0]))


def test_decorrelated_from_every_lower_order_block_gaussian():
    n, r = 40_000, 2
    gen = torch.Generator().manual_seed(4)
    # Zero-mean Gaussian factors, strongly correlated within and across modalities.
    cov_root = torch.randn(4 * r, 4 * r, generator=gen, dtype=torch.float64) * 0.5
    cov_root += torch.eye(4 * r, dtype=torch.float64)
    z = torch.randn(n, 4 * r, generator=gen, dtype=torch.float64) @ cov_root
    factors = {m: z[:, i * r : (i + 1) * r] for i, m in enumerate(MODALITIES)}
    iterbn = IterBN(ALL_TERMS, rank=r).double()
    wick = iterbn(factors)
    wick.update({(m,): factors[m] - factors[m].mean(0) for m in MODALITIES})
    raw = outer_products(factors, ALL_TERMS)

    # About 1,700 coordinate pairs are tested; |t| < 5.5 has a family-wise error below 1e-4.
    worst_wick, worst_raw = 0.0, 0.0
    for term in ALL_TERMS:
        for k in range(1, len(term)):
            for sub in itertools.combinations(term, k):
                t = z_scores(wick[term].flatten(1), wick[sub].flatten(1)).abs().max().item()
                assert t < 5.5, (term, sub, t)
                worst_wick = max(worst_wick, t)
                t_raw = z_scores(raw[term].flatten(1), wick[sub].flatten(1)).abs().max().item()
                worst_raw = max(worst_raw, t_raw)
    # Without the Wick corrections the products do correlate with lower orders: the test can fail.
    assert worst_raw > 20, worst_raw


def test_independent_of_term_listing_order_and_axis_order():
    f = random_factors(n=16, r=2, seed=5)
    forward = IterBN(ALL_TERMS, rank=2).double()(f)
    backward = IterBN(list(reversed(ALL_TERMS)), rank=2).double()(f)
    for term in ALL_TERMS:
        torch.testing.assert_close(forward[term], backward[term], rtol=0, atol=1e-12)
    # Listing a term's modalities in another order permutes the tensor axes and nothing else.
    permuted_term = ("c", "a", "d", "b")
    permuted = IterBN([permuted_term], rank=2).double()(f)[permuted_term]
    axes = [0] + [1 + permuted_term.index(m) for m in ("a", "b", "c", "d")]
    torch.testing.assert_close(permuted.permute(axes), forward[("a", "b", "c", "d")])


def test_eval_uses_running_means():
    f = random_factors(n=32, r=3, seed=6)
    iterbn = IterBN(ALL_TERMS, rank=3, momentum=1.0).double()
    train_out = iterbn(f)
    iterbn.eval()
    eval_out = iterbn(f)  # running means = the training batch's means when momentum is 1
    for term in ALL_TERMS:
        torch.testing.assert_close(eval_out[term], train_out[term])
    other = random_factors(n=5, r=3, seed=7)
    assert iterbn(other)[("a", "b")].shape == (5, 3, 3)  # any batch size in eval, even 1
    assert iterbn({m: g[:1] for m, g in other.items()})[("a", "b")].shape == (1, 3, 3)


def test_shared_subterm_moments_are_computed_once():
    iterbn = IterBN([("a", "b", "c"), ("a", "b", "d"), ("a", "b")], rank=2)
    # One running mean per distinct sub-term: {a, b, c, d, ab, ac, bc, ad, bd, abc, abd}.
    assert len(iterbn.subterms) == 11
    buffers = [name for name, _ in iterbn.named_buffers() if name.startswith("running_mean_")]
    assert len(buffers) == 11 and "running_mean_a*b" in buffers


def test_factors_are_centred_projections():
    factors = InteractionFactors({"a": 5, "b": 3}, rank=4).double()
    h = {
        "a": torch.randn(10, 5, dtype=torch.float64) + 2,
        "b": torch.randn(10, 3, dtype=torch.float64),
    }
    g = factors(h)
    assert g["a"].shape == (10, 4)
    torch.testing.assert_close(g["a"].mean(0), torch.zeros(4, dtype=torch.float64))
    uncentred = InteractionFactors({"a": 5}, rank=4, center=False)
    assert uncentred.projections["a"].bias is not None


def test_invalid_rank():
    with pytest.raises(ValueError, match="rank"):
        IterBN([("a", "b")], rank=0)
    with pytest.raises(ValueError, match="rank"):
        InteractionFactors({"a": 3}, rank=0)


def test_centred_shortcut_is_exact_for_centred_factors():
    f = random_factors(n=20, r=2, seed=8, centred=True)
    general = IterBN(ALL_TERMS, rank=2, momentum=1.0).double()
    shortcut = IterBN(ALL_TERMS, rank=2, momentum=1.0, centred_factors=True).double()
    for mode in ("train", "eval"):
        general.train(mode == "train")
        shortcut.train(mode == "train")
        a, b = general(f), shortcut(f)
        for term in ALL_TERMS:
            torch.testing.assert_close(a[term], b[term], rtol=0, atol=1e-12, msg=(mode, term))


def test_eval_on_another_batch_neither_uses_nor_stores_its_moments():
    iterbn = IterBN([("a", "b")], rank=3, momentum=1.0).double()
    iterbn(random_factors(n=32, r=3, seed=6))
    stored = {name: b.clone() for name, b in iterbn.named_buffers()}
    iterbn.eval()
    other = random_factors(n=16, r=3, seed=7)
    out = iterbn(other)[("a", "b")]
    for name, buffer in iterbn.named_buffers():
        assert torch.equal(buffer, stored[name]), name
    # with the stored means: :ab: = ab − E[ab] − E[a]⊗:b: − :a:⊗E[b], :m: = m − E[m]
    mean = {m: stored[f"running_mean_{m}"] for m in "ab"}
    wick_a, wick_b = other["a"] - mean["a"], other["b"] - mean["b"]
    expected = (
        torch.einsum("ni,nj->nij", other["a"], other["b"])
        - stored["running_mean_a*b"]
        - torch.einsum("i,nj->nij", mean["a"], wick_b)
        - torch.einsum("ni,j->nij", wick_a, mean["b"])
    )
    torch.testing.assert_close(out, expected)


def test_num_batches_tracked_counts_training_batches_only():
    iterbn = IterBN([("a", "b")], rank=2)
    assert iterbn.num_batches_tracked.item() == 0
    factors = random_factors(n=8, r=2, seed=1, dtype=torch.float32)
    for _ in range(3):
        iterbn(factors)
    iterbn.eval()
    iterbn(factors)
    assert iterbn.num_batches_tracked.item() == 3


def test_training_needs_two_samples_without_masks():
    iterbn = IterBN([("a", "b")], rank=3).train()
    one = {m: torch.randn(1, 3) for m in "ab"}
    with pytest.raises(ValueError, match="at least 2 samples in training mode, got 1"):
        iterbn(one)
    two = {m: torch.randn(2, 1) for m in "ab"}
    assert IterBN([("a", "b")], rank=1).train()(two)[("a", "b")].shape == (2, 1, 1)


def test_factors_of_rank_one_are_valid():
    factors = InteractionFactors({"a": 2, "b": 3}, rank=1)
    g = factors({"a": torch.randn(4, 2), "b": torch.randn(4, 3)})
    assert g["a"].shape == (4, 1) and g["b"].shape == (4, 1)


def test_default_momentum_is_batch_norms_0_1():
    """From zero running statistics one training batch leaves 0.1 × its mean, as in BatchNorm."""
    h = {"a": torch.randn(6, 2, dtype=torch.float64) + 3.0}
    factors = InteractionFactors({"a": 2}, rank=2).double()
    g = factors(h)["a"]
    projected = factors.projections["a"](h["a"]).detach()
    torch.testing.assert_close(factors.centering["a"].running_mean, 0.1 * projected.mean(0))
    assert torch.allclose(g.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    f = random_factors(n=10, r=2, seed=3)
    iterbn = IterBN([("a", "b")], rank=2).double()
    iterbn(f)
    ab = torch.einsum("ni,nj->nij", f["a"], f["b"]).mean(0)
    torch.testing.assert_close(iterbn.running_mean_a, 0.1 * f["a"].mean(0))
    torch.testing.assert_close(getattr(iterbn, "running_mean_a*b"), 0.1 * ab)
