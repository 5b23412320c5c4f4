"""Property-based tests over random modality sets, shapes, masks and terms (hypothesis)."""

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from interfuse import MultimodalModel
from interfuse.terms import RESERVED_MODALITY_NAMES

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=6)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def models_and_batches(draw):
    names = draw(
        st.lists(
            NAMES.filter(lambda n: n not in RESERVED_MODALITY_NAMES),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    dims = {m: draw(st.integers(1, 4)) for m in names}
    interactions = draw(st.sampled_from(["none", "pairs", "all", 2, 3]))
    rank = draw(st.integers(1, 3))
    iterbn, vbn = draw(st.booleans()), draw(st.booleans())
    batch = draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: scale * torch.randn(batch, d, generator=gen) for m, d in dims.items()}
    masks = None
    if draw(st.booleans()):
        masks = {m: torch.rand(batch, generator=gen) < 0.7 for m in names}
    torch.manual_seed(seed)
    model = MultimodalModel(
        {m: nn.Linear(d, 3) for m, d in dims.items()},
        interactions=interactions,
        rank=rank,
        iterbn=iterbn,
        vbn=vbn,
        num_outputs=2,
    )
    train = draw(st.booleans())
    model.train(train)
    return model, inputs, masks


@SETTINGS
@given(models_and_batches())
def test_finite_input_gives_finite_output_and_masked_blocks_vanish(case):
    model, inputs, masks = case
    out = model(inputs, masks=masks)
    assert torch.isfinite(out.prediction).all()
    assert out.prediction.shape == (next(iter(inputs.values())).shape[0], 2)
    for name, block in out.blocks.items():
        assert torch.isfinite(block).all(), name
        if masks is not None:
            present = torch.stack([masks[m] for m in name.split("*")]).all(0)
            assert torch.all(block[~present] == 0), name
    if model.training:
        loss = out.prediction.square().mean() + model.regularizer()
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
    rel = model.relevance()
    assert abs(sum(rel.shares.values()) - 1.0) < 1e-9


@SETTINGS
@given(models_and_batches(), st.sampled_from(["drop", "extra", "batch", "nan", "mask"]))
def test_bad_inputs_raise_documented_errors(case, corruption):
    model, inputs, _ = case
    first = next(iter(inputs))
    batch = inputs[first].shape[0]
    bad = dict(inputs)
    masks = None
    if corruption == "drop":
        del bad[first]
    elif corruption == "extra":
        bad["zz_unknown"] = inputs[first]
    elif corruption == "batch":
        bad[first] = torch.cat([inputs[first], inputs[first][:1]])
        if len(inputs) == 1:
            return  # one modality: any batch size is consistent
    elif corruption == "nan":
        bad[first] = inputs[first].clone()
        bad[first][0, 0] = float("nan")
    else:
        masks = {first: torch.ones(batch + 1, dtype=torch.bool)}
    name = re.escape(repr(first))
    expected = {
        "drop": rf"missing modalities \[{name}\]",
        "extra": r"unknown modalities \['zz_unknown'\]",
        "batch": "different batch sizes",
        "nan": rf"modality {name}: input has 1 non-finite",
        "mask": rf"mask of modality {name} must be a bool tensor of shape \({batch},\)",
    }[corruption]
    with pytest.raises(ValueError, match=expected):
        model(bad, masks=masks)
