"""Missing modalities (docs/missing-modalities.md): masked blocks become 0, statistics skip
missing samples."""

import copy

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel

DIMS = {"a": 3, "b": 4, "c": 2}


def make_model(**kwargs):
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(d, 5), nn.Tanh()) for m, d in DIMS.items()}
    return MultimodalModel(
        encoders,
        interactions="all",
        rank=2,
        num_outputs=2,
        encoder_dims={m: 5 for m in DIMS},
        **kwargs,
    )


def make_inputs(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=gen) for m, d in DIMS.items()}


def test_all_present_masks_change_nothing():
    model, twin = make_model(), make_model()
    inputs = make_inputs()
    ones = {m: torch.ones(12, dtype=torch.bool) for m in DIMS}
    torch.testing.assert_close(model(inputs).prediction, twin(inputs, masks=ones).prediction)
    for (name, x), (_, y) in zip(model.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(x, y, msg=name)


@pytest.mark.parametrize("iterbn", [True, False])
def test_missing_blocks_are_replaced_by_zero_in_eval(iterbn):
    model = make_model(iterbn=iterbn)
    model(make_inputs(seed=1))  # some running statistics
    model.eval()
    inputs = make_inputs(n=6, seed=2)
    present_b = torch.tensor([True, False, True, False, True, True])
    out = model(inputs, masks={"b": present_b})
    full = model(inputs)
    # Brute force: the full blocks with every term containing b zeroed where b is missing.
    blocks = {
        t: torch.where(present_b[:, None], z, 0.0) if "b" in t.split("*") else z
        for t, z in full.blocks.items()
    }
    torch.testing.assert_close(out.prediction, model.head(blocks))
    for t, z in out.blocks.items():
        if "b" in t.split("*"):
            assert torch.all(z[~present_b] == 0), t
    assert torch.equal(out.present["b"], present_b)


def test_present_is_none_without_masks_and_every_mask_with_them():
    """docs/missing-modalities.md §1: ``out.present`` is ``None`` only when no masks were given."""
    model = make_model()
    inputs = make_inputs()
    assert model(inputs).present is None
    present = model(inputs, masks={"a": True}).present
    assert set(present) == set(DIMS) and all(bool(mask.all()) for mask in present.values())


def test_whole_batch_missing_can_be_left_out():
    model = make_model()
    model.eval()
    inputs = make_inputs(n=5)
    left_out = model({m: x for m, x in inputs.items() if m != "c"}, masks={"c": False})
    zeroed = model(inputs, masks={"c": False})
    torch.testing.assert_close(left_out.prediction, zeroed.prediction)


def test_statistics_and_gradients_ignore_missing_samples():
    model = make_model()
    subset_model = copy.deepcopy(model)
    inputs = make_inputs(n=16, seed=3)
    present_a = torch.arange(16) % 3 != 0
    poisoned = dict(inputs)
    poisoned["a"] = inputs["a"].clone()
    poisoned["a"][~present_a] = float("nan")  # whatever a missing sample holds must not matter
    out = model(poisoned, masks={"a": present_a})
    assert torch.isfinite(out.prediction).all()
    out.prediction.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The unimodal statistics of `a` are those of its present samples alone.
    subset_model({m: x[present_a] for m, x in inputs.items()})
    torch.testing.assert_close(model.norms["a"].running_mean, subset_model.norms["a"].running_mean)
    torch.testing.assert_close(
        model.norms["a"].running_sq_norm, subset_model.norms["a"].running_sq_norm
    )


def test_training_with_a_modality_missing_for_the_whole_batch():
    model = make_model()
    inputs = make_inputs()
    before = model.norms["b"].running_mean.clone()
    out = model({m: x for m, x in inputs.items() if m != "b"}, masks={"b": False})
    out.prediction.sum().backward()
    assert torch.equal(model.norms["b"].running_mean, before)  # not polluted
    assert torch.all(out.blocks["a*b"] == 0)


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (
            {"a": torch.ones(3, dtype=torch.bool)},
            r"mask of modality 'a' must be a bool tensor of shape \(12,\)",
        ),
        ({"a": torch.ones(12)}, "mask of modality 'a' must be a bool tensor"),
        ({"z": False}, r"unknown modalities \['z'\]"),
    ],
)
def test_bad_masks_are_named(masks, message):
    with pytest.raises(ValueError, match=message):
        make_model()(make_inputs(), masks=masks)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    ("masks", "message"),
    [
        ({"z": torch.ones(12, dtype=torch.bool)}, r"unknown modalities \['z'\]"),
        ({"a": torch.ones(12, dtype=torch.long)}, "mask of modality 'a' must be a bool tensor"),
        ({"a": torch.ones(12)}, "mask of modality 'a' must be a bool tensor"),
        ({"a": torch.ones(3, dtype=torch.bool)}, r"mask of modality 'a' .* shape \(12,\)"),
    ],
)
def test_fuse_names_bad_masks(masks, message, training):
    """``fuse`` (called directly, as the explainers do) ignored a mask of an unknown modality
    without a word, took 0/1 or float masks in training (values silently off in evaluation:
    a RuntimeError from torch.where) and failed on a wrong shape with an unrelated error."""
    model = make_model().train(training)
    with torch.no_grad():
        embeddings = model.encode(make_inputs())
    with pytest.raises(ValueError, match=message):
        model.fuse(embeddings, masks)


def test_fuse_takes_a_python_bool_for_the_whole_batch():
    model = make_model().eval()
    with torch.no_grad():
        embeddings = model.encode(make_inputs())
        expected = model.fuse(embeddings, {"a": torch.zeros(12, dtype=torch.bool)}).prediction
        torch.testing.assert_close(model.fuse(embeddings, {"a": False}).prediction, expected)


def test_left_out_modality_needs_a_mask():
    inputs = make_inputs()
    del inputs["b"]
    with pytest.raises(ValueError, match=r"missing modalities \['b'\].*masks="):
        make_model()(inputs)
    with pytest.raises(ValueError, match="marked present for some samples"):
        make_model()(inputs, masks={"b": torch.arange(12) > 5})


def test_absent_samples_have_zero_embeddings_like_a_left_out_modality():
    model, inputs = make_model(), make_inputs()
    present = torch.arange(12) % 3 != 0
    out = model(inputs, masks={"b": present})
    assert not out.embeddings["b"][~present].any()
    assert out.embeddings["b"][present].abs().min() > 0
    left_out = model({m: x for m, x in inputs.items() if m != "c"}, masks={"c": False})
    assert not left_out.embeddings["c"].any()
