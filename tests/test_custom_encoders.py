"""Own encoders: an image modality with the built-in CNN, a user's nn.Module, a factory, and a
registered encoder; the run folder needs unregistered modules again to load."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from interfuse import load_run
from interfuse.checkpoint import CheckpointError
from interfuse.data import from_arrays
from interfuse.encoders import ENCODERS, ImageCNN, register_encoder
from interfuse.train import TrainConfig, fit


def image_task(n=300, seed=0):
    """(N, 1, 8, 8) images whose bright quadrant is the label, plus a tabular modality."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    images = rng.normal(scale=0.5, size=(n, 1, 8, 8)).astype(np.float32)
    images[y == 1, :, :4, :4] += 2.0
    images[y == 0, :, 4:, 4:] += 2.0
    tab = rng.normal(size=(n, 3))
    return from_arrays({"image": images, "tab": tab}, y, seed=seed)


CONFIG = TrainConfig(epochs=4, batch_size=32, rank=2, seed=0, lr=1e-2)


def test_images_get_the_builtin_cnn_and_learn(tmp_path):
    task = image_task()
    assert task.encoders["image"]["type"] == "image_cnn"
    result = fit(task, CONFIG, tmp_path / "run", progress=False)
    assert result.metrics["test"]["accuracy"] > 0.9
    shares = result.relevance.shares
    assert shares["image"] > shares["tab"]
    run = load_run(tmp_path / "run")
    assert isinstance(run.model.encoders["image"], ImageCNN)


class Flatten(nn.Module):
    def __init__(self, shape, output_dim=8):
        super().__init__()
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(int(np.prod(shape)), output_dim), nn.ReLU()
        )

    def forward(self, x):
        return self.net(x)


def test_a_users_module_and_a_factory(tmp_path):
    task = image_task()
    module = Flatten((1, 8, 8))
    result = fit(task, CONFIG, tmp_path / "module", encoders={"image": module}, progress=False)
    assert result.metrics["test"]["accuracy"] > 0.9
    assert result.model["encoders"]["image"]["type"] == "custom"
    with pytest.raises(CheckpointError, match="custom encoder"):
        load_run(tmp_path / "module")
    run = load_run(tmp_path / "module", encoders={"image": Flatten((1, 8, 8))})
    assert run.predict({"image": np.zeros((2, 1, 8, 8), np.float32)}).labels is not None
    built = fit(task, CONFIG, tmp_path / "factory", encoders={"image": Flatten}, progress=False)
    assert built.metrics["test"]["accuracy"] > 0.9


def test_a_registered_encoder_is_buildable_by_name(tmp_path):
    @register_encoder("flatten-test")
    class Registered(Flatten):
        def __init__(self, in_features: int, output_dim: int = 8) -> None:
            super().__init__((in_features,), output_dim)

    try:
        task = image_task()
        spec = {"type": "flatten-test", "in_features": 64}
        fit(
            task,
            CONFIG.replace(epochs=1),
            tmp_path / "run",
            encoders={"image": spec},
            progress=False,
        )
        assert isinstance(load_run(tmp_path / "run").model.encoders["image"], Registered)
    finally:
        ENCODERS.remove("flatten-test")


def test_encoder_errors_name_the_modality(tmp_path):
    task = image_task(n=60)
    with pytest.raises(ValueError, match="modality 'image'"):
        fit(task, CONFIG, tmp_path / "a", encoders={"image": 3}, progress=False)
    with pytest.raises(ValueError, match="factory of modality 'image' returned int"):
        fit(task, CONFIG, tmp_path / "b", encoders={"image": lambda shape: 3}, progress=False)
    with pytest.raises(ValueError, match="unknown encoder type 'nope'"):
        fit(task, CONFIG, tmp_path / "c", encoders={"image": {"type": "nope"}}, progress=False)


@pytest.mark.parametrize("output_dim", [[4], "abc"])
def test_a_malformed_output_dim_is_the_encoders_clear_error(tmp_path, output_dim):
    """The memory estimate before training read ``int(spec["output_dim"])`` and failed first,
    with ``TypeError: int() argument must be ... not 'list'`` or "invalid literal for int()"."""
    task = image_task(n=60)
    spec = {"type": "mlp", "input_dim": 3, "output_dim": output_dim}
    with pytest.raises(ValueError, match="layer sizes must be integers >= 1"):
        fit(task, CONFIG, tmp_path, encoders={"tab": spec}, progress=False)


def test_an_encoders_own_refusal_names_the_modality(tmp_path):
    """An encoder's ValueError (a size < 1, a dropout of 1) did not say which modality's spec
    was wrong, unlike an unknown option."""
    task = image_task(n=60)
    spec = {"type": "mlp", "input_dim": 3, "dropout": 1.0}
    with pytest.raises(ValueError, match="modality 'tab': bad options for encoder 'mlp': dropout"):
        fit(task, CONFIG, tmp_path, encoders={"tab": spec}, progress=False)
