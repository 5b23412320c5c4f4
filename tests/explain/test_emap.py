"""EMAP: the additive projection reproduces additive models, removes pure products, and gives
the same answer on encoder outputs as on raw inputs."""

import json

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel
from interfuse.baselines import EarlyFusion
from interfuse.data.batching import TensorData
from interfuse.explain.emap import emap, emap_cost, emap_projection, subsample
from interfuse.metrics import compute_metrics
from interfuse.results import PosthocResult


def reps(n=12, seed=0, dims=(2, 3, 1)):
    gen = torch.Generator().manual_seed(seed)
    return {f"m{i}": torch.randn(n, d, generator=gen) for i, d in enumerate(dims)}


def test_emap_of_an_additive_model_equals_the_model():
    torch.manual_seed(0)
    g = {
        m: nn.Sequential(nn.Linear(x.shape[1], 4), nn.Tanh(), nn.Linear(4, 2))
        for m, x in reps().items()
    }

    def f(batch):
        return sum(g[m](x) for m, x in batch.items()) + torch.tensor([0.3, -1.0])

    x = reps()
    with torch.no_grad():
        torch.testing.assert_close(
            emap_projection(f, x, batch_size=20).float(), f(x), atol=1e-5, rtol=1e-5
        )


def test_emap_removes_a_pure_product_of_two_modalities():
    x = reps(n=30, dims=(1, 1))
    a, b = x["m0"][:, 0].double(), x["m1"][:, 0].double()

    def f(batch):
        return (batch["m0"][:, 0] * batch["m1"][:, 0]).double()

    projected = emap_projection(f, x)[:, 0]
    expected = a * b.mean() + a.mean() * b - a.mean() * b.mean()  # the additive part of a·b
    torch.testing.assert_close(projected, expected)
    # centred factors: the product has no additive part at all
    centred = {"m0": x["m0"] - x["m0"].mean(0), "m1": x["m1"] - x["m1"].mean(0)}
    torch.testing.assert_close(
        emap_projection(f, centred)[:, 0], torch.zeros(30, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_emap_keeps_the_additive_part_of_a_mixed_model():
    x = reps(n=25, dims=(1, 1, 1))

    def f(batch):
        u, v, w = (batch[m][:, 0].double() for m in ("m0", "m1", "m2"))
        return 2 * u - w + (u - x["m0"].double().mean()) * (v - x["m1"].double().mean())

    projected = emap_projection(f, x)[:, 0]
    u, w = x["m0"][:, 0].double(), x["m2"][:, 0].double()
    # the centred product vanishes; what remains is exactly 2u − w up to the joint-mean term
    # E_j[(u_j − ū)(v_j − v̄)] that the m2-slice keeps (the estimator's documented bias)
    cov = ((u - u.mean()) * (x["m1"][:, 0].double() - x["m1"][:, 0].double().mean())).mean()
    torch.testing.assert_close(projected, 2 * u - w + cov / 3)


def test_cost_and_subsample():
    assert emap_cost(256, 4) == 4 * 256**2
    index = subsample(100, 10, seed=3)
    assert len(index) == 10 and len(set(index.tolist())) == 10
    assert torch.equal(index, subsample(100, 10, seed=3))
    assert torch.equal(subsample(5, 10), torch.arange(5))


def _tanh_model(dims: dict[str, int]) -> MultimodalModel:
    """A pairs model with a Linear + Tanh encoder (output 4) per modality, seeded."""
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(d, 4), nn.Tanh()) for m, d in dims.items()}
    return MultimodalModel(
        encoders, "pairs", rank=2, num_outputs=2, encoder_dims=dict.fromkeys(dims, 4)
    )


def test_emap_on_encoder_outputs_equals_emap_on_inputs():
    dims = {"a": 3, "b": 2}
    model = _tanh_model(dims)
    gen = torch.Generator().manual_seed(1)
    data = TensorData(
        {m: torch.randn(20, d, generator=gen) for m, d in dims.items()},
        torch.randint(0, 2, (20,), generator=gen),
    )
    model.train()
    with torch.no_grad():
        model(data.inputs)
    model.eval()
    result = emap(model, data, "classification", n_samples=20)
    with torch.no_grad():
        on_inputs = emap_projection(lambda b: model(b).prediction, data.inputs)
        prediction = model(data.inputs).prediction
    assert result.n_samples == 20 and result.evaluations == 2 * 20**2
    expected = (on_inputs.argmax(1) == data.targets).double().mean().item()
    assert result.emap["accuracy"] == pytest.approx(expected)
    model_accuracy = (prediction.argmax(1) == data.targets).double().mean().item()
    assert result.model["accuracy"] == pytest.approx(model_accuracy)
    assert result.accuracy_gap == pytest.approx(model_accuracy - expected)


def test_emap_of_a_model_without_encoders():
    torch.manual_seed(0)
    model = EarlyFusion({"a": (2,), "b": (3,)}, num_outputs=2, hidden=(4,)).eval()
    gen = torch.Generator().manual_seed(0)
    data = TensorData(
        {"a": torch.randn(15, 2, generator=gen), "b": torch.randn(15, 3, generator=gen)},
        torch.randint(0, 2, (15,), generator=gen),
    )
    result = emap(model, data, "classification", n_samples=10, seed=1)
    assert result.n_samples == 10 and result.evaluations == emap_cost(10, 2)
    # brute force on the same subsample: f̂(i) = mean_j f(a_i, b_j) + mean_j f(a_j, b_i) − mean f
    index = subsample(15, 10, 1)
    a, b, y = data.inputs["a"][index], data.inputs["b"][index], data.targets[index]
    with torch.no_grad():
        grid = torch.stack(
            [
                torch.stack(
                    [model({"a": a[i : i + 1], "b": b[j : j + 1]}).prediction[0] for j in range(10)]
                )
                for i in range(10)
            ]
        )  # grid[i, j] = f(a_i, b_j)
        projection = grid.mean(dim=1) + grid.mean(dim=0) - grid.mean(dim=(0, 1))
        outputs = model({"a": a, "b": b}).prediction
    assert result.emap == pytest.approx(compute_metrics("classification", projection, y))
    assert result.model == pytest.approx(compute_metrics("classification", outputs, y))


def test_recorded_subsample_is_the_one_projected_when_samples_lack_a_modality():
    """EMAP uses only complete samples; the explainer's recorded ``subsample`` lists exactly those
    rows of the data (it used to subsample all rows, listing samples EMAP had left out)."""
    from interfuse.explain.base import ExplainContext
    from interfuse.explain.emap import EmapExplainer

    dims = {"a": 3, "b": 2}
    model = _tanh_model(dims)
    gen = torch.Generator().manual_seed(1)
    has_b = torch.arange(20) % 2 == 0
    data = TensorData(
        {
            "a": torch.randn(20, 3, generator=gen),
            "b": torch.randn(20, 2, generator=gen) * has_b[:, None],
        },
        torch.randint(0, 2, (20,), generator=gen),
        {"b": has_b},
    )
    model.train()
    with torch.no_grad():
        model(data.inputs, masks=data.masks)
    model.eval()
    details = (
        EmapExplainer()
        .explain(ExplainContext(model, data, "classification", emap_samples=5, seed=1))
        .details
    )
    recorded = details["subsample"]
    assert len(recorded) == details["n_samples"] == 5
    assert all(bool(has_b[i]) for i in recorded), recorded
    # the recorded rows reproduce the model metrics EMAP reported
    complete = data[torch.tensor(recorded)]
    with torch.no_grad():
        outputs = model(complete[0]).prediction
    assert details["model"] == pytest.approx(
        compute_metrics("classification", outputs, complete[1]), nan_ok=True
    )


def test_explain_skips_emap_when_no_sample_has_every_modality():
    """A test split in which one modality is never present (training had it) has no complete
    sample: EMAP raised 'EMAP needs samples that have every modality; none has' and the whole
    explanation (ablation, Shapley, … and the CLI's explain) failed with it. EMAP is skipped,
    saying why; the other explainers run."""
    from interfuse.explain import explain_model
    from interfuse.report import render_explanation

    dims = {"a": 3, "b": 2}
    model = _tanh_model(dims)
    gen = torch.Generator().manual_seed(1)
    inputs = {m: torch.randn(20, d, generator=gen) for m, d in dims.items()}
    targets = torch.randint(0, 2, (20,), generator=gen)
    model.train()
    with torch.no_grad():
        model(inputs)
    model.eval()
    inputs["b"] = torch.zeros(20, 2)
    test = TensorData(inputs, targets, {"b": torch.zeros(20, dtype=torch.bool)})
    logged = []
    result = explain_model(model, test, "classification", emap_samples=8, log=logged.append)
    # the cost announced beforehand says EMAP is skipped and why (it announced its M·N²)
    assert logged[0].endswith(
        "EMAP skipped: no sample has modality 'b' in the explained split (it recombines "
        "samples that have every modality)."
    ), logged
    details = result.explanations["emap"].details
    assert "no sample" in details["skipped"] and "'b'" in details["skipped"], details
    assert result.explanations["shapley"].scores["b"] == pytest.approx(0.0)
    text = render_explanation(result)
    assert "EMAP skipped" in text
    # b's post-hoc values are 0 by construction (removing it changes nothing): said, not ranked
    assert result.absent == ["b"]
    assert "no sample of the explained split has 'b'" in text
    again = PosthocResult.from_dict(json.loads(result.to_json()))
    assert again.absent == ["b"]
    complete = TensorData(inputs, targets)
    assert explain_model(model, complete, "classification", emap_samples=0).absent == []
