"""Fusion baselines: shapes, the TFN/LMF formulas against brute force, gradients, construction
from a model description, and one epoch of training through ``fit``."""

import json
import math

import pytest
import torch
from torch import nn

from interfuse.baselines import EarlyFusion, LateFusion, LowRankFusion, TensorFusion, tensor_fusion
from interfuse.data.synthetic import make_motif_data
from interfuse.data.task import synthetic_task
from interfuse.model import FusionOutput
from interfuse.models import MODELS, ModelSpec, build_model, model_spec
from interfuse.train import TrainConfig, fit

DIMS = {"video": 5, "audio": 3, "text": 7}


def encoders(out=4):
    return {m: nn.Linear(d, out) for m, d in DIMS.items()}


def inputs(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=gen) for m, d in DIMS.items()}


def test_tensor_fusion_matches_explicit_outer_product():
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(4, k, generator=gen) for k in (2, 3, 1))
    one = torch.ones(4, 1)
    a1, b1, c1 = (torch.cat([x, one], 1) for x in (a, b, c))
    expected = torch.einsum("bi,bj,bk->bijk", a1, b1, c1).reshape(4, -1)
    z = tensor_fusion([a, b, c])
    assert z.shape == (4, 3 * 4 * 2)
    torch.testing.assert_close(z, expected)
    # the constant slots keep every lower-order term: unimodal a at (i, last, last)
    torch.testing.assert_close(z.reshape(4, 3, 4, 2)[:, :2, 3, 1], a)
    assert torch.all(z[:, -1] == 1)


def test_tfn_output_shape_and_size():
    model = TensorFusion(encoders(), num_outputs=2, factor_dim=3, hidden=(8,))
    assert model.fused_dim == 4**3
    out = model(inputs())
    assert isinstance(out, FusionOutput)
    assert out.prediction.shape == (6, 2)
    assert out.blocks["tensor"].shape == (6, 64)
    assert not hasattr(model, "relevance")


def test_tfn_refuses_an_intractable_size():
    many = {f"m{i}": nn.Linear(2, 2) for i in range(8)}
    with pytest.raises(ValueError, match="LMF"):
        TensorFusion(many, factor_dim=8)


def test_lmf_equals_tfn_with_a_low_rank_weight_tensor():
    """f = W · vec(⊗[h_m; 1]) with W = Σ_i λ_i ⊗_m W_m^(i) (Liu et al. 2018, eq. 5–6)."""
    torch.manual_seed(0)
    enc = {"a": nn.Identity(), "b": nn.Identity()}
    model = LowRankFusion(enc, num_outputs=1, rank=3, fused_dim=2, encoder_dims={"a": 2, "b": 3})
    with torch.no_grad():
        model.fusion_bias.normal_()
        model.rank_weights.normal_()
    x = {"a": torch.randn(5, 2), "b": torch.randn(5, 3)}
    fused = model(x).blocks["lowrank"]
    wa, wb = model.factors["a"], model.factors["b"]  # (r, 3, f), (r, 4, f)
    weight = torch.einsum("r,raf,rbf->abf", model.rank_weights, wa, wb)  # full TFN tensor
    z = tensor_fusion([x["a"], x["b"]])  # (5, 3·4)
    expected = z @ weight.reshape(-1, 2) + model.fusion_bias
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)


def test_lmf_every_parameter_gets_a_gradient():
    model = LowRankFusion(encoders(), num_outputs=2, rank=4, fused_dim=6)
    names = {n for n, _ in model.named_parameters()}
    assert {
        "factors.video",
        "factors.audio",
        "factors.text",
        "rank_weights",
        "fusion_bias",
    } <= names
    model(inputs()).prediction.pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["get", "copy", "setdefault", "popitem", "fromkeys", "_keys"])
def test_lmf_refuses_modality_names_its_parameter_dict_cannot_hold(name):
    """These pass the modality-name check (made for nn.ModuleDict) but used to fail inside
    nn.ParameterDict with "KeyError: attribute 'get' already exists" or a TypeError."""
    with pytest.raises(ValueError, match=f"LMF cannot use the modality names \\['{name}'\\]"):
        LowRankFusion({name: nn.Linear(3, 4), "b": nn.Linear(3, 4)})


def test_late_fusion_linear_and_mlp_heads():
    linear = LateFusion(encoders(), num_outputs=3)
    assert isinstance(linear.head, nn.Linear) and linear.head.in_features == 12
    out = linear(inputs())
    assert out.prediction.shape == (6, 3)
    torch.testing.assert_close(out.blocks["concat"][:, :4], out.embeddings["video"])
    mlp = LateFusion(encoders(), num_outputs=1, hidden=(8, 5))
    assert mlp(inputs()).prediction.shape == (6, 1)


def test_encode_applies_each_modalitys_own_encoder():
    for cls in (LateFusion, TensorFusion, LowRankFusion):
        enc = encoders()
        model = cls(enc).eval()
        x = inputs()
        embeddings = model.encode(x)
        assert list(embeddings) == list(DIMS)
        for m, layer in enc.items():
            torch.testing.assert_close(embeddings[m], layer(x[m]))
        assert torch.equal(model(x).embeddings["video"], embeddings["video"])


def test_early_fusion_flattens_and_concatenates():
    model = EarlyFusion({"seq": (4, 10), "vec": (3,)}, num_outputs=2, hidden=(16,))
    assert model.input_dim == 43
    x = {"seq": torch.randn(5, 4, 10), "vec": torch.randn(5, 3)}
    out = model(x)
    assert out.prediction.shape == (5, 2)
    torch.testing.assert_close(out.blocks["inputs"][:, 40:], x["vec"])
    torch.testing.assert_close(out.blocks["inputs"][:, :40], x["seq"].reshape(5, 40))


def test_early_fusion_errors_are_clear():
    model = EarlyFusion({"seq": (4, 10), "vec": (3,)})
    with pytest.raises(ValueError, match="per-sample shape"):
        model({"seq": torch.randn(5, 4, 12), "vec": torch.randn(5, 3)})
    with pytest.raises(ValueError, match="missing modalities"):
        model({"seq": torch.randn(5, 4, 10)})
    with pytest.raises(ValueError, match="fixed per-sample shape"):
        EarlyFusion({"seq": (4, None)})


def test_baselines_reject_missing_modalities():
    model = LateFusion(encoders())
    x = inputs()
    model(x, masks={"video": True})  # all present: fine
    with pytest.raises(ValueError, match="no missing-modality path"):
        model(x, masks={"video": torch.tensor([True, False, True, True, True, True])})


@pytest.mark.parametrize("early", [False, True])
def test_baselines_refuse_masks_they_cannot_read(early):
    """A mask that is not a bool or tensor used to escape as ``AttributeError: 'list' object has
    no attribute 'all'``, and a mask of a misspelt modality was silently ignored (the prediction
    used every modality although the caller marked one as missing)."""
    model = EarlyFusion({m: (d,) for m, d in DIMS.items()}) if early else LateFusion(encoders())
    x = inputs()
    with pytest.raises(ValueError, match="mask of modality 'video' must be a bool"):
        model(x, masks={"video": [True, False, True, True, True, True]})
    with pytest.raises(ValueError, match="mask of modality 'video' must be a bool"):
        model(x, masks={"video": 0})
    with pytest.raises(ValueError, match=r"masks for unknown modalities \['vidoe'\]"):
        model(x, masks={"vidoe": False})


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_rebuilds_from_its_spec_and_states_its_capabilities(name):
    specs = {m: {"type": "mlp", "input_dim": d, "output_dim": 4} for m, d in DIMS.items()}
    config = TrainConfig(model=name, rank=3)
    spec = model_spec(name, specs, config, 2, input_shapes={m: [d] for m, d in DIMS.items()})
    assert spec.model == name
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    a, b = build_model(spec, seed=0), build_model(spec, seed=1)
    assert any(
        not torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values())
    )
    again = build_model(spec, seed=0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), again.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.eval()
    x = inputs()
    assert a(x).prediction.shape == (6, 2)
    entry = MODELS.get(name)
    if entry.relevance:
        assert set(a.relevance().shares) >= set(DIMS)
    absent = torch.tensor([True, False, True, True, True, True])
    if entry.masks:
        a(x, masks={"video": absent})
    else:
        with pytest.raises(ValueError, match="missing-modality path"):
            a(x, masks={"video": absent})
    if name == "mnl":
        assert spec.options["interactions"] == []


@pytest.mark.parametrize("name", MODELS.names())
def test_a_description_missing_an_option_is_a_clear_error(name):
    """An edited or foreign run folder whose spec lacks an option used to escape as a bare
    ``KeyError`` (the command line's "internal error ... a bug")."""
    specs = {m: {"type": "mlp", "input_dim": d, "output_dim": 4} for m, d in DIMS.items()}
    config = TrainConfig(model=name, rank=3)
    spec = model_spec(name, specs, config, 2, input_shapes={m: [d] for m, d in DIMS.items()})
    for option in spec.options:
        options = {k: v for k, v in spec.options.items() if k != option}
        broken = ModelSpec.from_dict({**spec.to_dict(), "options": options})
        with pytest.raises(ValueError, match=f"model '{name}'.*'{option}'"):
            build_model(broken)
    if name == "early":
        shapes = dict(spec.options["input_shapes"])
        shapes.pop("video")
        broken = ModelSpec.from_dict({**spec.to_dict(), "options": {"input_shapes": shapes}})
        with pytest.raises(ValueError, match="'input_shapes' lacks modalities \\['video'\\]"):
            build_model(broken)


def test_a_spec_with_tuples_is_the_spec_its_checkpoint_stores():
    """Encoder options given as tuples (``hidden=(16,)``, as MLP's default) came back from the
    checkpoint's JSON as lists, so ``fit(..., resume=True)`` with the very same encoders refused
    with "encoders differ"."""
    specs = {m: {"type": "mlp", "input_dim": d, "hidden": (16,)} for m, d in DIMS.items()}
    spec = model_spec("intense", specs, TrainConfig(rank=3), 2)
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    direct = ModelSpec("late", ("a",), {"a": {"type": "mlp", "input_dim": 2, "hidden": (4,)}}, 1)
    assert json.loads(json.dumps(direct.to_dict())) == direct.to_dict()
    for outputs in (2.7, True, "2"):  # 2.7 was read as 2 outputs, silently
        with pytest.raises(ValueError, match="malformed model description"):
            ModelSpec.from_dict({**spec.to_dict(), "num_outputs": outputs})


def test_fit_resumes_with_encoder_options_given_as_tuples(tmp_path):
    from interfuse.data import from_arrays

    gen = torch.Generator().manual_seed(0)
    x = {m: torch.randn(120, d, generator=gen).numpy() for m, d in (("a", 3), ("b", 2))}
    task = from_arrays(x, (x["a"][:, 0] > 0).astype("int64"), seed=0, name="tuples")
    encoders = {m: {"type": "mlp", "input_dim": v.shape[1], "hidden": (8,)} for m, v in x.items()}
    config = TrainConfig(restarts=0, epochs=1, batch_size=32, rank=2, seed=0)
    fit(task, config, tmp_path, encoders=encoders, progress=False)
    more = TrainConfig(restarts=0, epochs=2, batch_size=32, rank=2, seed=0)
    result = fit(task, more, tmp_path, encoders=encoders, resume=True, progress=False)
    assert result.epochs_run == 2


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        TrainConfig(model="gru")
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        build_model(ModelSpec("gru", ("a",), {"a": {"type": "mlp", "input_dim": 2}}, 1))
    with pytest.raises(ValueError, match=r"unknown model \['intense'\]"):  # not a TypeError
        TrainConfig(model=["intense"])


@pytest.fixture(scope="module")
def tiny_task():
    return synthetic_task(make_motif_data([0.9, 0.0], n=200, length=30, seed=0), seed=0)


@pytest.mark.parametrize("name", ["mnl", "early", "late", "tfn", "lmf"])
def test_each_baseline_trains_one_epoch_through_fit(tiny_task, tmp_path, name):
    config = TrainConfig(model=name, epochs=1, restarts=0, batch_size=32, rank=4, seed=0)
    result = fit(tiny_task, config, tmp_path, progress=False)
    assert result.epochs_run == 1
    assert result.model["model"] == name
    assert set(result.metrics["test"]) == {"loss", "accuracy", "macro_f1", "auroc", "auprc"}
    assert math.isfinite(result.metrics["test"]["loss"])
    if name == "mnl":
        assert set(result.relevance.shares) == {"m0", "m1"}
    else:
        assert result.relevance is None
        on_disk = json.loads((tmp_path / "results.json").read_text())
        assert on_disk["relevance"] is None
    assert (tmp_path / "best.safetensors").exists()


def test_fit_resumes_a_baseline(tiny_task, tmp_path):
    config = TrainConfig(model="late", epochs=1, restarts=0, batch_size=32, seed=0)
    fit(tiny_task, config, tmp_path, progress=False)
    more = TrainConfig(model="late", epochs=2, restarts=0, batch_size=32, seed=0)
    result = fit(tiny_task, more, tmp_path, resume=True, progress=False)
    assert result.epochs_run == 2


def test_tfn_and_lmf_learn_a_pure_interaction_that_late_fusion_cannot():
    """Label = token(a) XOR token(b): only multiplicative fusion can represent it."""
    gen = torch.Generator().manual_seed(0)
    n = 1000
    a, b = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
    x = {
        "a": nn.functional.one_hot(a, 2).float() + 0.3 * torch.randn(n, 2, generator=gen),
        "b": nn.functional.one_hot(b, 2).float() + 0.3 * torch.randn(n, 2, generator=gen),
        "c": torch.randn(n, 2, generator=gen),
    }
    y = a ^ b
    accuracy = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and robust to a busy CPU
    try:
        for cls in (TensorFusion, LowRankFusion, LateFusion):
            accuracy[cls] = _train_toy(cls, x, y, gen)
    finally:
        torch.set_num_threads(threads)
    assert accuracy[TensorFusion] > 0.9 and accuracy[LowRankFusion] > 0.9
    assert accuracy[LateFusion] < 0.6


def _train_toy(cls, x, y, gen, steps=250):
    """Train ``cls`` on the toy task with AdamW; return its accuracy on all samples."""
    torch.manual_seed(0)
    enc = {m: nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8)) for m in x}
    model = cls(enc, num_outputs=2, encoder_dims=dict.fromkeys(x, 8))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        index = torch.randint(0, len(y), (128,), generator=gen)
        prediction = model({m: v[index] for m, v in x.items()}).prediction
        loss = nn.functional.cross_entropy(prediction, y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return (model(x).prediction.argmax(1) == y).float().mean().item()
