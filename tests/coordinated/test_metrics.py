"""Losses and metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from interfuse.coordinated.metrics import (
    bleu,
    cell_centres,
    harmonic_mean,
    per_class_accuracy,
    recall_at_k,
    text_positives,
)
from interfuse.coordinated.models import hinge_rank_loss, info_nce, zero_shot_predict


def test_hinge_rank_loss_by_hand():
    scores = torch.tensor([[0.5, 0.45, 0.0], [0.1, 0.2, 0.9]])
    targets = torch.tensor([0, 2])
    # sample 0: max(0, .1-.5+.45)=.05, max(0, .1-.5+0)=0; sample 1: 0 + 0 → mean .025
    assert hinge_rank_loss(scores, targets, margin=0.1).item() == pytest.approx(0.025)
    assert hinge_rank_loss(scores, torch.tensor([1, 0]), margin=0.1).item() == pytest.approx(
        ((0.1 - 0.45 + 0.5) + 0.0 + (0.1 - 0.1 + 0.2) + (0.1 - 0.1 + 0.9)) / 2
    )


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    # logits = 2 * a b^T = [[2, 1.2], [0, 1.6]]
    rows = [-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))),
            -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))]  # fmt: skip
    cols = [-math.log(math.exp(2) / (math.exp(2) + math.exp(0))),
            -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))]  # fmt: skip
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert info_nce(a, b, scale).item() == pytest.approx(expected, rel=1e-6)


def test_zero_shot_prediction_on_a_toy_space():
    # Labels are colour + shape directions; the unseen "red square" is never a training class.
    colour = {"red": torch.tensor([1.0, 0, 0, 0]), "blue": torch.tensor([0, 1.0, 0, 0])}
    shape = {"circle": torch.tensor([0, 0, 1.0, 0]), "square": torch.tensor([0, 0, 0, 1.0])}
    names = [(c, s) for c in colour for s in shape]
    labels = torch.stack([colour[c] + shape[s] for c, s in names])
    unseen = torch.tensor([names.index(("red", "square")), names.index(("blue", "circle"))])
    image = torch.stack([colour["red"] + shape["square"], colour["blue"] + shape["circle"]])
    scores = image @ labels.T
    assert zero_shot_predict(scores, unseen).tolist() == unseen.tolist()
    with pytest.raises(ValueError):
        zero_shot_predict(scores, torch.tensor([], dtype=torch.long))


def test_recall_at_k_on_a_hand_made_matrix():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.65, 0.7, 0.6]])
    pos = np.eye(3, dtype=bool)
    # rank of the positive: row 0 first, row 1 second, row 2 third
    assert recall_at_k(sim, pos, ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    pos2 = pos.copy()
    pos2[1, 2] = True  # a second positive for row 1, ranked first
    assert recall_at_k(sim, pos2, ks=(1,))[1] == pytest.approx(2 / 3)
    ties = np.zeros((2, 3))
    assert recall_at_k(ties, np.eye(2, 3, dtype=bool), ks=(1, 3)) == {1: 0.0, 3: 1.0}
    with pytest.raises(ValueError):
        recall_at_k(sim, np.zeros((3, 3), dtype=bool))


def test_text_positives_match_identical_strings():
    pos = text_positives([["a b", "c"], ["d"]], ["c", "d", "a b", "c"])
    np.testing.assert_array_equal(pos, [[True, False, True, True], [False, True, False, False]])


def test_per_class_accuracy_and_harmonic_mean():
    assert per_class_accuracy(np.array([0, 0, 1, 0]), np.array([0, 0, 0, 1])) == pytest.approx(
        (2 / 3 + 0) / 2
    )
    assert harmonic_mean(0.5, 0.25) == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_bleu_wiring():
    assert bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(1.0)
    assert bleu(["v w x y z"], [["a b c d e"]]) == 0.0
    # p1..p4 = 4/5, 3/4, 2/3, 1/2; equal lengths, so no brevity penalty
    assert bleu(["a b c d e"], [["a b c d f"]]) == pytest.approx(0.2**0.25, rel=1e-5)
    # the best of several references counts
    assert bleu(["a b c d e"], [["z", "a b c d e"]]) == pytest.approx(1.0)


def test_cell_centres():
    c = cell_centres(32, 8)
    assert c.shape == (64, 2)
    np.testing.assert_allclose(c[0], [2, 2])
    np.testing.assert_allclose(c[9], [6, 6])
    np.testing.assert_allclose(c[7], [30, 2])


def test_recall_at_k_refuses_nan_scores():
    # NaN compares false with everything, so a NaN score used to rank the positive first:
    # a model whose embeddings went NaN scored a perfect R@1
    sim = np.array([[0.9, np.nan, 0.5], [0.2, 0.3, 0.8]])
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(sim, np.eye(2, 3, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.full((2, 3), np.nan), np.eye(2, 3, dtype=bool))
