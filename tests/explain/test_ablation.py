"""The removal operator (mask / embedding mean / input mean) and modality ablation, on small
models whose answers are known in closed form."""

import pytest
import torch
from torch import nn

from interfuse import MultimodalModel
from interfuse.baselines import EarlyFusion, LateFusion
from interfuse.data.batching import TensorData
from interfuse.explain.ablation import ablation_from_coalitions, modality_ablation
from interfuse.explain.coalitions import all_coalitions, coalition_metrics, performance_game
from interfuse.explain.removal import ModalityRemoval, resolve_method
from interfuse.games import shapley_values
from interfuse.metrics import compute_metrics
from interfuse.model import FusionOutput

DIMS = {"a": 3, "b": 4, "c": 2}


def data(n=40, seed=0, classes=2):
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, d, generator=gen) for m, d in DIMS.items()}
    return TensorData(inputs, torch.randint(0, classes, (n,), generator=gen))


def trained_like(model, reference):
    """Fill running statistics as training would, then switch to evaluation."""
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(reference.inputs)
    return model.eval()


@pytest.fixture
def intense():
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(d, 5), nn.Tanh()) for m, d in DIMS.items()}
    model = MultimodalModel(
        encoders, "pairs", rank=2, num_outputs=2, encoder_dims=dict.fromkeys(DIMS, 5)
    )
    return trained_like(model, data(seed=1))


def test_auto_picks_the_models_own_path():
    torch.manual_seed(0)
    encoders = {m: nn.Linear(d, 3) for m, d in DIMS.items()}
    assert resolve_method(MultimodalModel(encoders, encoder_dims=dict.fromkeys(DIMS, 3))) == "mask"
    assert resolve_method(LateFusion(encoders, encoder_dims=dict.fromkeys(DIMS, 3))) == "embedding"
    early = EarlyFusion({m: (d,) for m, d in DIMS.items()})
    assert resolve_method(early) == "input"
    with pytest.raises(ValueError, match="no missing-modality path"):
        resolve_method(LateFusion(encoders, encoder_dims=dict.fromkeys(DIMS, 3)), "mask")
    with pytest.raises(ValueError, match="no encode/fuse"):
        resolve_method(early, "embedding")
    with pytest.raises(ValueError, match="unknown removal method"):
        resolve_method(early, "zero")


def test_mask_removal_is_the_models_missing_modality_path(intense):
    test = data(seed=2)
    removal = ModalityRemoval(intense, method="mask", batch_size=16)
    with torch.no_grad():
        full = intense(test.inputs).prediction
        torch.testing.assert_close(removal.predict(test), full)
        n = len(test)
        masks = {"b": torch.zeros(n, dtype=torch.bool)}
        expected = intense({m: x for m, x in test.inputs.items() if m != "b"}, masks).prediction
    torch.testing.assert_close(removal.predict(test, present={"a", "c"}), expected)
    # blocks of b and of every interaction with b are 0: the head sees only a, c and a*c
    with torch.no_grad():
        blocks = intense(test.inputs).blocks
        kept = {t: z if "b" not in t.split("*") else torch.zeros_like(z) for t, z in blocks.items()}
        torch.testing.assert_close(removal.predict(test, present={"a", "c"}), intense.head(kept))


def test_mask_removal_of_everything_leaves_the_bias(intense):
    out = ModalityRemoval(intense, method="mask").predict(data(seed=2), present=())
    torch.testing.assert_close(out, intense.head.bias.detach().expand_as(out))


def test_embedding_removal_uses_the_training_mean_of_h(intense):
    reference, test = data(seed=1), data(seed=2)
    removal = ModalityRemoval(intense, reference, method="embedding")
    with torch.no_grad():
        mean_h = intense.encode(reference.inputs)["a"].mean(0)
        h = intense.encode(test.inputs)
        h["a"] = mean_h.expand(len(test), -1)
        expected = intense.fuse(h).prediction
    torch.testing.assert_close(removal.predict(test, present={"b", "c"}), expected)


def test_input_removal_uses_the_training_mean_of_x():
    torch.manual_seed(0)
    model = EarlyFusion({m: (d,) for m, d in DIMS.items()}, num_outputs=2, hidden=(6,)).eval()
    reference, test = data(seed=1), data(seed=2)
    removal = ModalityRemoval(model, reference)
    assert removal.method == "input"
    x = dict(test.inputs)
    x["c"] = reference.inputs["c"].mean(0).expand(len(test), -1)
    with torch.no_grad():
        expected = model(x).prediction
    torch.testing.assert_close(removal.predict(test, present={"a", "b"}), expected)
    with pytest.raises(ValueError, match="reference"):
        ModalityRemoval(model, None, method="input")


@pytest.mark.parametrize("method", ["mask", "embedding"])
def test_removal_ignores_the_inputs_of_samples_missing_in_the_data(intense, method):
    """The encoders ran on every row without the data's masks, so a missing sample's row of
    NaN (which the model ignores, docs/missing-modalities.md §1) failed with 'non-finite values
    in present samples'; the rows of missing samples must not matter."""
    test = data(seed=2)
    present = torch.arange(len(test)) % 3 != 0
    zeros = {m: x.clone() for m, x in test.inputs.items()}
    zeros["a"][~present] = 0.0
    nans = dict(zeros, a=zeros["a"].masked_fill(~present[:, None], float("nan")))
    removal = ModalityRemoval(intense, data(seed=1), method=method)
    for coalition in ({"a", "b", "c"}, {"b", "c"}, {"a"}):
        expected = removal.predict(TensorData(zeros, test.targets, {"a": present}), coalition)
        got = removal.predict(TensorData(nans, test.targets, {"a": present}), coalition)
        torch.testing.assert_close(got, expected)
    # a modality of the data that the model lacks (masked too) is left alone
    masks = {"a": present, "x": present}
    extra = TensorData({**nans, "x": torch.zeros(len(test), 1)}, test.targets, masks)
    alone = removal.predict(TensorData(nans, test.targets, {"a": present}), {"b"})
    torch.testing.assert_close(removal.predict(extra, {"b"}), alone)
    if method == "mask":  # all modalities kept: the model's own prediction with the data's masks
        with torch.no_grad():
            full = intense(nans, masks={"a": present}).prediction
        torch.testing.assert_close(
            removal.predict(TensorData(nans, test.targets, {"a": present})), full
        )


@pytest.mark.parametrize("method", ["embedding", "input"])
def test_mean_removal_takes_a_lazily_read_training_split(intense, method):
    """``explain --method embedding|input`` on a dataset folder (interfuse-lazy) failed with
    AttributeError: the training split's ``inputs`` are raw memory maps, not tensors; the
    reference means now come from its batches (standardised, missing rows left out)."""
    from interfuse.data.lazy import LazyData

    reference = data(seed=1)
    present = torch.arange(len(reference)) % 4 != 0
    inputs = {m: x.clone() for m, x in reference.inputs.items()}
    inputs["b"][~present] = 0.0
    in_memory = TensorData(inputs, reference.targets, {"b": present})
    arrays = {m: x.numpy() for m, x in inputs.items()}
    lazy = LazyData(arrays, reference.targets, {"b": present}, {})
    model = intense if method == "embedding" else _early()
    expected = ModalityRemoval(model, in_memory, method=method, batch_size=7)
    got = ModalityRemoval(model, lazy, method=method, batch_size=7)
    for m in DIMS:
        torch.testing.assert_close(got.baseline[m], expected.baseline[m])
    test = data(seed=2)
    torch.testing.assert_close(got.predict(test, {"a"}), expected.predict(test, {"a"}))


def _early():
    torch.manual_seed(0)
    return EarlyFusion({m: (d,) for m, d in DIMS.items()}, num_outputs=2, hidden=(6,)).eval()


def test_removal_restores_training_mode(intense):
    intense.train()
    ModalityRemoval(intense).predict(data(seed=2), present={"a"})
    assert intense.training


class AdditiveModel(nn.Module):
    """Logit of class 1 = w_a·x_a + w_b·x_b; modality c is ignored."""

    modalities = ("a", "b", "c")

    def __init__(self):
        super().__init__()
        self.wa = nn.Parameter(torch.tensor([3.0, 0.0, 0.0]))
        self.wb = nn.Parameter(torch.tensor([0.5, 0.0, 0.0, 0.0]))

    def encode(self, inputs):
        return dict(inputs)

    def fuse(self, h):
        logit = h["a"] @ self.wa + h["b"] @ self.wb
        prediction = torch.stack([torch.zeros_like(logit), logit], dim=1)
        return FusionOutput(prediction, {}, dict(h))

    def forward(self, inputs):
        return self.fuse(self.encode(inputs))


def additive_task(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, d, generator=gen) for m, d in DIMS.items()}
    logit = 3.0 * inputs["a"][:, 0] + 0.5 * inputs["b"][:, 0]
    labels = (torch.rand(n, generator=gen) < torch.sigmoid(logit)).long()
    return TensorData(inputs, labels)


def test_ablation_ranks_modalities_by_their_weight():
    model = AdditiveModel()
    test = additive_task(seed=1)
    removal = ModalityRemoval(model, additive_task(seed=0))
    ablation = modality_ablation(removal, test, "classification")
    drop = ablation.drop("loss")
    assert set(drop) == {"a", "b", "c", "a*b", "a*c", "b*c"}
    assert drop["a"] > drop["b"] > 0
    assert drop["c"] == pytest.approx(0.0, abs=1e-9)  # an ignored modality costs nothing
    assert drop["a*c"] == pytest.approx(drop["a"], abs=1e-9)
    assert ablation.drop("accuracy")["a"] > 0
    # the missing-modality evaluation is the test metric with that modality removed
    expected = compute_metrics("classification", removal.predict(test, {"b", "c"}), test.targets)
    assert ablation.removed["a"] == pytest.approx(expected)


def test_ablation_and_shapley_from_the_same_coalitions():
    model = AdditiveModel()
    test = additive_task(seed=1)
    removal = ModalityRemoval(model, additive_task(seed=0))
    metrics = coalition_metrics(removal, test, "classification")
    assert set(metrics) == set(all_coalitions(model.modalities))
    ablation = ablation_from_coalitions(metrics, model.modalities)
    # by hand: a removed modality is replaced by its mean over the reference split
    reference = additive_task(seed=0).inputs
    logit_a = test.inputs["a"] @ model.wa
    logit_b = test.inputs["b"] @ model.wb
    mean_a = reference["a"].mean(dim=0) @ model.wa
    for removed, logit in (
        ("a", mean_a + logit_b),
        ("b", logit_a + reference["b"].mean(dim=0) @ model.wb),
    ):
        prediction = torch.stack([torch.zeros_like(logit), logit], dim=1).detach()
        expected = compute_metrics("classification", prediction, test.targets)
        assert ablation.removed[removed] == pytest.approx(expected)
    full = torch.stack([torch.zeros_like(logit_a), logit_a + logit_b], dim=1).detach()
    assert ablation.full == pytest.approx(compute_metrics("classification", full, test.targets))
    game = performance_game(metrics, "loss")
    phi = shapley_values(game, model.modalities)
    assert sum(phi.values()) == pytest.approx(game[frozenset("abc")])
    assert phi["a"] > phi["b"] > abs(phi["c"])
    assert phi["c"] == pytest.approx(0.0, abs=1e-9)
