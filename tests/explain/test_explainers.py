"""One contract every registered explainer passes, on our model and on a baseline; and adding an
explainer is one class that registers itself."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel
from interfuse.baselines import LateFusion
from interfuse.data.batching import TensorData
from interfuse.explain import EXPLAINERS, ExplainContext, explain_model, register_explainer
from interfuse.report import render_explanation
from interfuse.results import Explanation, PosthocResult

DIMS = {"a": 3, "b": 2, "c": 4}


def data(n=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, d, generator=gen) for m, d in DIMS.items()}
    targets = ((inputs["a"][:, 0] * inputs["b"][:, 0]) > 0).long()
    return TensorData(inputs, targets)


def models():
    torch.manual_seed(0)
    ours = MultimodalModel(
        {m: nn.Linear(d, 4) for m, d in DIMS.items()},
        interactions="pairs",
        rank=2,
        num_outputs=2,
        encoder_dims=dict.fromkeys(DIMS, 4),
    )
    late = LateFusion(
        {m: nn.Linear(d, 4) for m, d in DIMS.items()}, 2, encoder_dims=dict.fromkeys(DIMS, 4)
    )
    ours(data().inputs)  # one training-mode pass: running statistics
    return {"ours": ours.eval(), "late": late.eval()}


@pytest.fixture(scope="module")
def contexts():
    test, train = data(seed=1), data(seed=0)
    return {
        name: ExplainContext(model, test, "classification", train, emap_samples=8)
        for name, model in models().items()
    }


@pytest.mark.parametrize("name", EXPLAINERS.names())
@pytest.mark.parametrize("model", ["ours", "late"])
def test_every_explainer_keeps_the_contract(contexts, name, model):
    context = contexts[model]
    explainer = EXPLAINERS.get(name)
    explanation = explainer.explain(context)
    assert isinstance(explanation, Explanation)
    assert explanation.method == name == explainer.name
    assert explanation.label and explanation.description
    terms = {"*".join(t) for t in context.terms}
    assert set(explanation.scores) <= terms
    if explanation.scores:
        assert set(explanation.scores) == terms  # a value (or None) for every term
    for value in explanation.scores.values():
        assert value is None or (isinstance(value, float) and math.isfinite(value))
    json.dumps(explanation.to_dict(), allow_nan=False)  # strict JSON
    again = explainer.explain(context)
    assert again == explanation  # deterministic for one context


def test_builtin_relevance_only_where_the_model_has_it(contexts):
    ours = EXPLAINERS.get("builtin").explain(contexts["ours"])
    assert sum(ours.scores.values()) == pytest.approx(1.0)
    late = EXPLAINERS.get("builtin").explain(contexts["late"])
    assert not late.has_scores


def test_a_new_explainer_is_one_registered_class():
    @register_explainer
    class Constant:
        name = "constant-test"
        label = "constant"
        description = "every term gets 0.5"

        def explain(self, context: ExplainContext) -> Explanation:
            scores = {"*".join(t): 0.5 for t in context.terms}
            return Explanation(self.name, self.label, self.description, scores)

    try:
        model = models()["ours"]
        result = explain_model(model, data(seed=1), "classification", data(), emap_samples=0)
        assert result.column("constant-test")["a*b"] == 0.5
        assert "| constant |" in render_explanation(result)
        again = PosthocResult.from_dict(json.loads(result.to_json()))
        assert again.explanations["constant-test"] == result.explanations["constant-test"]
    finally:
        EXPLAINERS.remove("constant-test")


def test_a_class_that_is_not_an_explainer_is_refused():
    with pytest.raises(TypeError, match="Explainer protocol"):

        @register_explainer
        class NotOne:
            name = "broken"


def test_term_ablation_removes_exactly_one_block(contexts):
    from interfuse.explain.term_ablation import term_contributions

    context = contexts["ours"]
    model = context.model
    full, parts = term_contributions(model, context.data, context.batch_size)
    # the prediction is the sum of the term contributions plus the bias
    torch.testing.assert_close(full - sum(parts.values()), model.head.bias.expand_as(full))
    # a term whose weight block is zero changes nothing when removed
    with torch.no_grad():
        saved = model.head.blocks["a*b"].weight.clone()
        model.head.blocks["a*b"].weight.zero_()
    try:
        scores = EXPLAINERS.get("term_ablation").explain(context).scores
    finally:
        with torch.no_grad():
            model.head.blocks["a*b"].weight.copy_(saved)
    assert scores["a*b"] == 0.0 and any(v != 0.0 for t, v in scores.items() if t != "a*b")
