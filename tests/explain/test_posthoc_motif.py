"""Seeded end to end on the demo's motif data: built-in relevance, modality ablation and exact
Shapley values rank the unimodal terms alike (and like the ground truth)."""

import pytest

from interfuse import load_run
from interfuse.explain.posthoc import explain_model


@pytest.fixture(scope="module")
def motif_explained(motif_demo_run):
    task, _, out = motif_demo_run
    model = load_run(out).model
    return explain_model(
        model,
        task.test,
        task.task,
        task.train,
        emap_samples=128,
        ground_truth=task.ground_truth["term_shares"],
    )


@pytest.mark.parametrize(
    "pair", ["builtin~ablation", "builtin~shapley", "ablation~shapley", "shapley~truth"]
)
def test_unimodal_rankings_agree(motif_explained, pair):
    assert motif_explained.agreement["unimodal"][pair] >= 0.8


def test_shapley_orders_modalities_by_insertion_probability(motif_explained):
    phi = motif_explained.column("shapley")
    assert phi["m0"] > phi["m1"] > phi["m2"] > phi["m3"]
    assert abs(phi["m3"]) < 0.01  # the irrelevant source


def test_little_accuracy_depends_on_interactions(motif_explained):
    assert abs(motif_explained.explanations["emap"].details["accuracy_gap"]) < 0.05
