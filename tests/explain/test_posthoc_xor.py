"""Seeded end to end on the demo's XOR data: the built-in relevance and the post-hoc Möbius
interaction both single out the XOR pair, and EMAP shows the accuracy lives in the interaction."""

import pytest

from interfuse import load_run
from interfuse.explain.posthoc import explain_model
from interfuse.report import render_explanation


@pytest.fixture(scope="module")
def xor_explained(xor_demo_run):
    task, results, out = xor_demo_run
    model = load_run(out).model
    explanation = explain_model(
        model,
        task.test,
        task.task,
        task.train,
        emap_samples=128,
        ground_truth=task.ground_truth["term_shares"],
    )
    return results, explanation


def test_builtin_relevance_and_mobius_put_the_xor_pair_first(xor_explained):
    results, explanation = xor_explained
    assert explanation.removal == "mask"
    builtin = explanation.column("builtin")
    mobius = explanation.column("mobius")
    assert builtin == pytest.approx(results.relevance.shares)
    assert max(builtin, key=builtin.get) == "m0*m1"
    assert max(mobius, key=mobius.get) == "m0*m1"
    # the pair's Möbius dividend carries (almost) all of v(N); unimodal dividends are ≈ 0
    v_all = explanation.game["{m0,m1,m2}"]
    assert mobius["m0*m1"] > 0.9 * v_all
    assert all(abs(mobius[m]) < 0.05 * v_all for m in ("m0", "m1", "m2"))


def test_distractor_and_emap_gap(xor_explained):
    _, explanation = xor_explained
    shapley = explanation.column("shapley")
    assert shapley["m2"] < 0.05 * shapley["m0"]
    removed = explanation.explanations["ablation"].details["removed"]
    assert removed["m2"]["accuracy"] > 0.9  # m2 missing: no harm
    assert removed["m0"]["accuracy"] < 0.6  # m0 missing: chance
    # the additive projection of an XOR model is at chance: the accuracy is all interaction
    assert explanation.explanations["emap"].details["accuracy_gap"] > 0.3
    text = render_explanation(explanation, "xor")
    assert "EMAP accuracy gap" in text and "`m0*m1`" in text
