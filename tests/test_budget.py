"""Memory estimates made before a model is built (:mod:`interfuse.budget`)."""

from __future__ import annotations

import pytest

from interfuse import budget
from interfuse.train import TrainConfig
from interfuse.train.runner import check_training_budget

ENCODERS = {f"m{i}": {"type": "mlp", "input_dim": 3, "output_dim": 8} for i in range(10)}


def _estimate(interactions, monkeypatch) -> str:
    """What the estimate asks for, read from its refusal when no memory is available."""
    monkeypatch.setattr(budget, "available_memory", lambda: 0)
    config = TrainConfig(rank=1024, interactions=interactions, batch_size=64)
    with pytest.raises(budget.ResourceBudgetError) as refused:
        check_training_budget(config, ENCODERS, 1)
    return str(refused.value).split("needs about ")[1].split(" (")[0]


def test_terms_given_as_a_string_are_estimated_as_the_same_terms_in_a_list(monkeypatch):
    """``interactions="m0*m1"`` used to be estimated as if every pair of the 10 modalities had
    a block (46.2 GiB instead of 2.1 GiB at rank 1024), refusing a model the list form accepts."""
    single = _estimate(["m0*m1"], monkeypatch)
    assert single == "2.1 GiB"
    assert _estimate("m0*m1", monkeypatch) == single
    assert _estimate([("m0", "m1")], monkeypatch) == single
    pair = _estimate(["m0*m1", "m2*m3"], monkeypatch)
    assert _estimate("m0*m1,m2*m3", monkeypatch) == _estimate(" m0*m1, m2*m3 ", monkeypatch) == pair
