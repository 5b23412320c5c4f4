"""MultimodalModel end to end: gradients, invariances, switches, validation, scale."""

import itertools

import pytest
import torch
from torch import nn

import interfuse.model as model_module
from interfuse import MultimodalModel


def linear_encoders(dims, out=4, dtype=torch.float32):
    return {m: nn.Linear(d, out).to(dtype) for m, d in dims.items()}


def make_inputs(dims, n=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=gen, dtype=dtype) for m, d in dims.items()}


def test_forward_shapes_and_blocks():
    dims = {"video": 5, "audio": 3, "text": 7}
    model = MultimodalModel(linear_encoders(dims), interactions="all", rank=3, num_outputs=2)
    out = model(make_inputs(dims))
    assert out.prediction.shape == (16, 2)
    assert model.term_names == [
        "video",
        "audio",
        "text",
        "video*audio",
        "video*text",
        "audio*text",
        "video*audio*text",
    ]
    assert out.blocks["video*audio*text"].shape == (16, 27)
    assert out.blocks["text"].shape == (16, 4)
    assert set(out.embeddings) == set(dims)
    # vBN: every block leaves with zero mean and unit mean squared norm in training mode.
    for name, z in out.blocks.items():
        assert z.mean(0).abs().max().item() < 1e-5, name
        assert z.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=1e-3), name
    rel = model.relevance()
    assert list(rel.shares) == model.term_names
    assert sum(rel.shares.values()) == pytest.approx(1.0)


def test_gradcheck_through_whole_model():
    dims = {"a": 3, "b": 2, "c": 2}
    model = MultimodalModel(
        linear_encoders(dims, out=3, dtype=torch.float64), interactions="all", rank=2, num_outputs=2
    ).double()
    inputs = make_inputs(dims, n=6, dtype=torch.float64)
    tensors = tuple(inputs[m].requires_grad_() for m in dims)

    def prediction(*xs):
        return model(dict(zip(dims, xs))).prediction

    assert torch.autograd.gradcheck(prediction, tensors, eps=1e-6, atol=1e-6)
    # And with respect to every parameter, through IterBN's batch moments and vBN.
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in model.named_parameters())

    def loss(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (inputs,))
        return out.prediction.pow(2).mean()

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-6)


def _permute_interaction_weight(weight, term_from, term_to, rank):
    """Re-index a head block trained on term_from's axis order for term_to's axis order."""
    k = len(term_from)
    if k == 1:
        return weight
    w = weight.reshape(weight.shape[0], *([rank] * k))
    axes = [0] + [1 + term_from.index(m) for m in term_to]
    return w.permute(axes).reshape(weight.shape[0], -1)


@pytest.mark.parametrize("iterbn", [True, False])
def test_relevance_invariant_to_modality_order_and_names(iterbn):
    dims = {"a": 3, "b": 4, "c": 2}
    rank = 2
    first = MultimodalModel(linear_encoders(dims), interactions="all", rank=rank, iterbn=iterbn)
    order = ["c", "a", "b"]
    rename = {"a": "x", "b": "y", "c": "z"}
    second = MultimodalModel(
        {rename[m]: linear_encoders({m: dims[m]})[m] for m in order},
        interactions="all",
        rank=rank,
        iterbn=iterbn,
    )
    # Same initial weights, mapped by name and with interaction axes permuted.
    with torch.no_grad():
        for m in dims:
            second.encoders[rename[m]].load_state_dict(first.encoders[m].state_dict())
            second.factors.projections[rename[m]].load_state_dict(
                first.factors.projections[m].state_dict()
            )
        for term in first.terms:
            new_term = tuple(rename[m] for m in sorted(term, key=order.index))
            weight = first.head.blocks["*".join(term)].weight
            old_in_new_names = tuple(rename[m] for m in term)
            second.head.blocks["*".join(new_term)].weight.copy_(
                _permute_interaction_weight(weight, old_in_new_names, new_term, rank)
            )
        second.head.bias.copy_(first.head.bias)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (first, second)]
    target_gen = torch.Generator().manual_seed(1)
    for step in range(15):
        inputs = make_inputs(dims, n=32, seed=step)
        target = torch.randn(32, 1, generator=target_gen)
        for model, opt, x in zip(
            (first, second), opts, (inputs, {rename[m]: inputs[m] for m in order})
        ):
            opt.zero_grad()
            loss = (model(x).prediction - target).pow(2).mean() + 0.05 * model.regularizer()
            loss.backward()
            opt.step()
    rel_first, rel_second = first.relevance(), second.relevance()
    for term in first.terms:
        new_name = "*".join(rename[m] for m in sorted(term, key=order.index))
        assert rel_second.shares[new_name] == pytest.approx(
            rel_first.shares["*".join(term)], abs=1e-5
        )


def test_switches_change_the_blocks():
    dims = {"a": 3, "b": 3}
    plain = MultimodalModel(linear_encoders(dims), rank=2, iterbn=False, vbn=False)
    assert plain.wick is None and len(plain.norms) == 0
    out = plain(make_inputs(dims))
    # Without IterBN the factors are uncentred, so the raw product block has a non-zero mean.
    assert out.blocks["a*b"].mean(0).abs().max().item() > 1e-3
    g = plain.factors(out.embeddings)
    torch.testing.assert_close(
        out.blocks["a*b"], torch.einsum("ni,nj->nij", g["a"], g["b"]).flatten(1)
    )


def test_eval_mode_accepts_a_single_sample():
    dims = {"a": 3, "b": 2}
    model = MultimodalModel(linear_encoders(dims), interactions="pairs", rank=2)
    model(make_inputs(dims, n=8))
    model.eval()
    assert model(make_inputs(dims, n=1)).prediction.shape == (1, 1)


def test_six_modalities_all_interactions_up_to_order_three():
    dims = {f"m{i}": 4 + i for i in range(6)}
    model = MultimodalModel(linear_encoders(dims), interactions=3, rank=4, num_outputs=3)
    assert len(model.terms) == 6 + 15 + 20
    out = model(make_inputs(dims, n=32))
    loss = out.prediction.square().mean() + model.regularizer()
    loss.backward()
    assert out.blocks["m0*m1*m2"].shape == (32, 64)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.fixture
def small_model():
    dims = {"video": 3, "text": 2}
    return MultimodalModel(linear_encoders(dims), rank=2), dims


def test_missing_and_unknown_modalities_are_named(small_model):
    model, dims = small_model
    inputs = make_inputs(dims)
    with pytest.raises(ValueError, match=r"missing modalities \['text'\]"):
        model({"video": inputs["video"]})
    with pytest.raises(ValueError, match=r"unknown modalities \['smell'\]"):
        model({**inputs, "smell": inputs["text"]})


def test_batch_size_mismatch_is_reported(small_model):
    model, dims = small_model
    inputs = make_inputs(dims)
    inputs["text"] = inputs["text"][:5]
    with pytest.raises(ValueError, match="different batch sizes.*'text': 5"):
        model(inputs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_reported(small_model, bad):
    model, dims = small_model
    inputs = make_inputs(dims)
    inputs["video"][3, 1] = bad
    with pytest.raises(ValueError, match="modality 'video'.*non-finite"):
        model(inputs)


def test_check_data_scans_present_samples_and_leaves_the_dtype_to_batches(small_model):
    model, dims = small_model
    inputs = make_inputs(dims, n=12)
    inputs["video"][5, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 'video'.*non-finite"):
        model.check_data(inputs)
    absent = torch.ones(12, dtype=torch.bool)
    absent[5] = False
    model.check_data(inputs, {"video": absent})  # the NaN sits in a missing sample: fine
    as_float64 = {m: x.double() for m, x in make_inputs(dims, n=12).items()}
    model.check_data(as_float64)  # no dtype check here (a precision setting converts later) …
    with pytest.raises(ValueError, match="input dtype torch.float64 differs"):
        model(as_float64)  # … the per-batch check has it


def test_finite_inputs_skips_only_the_non_finite_scan_and_only_inside(small_model):
    model, dims = small_model
    inputs = make_inputs(dims)
    inputs["text"][2, 1] = float("nan")
    with model.finite_inputs():
        prediction = model(inputs).prediction  # not scanned: NaN goes through
        assert torch.isnan(prediction).any()
        with pytest.raises(ValueError, match="input dtype torch.float64 differs"):
            model({m: x.double() for m, x in inputs.items()})  # the other checks still run
    with pytest.raises(ValueError, match="modality 'text'.*non-finite"):
        model(inputs)  # scanned again after the context


def test_sync_stats_moves_training_to_the_module_path_only_in_a_process_group(
    small_model, monkeypatch
):
    model, _ = small_model
    model.train()
    monkeypatch.setattr(model_module, "distributed", lambda: True)
    assert not model.sync_stats  # the default: per-process statistics, fast path
    assert model.uses_fast_path()
    model.sync_stats = True
    assert not model.uses_fast_path()  # all-reduced moments: the module path
    model.eval()
    assert model.uses_fast_path()  # evaluation uses running statistics: nothing to sync
    monkeypatch.setattr(model_module, "distributed", lambda: False)
    model.train()
    assert model.uses_fast_path()  # one process: nothing to sync either


def test_other_bad_inputs(small_model):
    model, dims = small_model
    with pytest.raises(TypeError, match="dict"):
        model([torch.randn(4, 3), torch.randn(4, 2)])
    with pytest.raises(TypeError, match="modality 'text'.*torch.Tensor"):
        model({"video": torch.randn(4, 3), "text": [[1.0, 2.0]] * 4})
    with pytest.raises(ValueError, match="batch of 1"):
        model(make_inputs(dims, n=1))
    with pytest.raises(ValueError, match="empty batch"):
        model(make_inputs(dims, n=0))


def test_bad_encoder_output_is_reported():
    model = MultimodalModel({"a": nn.Identity()}, encoder_dims={"a": 3}, rank=2)
    with pytest.raises(ValueError, match="encoder of modality 'a'"):
        model({"a": torch.randn(4, 3, 2)})


@pytest.mark.parametrize("iterbn", [True, False], ids=["fast-path", "module-path"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_an_encoder_output_of_another_width_is_named(iterbn, training):
    """An encoder whose output width is not the one the model was built for (a wrong
    ``encoder_dims``): the error names the modality and both widths (it was a shape error from
    inside a batched matrix product or a Linear, naming neither)."""
    dims = {"a": 3, "b": 4}
    model = MultimodalModel(
        {m: nn.Identity() for m in dims}, encoder_dims={"a": 3, "b": 5}, rank=2, iterbn=iterbn
    )
    model.train(training)
    with pytest.raises(
        ValueError, match=r"modality 'b' returned 4 features .* built for 5 .* encoder_dims"
    ):
        model(make_inputs(dims, n=4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 0.9}, "p must be"),
        ({"rank": 0}, "rank must be"),
        ({"momentum": 2.0}, "momentum must be"),  # ran, and evaluation predicted NaN
        ({"momentum": -0.5}, "momentum must be"),
        ({"momentum": float("nan")}, "momentum must be"),
        ({"momentum": None}, "momentum must be"),  # ran until a TypeError in training
        ({"interactions": ["a*c"]}, "unknown modality 'c'"),
        ({"interactions": ["a*b", "b*a"]}, "listed twice"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultimodalModel(linear_encoders({"a": 2, "b": 2}), **kwargs)


def test_unknown_encoder_width_is_reported():
    with pytest.raises(ValueError, match="output size of the encoder for modality 'a'"):
        MultimodalModel({"a": nn.Sequential(nn.Linear(2, 3), nn.ReLU())})


def test_all_pairs_terms_present_for_many_modalities():
    dims = {f"m{i}": 2 for i in range(4)}
    model = MultimodalModel(linear_encoders(dims), interactions="pairs", rank=2)
    expected = ["*".join(c) for c in itertools.combinations(dims, 2)]
    assert model.term_names[4:] == expected


# --------------------------------------------------------------------------- compile switch


def _compile_model(compile_flag=True):
    dims = {"a": 3, "b": 4, "c": 2}
    torch.manual_seed(0)
    return MultimodalModel(
        linear_encoders(dims, out=4),
        interactions="all",
        rank=2,
        num_outputs=2,
        compile=compile_flag,
    ), dims


def test_compile_falls_back_with_one_warning(monkeypatch):
    import copy
    import warnings

    from interfuse import model as model_module

    monkeypatch.setattr(model_module, "compiler_problem", lambda: "no C++ compiler found (test)")
    model, dims = _compile_model()
    eager = copy.deepcopy(model)
    eager.compile_fusion = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            x = make_inputs(dims, seed=seed)
            torch.testing.assert_close(model(x).prediction, eager(x).prediction)
    relevant = [w for w in caught if "compile=True" in str(w.message)]
    assert len(relevant) == 1 and "(no C++ compiler found (test))" in str(relevant[0].message)
    assert relevant[0].filename == __file__  # names the caller, not a frame inside the library
    for (name, b), (_, c) in zip(model.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(b, c, msg=name)


def test_compile_flag_survives_copy_and_state_dict():
    import copy

    model, dims = _compile_model()
    assert model.compile_fusion
    clone = copy.deepcopy(model)
    assert clone.compile_fusion and clone._compiled_fuse is None
    plain, _ = _compile_model(False)
    plain.load_state_dict(model.state_dict())  # no extra keys


@pytest.mark.compile
def test_compiled_step_matches_eager():
    """Slow (compiles for tens of seconds): run with ``pytest -m compile``."""
    import copy

    from interfuse.model import compiler_problem

    if compiler_problem() is not None:
        pytest.skip(compiler_problem())
    model, dims = _compile_model()
    eager = copy.deepcopy(model)
    eager.compile_fusion = False
    for seed in range(2):
        x = make_inputs(dims, seed=seed)
        a, b = model(x), eager(x)
        torch.testing.assert_close(a.prediction, b.prediction)
        a.prediction.pow(2).sum().backward()
        b.prediction.pow(2).sum().backward()
    assert model._compiled_fuse is not None and not model._compile_failed
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), (_, c) in zip(model.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(b, c, msg=name)


# --------------------------------------------------------------------------- boundaries


def test_rank_one_and_a_training_batch_of_two_are_valid():
    dims = {"a": 3, "b": 2}
    model = MultimodalModel(linear_encoders(dims), interactions="pairs", rank=1).train()
    out = model(make_inputs(dims, n=2))
    assert out.prediction.shape == (2, 1) and out.blocks["a*b"].shape == (2, 1)
    with pytest.raises(ValueError, match="a batch of 1 sample cannot be used in training mode"):
        model(make_inputs(dims, n=1))


def test_compiler_problem_names_a_missing_cxx_compiler(monkeypatch):
    from interfuse import model as model_module

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(model_module.shutil, "which", lambda name: None)
    assert model_module.compiler_problem() == (
        "no C++ compiler found (looked for $CXX, c++, g++, clang++)"
    )
    monkeypatch.setattr(model_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert model_module.compiler_problem() is None


def test_defaults_are_the_documented_rank_8_and_p_2():
    """README and docs/model.md: rank r = 8 (a pair block has 8 × 8 coordinates), p = 2."""
    dims = {"a": 3, "b": 2}
    model = MultimodalModel(linear_encoders(dims))
    assert model(make_inputs(dims)).blocks["a*b"].shape == (16, 64)
    relevance = model.relevance()
    assert relevance.p == 2.0
    assert sum(b**2 for b in relevance.beta.values()) == pytest.approx(1.0, abs=1e-12)


def test_a_failing_compiled_step_falls_back_naming_the_first_line_of_the_error(monkeypatch):
    import copy
    import warnings

    from interfuse import model as model_module

    def failing_compile(function):
        def compiled(*args, **kwargs):
            raise RuntimeError("x" * 400 + "\nsecond line")

        return compiled

    monkeypatch.setattr(model_module, "compiler_problem", lambda: None)
    monkeypatch.setattr(torch, "compile", failing_compile)
    model, dims = _compile_model()
    eager = copy.deepcopy(model)
    eager.compile_fusion = False
    x = make_inputs(dims)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(model(x).prediction, eager(x).prediction)
    (warning,) = [w for w in caught if "compile=True" in str(w.message)]
    # the reason quoted: the error's type and the first 300 characters of its first line
    assert f"(RuntimeError: {'x' * 300}); results are the same" in str(warning.message)


def test_one_dimensional_inputs_reach_their_encoder_and_scalars_are_refused():
    model = MultimodalModel(
        {"tokens": nn.Embedding(10, 4), "b": nn.Linear(3, 4)}, encoder_dims={"tokens": 4}, rank=2
    )
    inputs = {"tokens": torch.tensor([1, 7, 3, 3]), "b": torch.randn(4, 3)}
    assert model(inputs).prediction.shape == (4, 1)
    with pytest.raises(ValueError, match="modality 'tokens': expected a batch, got a scalar"):
        model({"tokens": torch.tensor(1), "b": torch.randn(4, 3)})


def test_finite_check_is_exact_when_the_sum_overflows():
    """The input check's fast test (a finite sum) falls back to the elementwise one: finite
    values whose sum overflows pass, a single NaN or inf is counted and named."""
    from interfuse.model import _all_finite

    big = torch.full((4, 3), 3e38)
    assert not torch.isfinite(big.sum()) and _all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(4, 3)
        x[1, 2] = bad
        assert not _all_finite(x)
    x = torch.tensor([float("inf"), -float("inf")])  # the sum is NaN
    assert not _all_finite(x)
    assert _all_finite(torch.empty(0, 3))


def test_forward_does_not_recheck_masks_in_fuse(monkeypatch):
    """forward's presence() already checks the masks; fuse must not check them again every batch
    (per-step cost); fuse called directly still checks them."""

    def fail(*args, **kwargs):
        raise AssertionError("masks re-checked in forward")

    model = MultimodalModel(linear_encoders({"a": 3, "b": 4}), interactions="all", rank=2)
    x = {"a": torch.randn(5, 3), "b": torch.randn(5, 4)}
    masks = {"a": torch.tensor([True, False, True, True, True])}
    expected = model.eval()(x, masks).prediction
    monkeypatch.setattr(MultimodalModel, "_fuse_masks", fail)
    torch.testing.assert_close(model(x, masks).prediction, expected)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown modalities"):
        model.fuse(model.encode(x, masks), {"c": True})
