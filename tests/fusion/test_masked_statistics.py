"""Batch statistics under presence masks, on every path that computes them.

With momentum 1 a running statistic equals the last batch statistic, so the buffers show exactly
which rows a statistic was taken over. Every statistic of a term must use only the rows where all
of the term's modalities are present: the factor centring (per modality), the IterBN moments
E[T_R] (per sub-term R) and vBN (per block). Expected values are computed here from the
projection weights, in float64, with plain tensor operations.

Paths: ``fast`` (``MultimodalModel.fuse`` with IterBN and vBN: the stacked fast path),
``modules`` (IterBN without vBN: the module-by-module path through ``InteractionFactors`` and
``IterBN``) and ``reference`` (the frozen pre-fast-path copy in ``reference_fusion.py``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel
from interfuse.fusion.interactions import IterBN

NAMES = ("a", "b", "c")
DIMS = {"a": 3, "b": 4, "c": 2}
RANK = 2
BATCH = 10
EPS = 1e-5


# Different presence sets per modality, each with >= 2 present rows and >= 2 rows for every
# pair and the triple (so that every statistic is a batch statistic).
MASKS = {
    "a": torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool),
    "b": torch.tensor([1, 1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool),
    "c": torch.tensor([1, 0, 1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool),
}


def presence(term):
    result = torch.ones(BATCH, dtype=torch.bool)
    for m in term:
        result = result & MASKS[m]
    return result


def present_mean(x, term):
    keep = presence(term)
    return x[keep].mean(dim=0)


def outer(factors, term):
    value = factors[term[0]]
    for m in term[1:]:
        value = torch.einsum("b...,bj->b...j", value, factors[m])
    return value


def build(vbn=True):
    torch.manual_seed(0)
    model = MultimodalModel(
        {m: nn.Identity() for m in NAMES},
        interactions=3,
        rank=RANK,
        num_outputs=2,
        encoder_dims=DIMS,
        momentum=1.0,
        vbn=vbn,
    ).double()
    with torch.no_grad():  # non-zero running statistics beforehand: a skipped update shows
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.normal_()
    return model


def embeddings():
    gen = torch.Generator().manual_seed(1)
    # not centred (offset 2), absent rows zero as MultimodalModel.encode leaves them
    h = {m: torch.randn(BATCH, d, generator=gen, dtype=torch.float64) + 2 for m, d in DIMS.items()}
    return {m: torch.where(MASKS[m][:, None], x, 0.0) for m, x in h.items()}


def expected_statistics(model, h):
    """Factor means, centred factors, IterBN moments and pair Wick products, masked."""
    raw = {m: h[m] @ model.factors.projections[m].weight.T for m in NAMES}
    factor_mean = {m: present_mean(raw[m], (m,)) for m in NAMES}
    g = {m: raw[m] - factor_mean[m] for m in NAMES}
    moments = {}
    for k in (1, 2, 3):
        for term in itertools.combinations(NAMES, k):
            moments[term] = present_mean(outer(g, term), term)
    wick_pairs = {
        pair: (outer(g, pair) - moments[pair]).flatten(1)
        for pair in itertools.combinations(NAMES, 2)
    }
    return factor_mean, moments, wick_pairs


def run(path, reference):
    model = build(vbn=path != "modules")
    h = embeddings()
    expected = expected_statistics(model, h)
    model.train()
    if path == "reference":
        _, blocks = reference.reference_fuse(model, h, MASKS)
    else:
        assert model.uses_fast_path() == (path == "fast")
        blocks = model.fuse(h, MASKS).blocks
    return model, h, expected, blocks


PATHS = ["fast", "modules", "reference"]


@pytest.mark.parametrize("path", PATHS)
def test_factor_centring_uses_only_rows_where_the_modality_is_present(path, reference):
    model, _, (factor_mean, _, _), _ = run(path, reference)
    for m in NAMES:
        torch.testing.assert_close(model.factors.centering[m].running_mean, factor_mean[m])
        assert int(model.factors.centering[m].num_batches_tracked) == 1


@pytest.mark.parametrize("path", PATHS)
def test_iterbn_moments_are_means_over_rows_where_the_subterm_is_present(path, reference):
    model, _, (_, moments, _), _ = run(path, reference)
    for term, moment in moments.items():
        buffer = getattr(model.wick, model.wick._buffer(term))
        torch.testing.assert_close(buffer, moment, msg=lambda s, term=term: f"{term}: {s}")
    # single-modality moments of centred factors are exactly zero over their own rows
    for m in NAMES:
        assert getattr(model.wick, model.wick._buffer((m,))).abs().max() < 1e-12


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_masked_vbn_normalises_over_present_rows_and_zeroes_absent_rows(path, reference):
    model, h, (_, _, wick_pairs), blocks = run(path, reference)
    for m in NAMES:  # unimodal blocks: mean and unbiased squared norm over present rows
        keep = MASKS[m]
        mean = h[m][keep].mean(0)
        sq = (h[m][keep] - mean).pow(2).sum(1)
        torch.testing.assert_close(model.norms[m].running_mean, mean)
        torch.testing.assert_close(model.norms[m].running_sq_norm, sq.sum() / (int(keep.sum()) - 1))
        expected = (h[m] - mean) / torch.sqrt(sq.mean() + EPS)
        torch.testing.assert_close(blocks[m], torch.where(keep[:, None], expected, 0.0))
    for pair, w in wick_pairs.items():  # pair blocks: vBN of the masked Wick product
        keep = presence(pair)
        scale = torch.sqrt(w[keep].pow(2).sum(1).mean() + EPS)
        name = "*".join(pair)
        torch.testing.assert_close(blocks[name], torch.where(keep[:, None], w / scale, 0.0))


def test_iterbn_module_masked_moment_is_mean_over_present_rows():
    """IterBN alone, uncentred factors: every subterm's moment over its own present rows."""
    gen = torch.Generator().manual_seed(2)
    g = {m: torch.randn(BATCH, RANK, generator=gen, dtype=torch.float64) + 1 for m in NAMES}
    wick = IterBN([("a", "b"), ("a", "b", "c")], RANK, momentum=1.0).double()
    out = wick(g, MASKS)
    for term in wick.subterms:
        torch.testing.assert_close(
            getattr(wick, wick._buffer(term)), present_mean(outer(g, term), term)
        )
    # order 2, uncentred: :T_ab: = T_ab − E[T_a] ⊗ g_b − g_a ⊗ E[T_b] − E[T_ab] + 2 E[T_a] ⊗ E[T_b]
    ea, eb = present_mean(g["a"], ("a",)), present_mean(g["b"], ("b",))
    eab = present_mean(outer(g, ("a", "b")), ("a", "b"))
    expected = (
        outer(g, ("a", "b"))
        - ea[None, :, None] * g["b"][:, None, :]
        - g["a"][:, :, None] * eb[None, None, :]
        - eab
        + 2 * ea[:, None] * eb[None, :]
    )
    torch.testing.assert_close(out[("a", "b")], expected)
