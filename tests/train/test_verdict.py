"""The 'not learnt' verdict (issue 12 item 3): decided on the validation split, printed first."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from interfuse.checkpoint import load_checkpoint
from interfuse.cli.app import print_run
from interfuse.data.synthetic import make_motif_data
from interfuse.data.task import synthetic_task
from interfuse.explain.trust import bootstrap_means, learnt_verdict
from interfuse.models import build_model, model_spec
from interfuse.report import render_report
from interfuse.results import RunResult
from interfuse.train import TrainConfig, TrainingState
from interfuse.train.config import DEFAULT_MODALITY_DROPOUT
from interfuse.train.runner import RunRecorder, fit


@pytest.fixture(scope="module")
def unlearnt(tmp_path_factory):
    """A run whose learning rate is so small that nothing is learnt (0 effective epochs)."""
    task = synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=1000, seed=0), seed=0)
    out = tmp_path_factory.mktemp("unlearnt")
    with pytest.warns(UserWarning):
        result = fit(task, TrainConfig(seed=0, epochs=1, lr=1e-9, restarts=0), out, progress=False)
    return task, result, out


def test_a_model_that_learnt_nothing_is_restarted_and_the_better_attempt_kept(tmp_path):
    """restarts=1: the first attempt (lr 1e-9) learns nothing, so the run is restarted from the
    same initialisation with restart_lr; validation picks the restart's model (no fine-tune
    here: at the first attempt's lr 1e-9 it would only add epochs)."""
    task = synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=1000, seed=0), seed=0)
    config = TrainConfig(
        seed=0, epochs=4, patience=1, lr=1e-9, restarts=1, restart_lr=1e-2, dropout_finetune=False
    )
    lines: list[str] = []
    result = fit(task, config, tmp_path / "run", progress=False, log=lines.append)
    first = next(i for i, line in enumerate(lines) if line.startswith("restart 1:"))
    assert result.attempts == 2 and result.best_epoch > first
    assert result.verdict.status != "not_learnt"
    assert any(line.startswith("restart 1: epoch   1/4") for line in lines)
    assert RunResult.from_json(result.to_json()).attempts == 2


def test_verdict_fires_on_a_model_that_learnt_nothing(unlearnt):
    _, result, _ = unlearnt
    assert result.verdict is not None
    assert result.verdict.status == "not_learnt" and not result.verdict.learnt
    assert result.verdict.split == "val"
    assert result.verdict.gain_over_chance_low <= result.verdict.margin * result.verdict.chance


def test_verdict_does_not_fire_on_the_demo_motif_data(motif_demo_run):
    _, result, _ = motif_demo_run
    assert result.verdict.status == "learnt"
    assert result.verdict.best_single == "m0"
    assert result.verdict.gain_over_single_low > 0


def test_verdict_is_printed_first_and_heads_the_report(unlearnt, capsys):
    _, result, out = unlearnt
    print_run("motif", result, out)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("== motif")
    assert lines[1].startswith("NOT LEARNT")
    report = render_report(result, out).read_text().splitlines()
    first = next(line for line in report[1:] if line.strip())
    assert "NOT LEARNT" in first


def test_verdict_round_trips_and_old_results_still_read(unlearnt):
    _, result, _ = unlearnt
    again = RunResult.from_json(result.to_json())
    assert again.verdict == result.verdict
    values = result.to_dict()
    del values["verdict"], values["relevance_evidence"]  # written before the verdict existed
    assert RunResult.from_dict(values).verdict is None


def test_untrained_model_is_not_learnt(unlearnt):
    """Evaluating a freshly built model (no training at all) gives the same verdict."""
    task, _, _ = unlearnt
    config = TrainConfig().with_defaults(task.train_defaults)
    shapes = {m: list(x.shape[1:]) for m, x in task.train.inputs.items()}
    spec = model_spec(config.model, task.encoders, config, task.num_outputs, input_shapes=shapes)
    model = build_model(spec, seed=1)
    assert learnt_verdict(model, task).status == "not_learnt"


def test_bootstrap_means_are_seeded_and_centred():
    values = torch.arange(10, dtype=torch.float64).reshape(-1, 1)
    a, b = bootstrap_means(values, 200, seed=3), bootstrap_means(values, 200, seed=3)
    torch.testing.assert_close(a, b)
    assert abs(float(a.mean()) - 4.5) < 0.2


class _Logistic(torch.nn.Module):
    """A one-feature logistic model with the model interface ``model(inputs).prediction``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 2).double()

    def forward(self, inputs, masks=None):
        return SimpleNamespace(prediction=self.linear(inputs["x"].double()))


def test_a_class_weighted_model_is_judged_against_the_weighted_chance():
    """A model trained with balanced class weights (95/5 classes, a weak feature) gives up
    frequent-class loss for rare-class loss, as weighting asks: judged by the unweighted loss
    against the class-frequency constant it looks worse than chance; judged by the loss it was
    trained on, against the best constant under that loss, it has clearly learnt."""
    from interfuse.data import from_arrays
    from interfuse.explain.trust import chance_prediction
    from interfuse.metrics import balanced_weights, per_sample_loss, task_loss

    gen = np.random.default_rng(0)
    y = (gen.random(4000) < 0.05).astype(np.int64)
    x = gen.normal(size=(4000, 1)) + 1.5 * y[:, None]
    task = from_arrays({"x": x}, y, seed=0)
    weight = balanced_weights("classification", task.train.targets, 2).double()
    model = _Logistic()
    train_x, train_y = task.train.inputs["x"].double(), task.train.targets
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = task_loss("classification", model.linear(train_x), train_y, weight)
        loss.backward()
        return loss

    optimiser.step(closure)
    assert learnt_verdict(model, task).status == "not_learnt"  # the unweighted comparison
    verdict = learnt_verdict(model, task, weight=weight)
    assert verdict.status == "learnt" and verdict.gain_over_chance_low > 0
    # the weighted chance is the best constant under the weighted loss (brute force)
    val_y = task.val.targets
    chance = chance_prediction(task, len(val_y), weight)
    best = min(
        float(per_sample_loss("classification", torch.tensor([[0.0, b]]).expand(len(val_y), 2),
                              val_y, weight=weight).mean())
        for b in np.linspace(-4, 4, 801)
    )  # fmt: skip
    assert float(per_sample_loss("classification", chance, val_y, weight=weight).mean()) < (
        best + 0.01
    )


def test_patience_counts_per_attempt_while_selection_spans_attempts():
    """A restart whose losses stay above the first attempt's best still has its own patience
    (it used to be stopped after `patience` epochs by the first attempt's best loss)."""
    state = TrainingState()
    for epoch, loss in enumerate([0.5, 0.4, 0.45], start=1):
        state.epoch = epoch
        state.record(loss)
    assert (state.best_loss, state.best_epoch, state.bad_epochs) == (0.4, 2, 1)
    state.attempt, state.attempt_best, state.bad_epochs = 1, float("inf"), 0  # as _restart does
    improvements = []
    for epoch, loss in enumerate([0.9, 0.7, 0.6, 0.39], start=4):
        state.epoch = epoch
        improvements.append(state.record(loss))
    assert state.bad_epochs == 0 and state.attempt_best == 0.39
    assert improvements == [False, False, False, True]  # only 0.39 beats the first attempt
    assert state.best_epoch == 7
    # checkpoints from before per-attempt patience resume with the overall best as the bar
    old = TrainingState.from_dict({"epoch": 3, "best_loss": 0.4, "best_epoch": 2})
    assert old.attempt_best == 0.4


def test_default_modality_dropout_depends_on_model_and_modalities():
    assert TrainConfig().modality_dropout is None
    assert TrainConfig().modality_dropout_for(3) == DEFAULT_MODALITY_DROPOUT == 0.3
    assert TrainConfig(model="mnl").modality_dropout_for(2) == 0.3
    assert TrainConfig().modality_dropout_for(1) == 0.0  # nothing to fall back on
    assert TrainConfig(model="late").modality_dropout_for(3) == 0.0  # no missing-modality path
    assert TrainConfig(modality_dropout=0.0).modality_dropout_for(3) == 0.0
    assert TrainConfig(modality_dropout=0.1).modality_dropout_for(1) == 0.1
    with pytest.raises(ValueError, match="modality dropout needs a model"):
        TrainConfig(model="late", modality_dropout=0.2)


def test_the_restart_trains_without_dropout_and_the_fine_tune_with(tmp_path):
    """First attempt: modality dropout 0.3, the encoders' dropout and λ; the restart (fired
    because the first attempt, at lr 1e-9, learnt nothing; it used its whole budget) has no
    dropout and restart_lam; validation selects the restart's model, so a fine-tune follows:
    from that model's weights, with the first attempt's dropout, λ and learning rate."""
    seen, best = [], []

    class Spy(pl.Callback):  # runs after fit's own recorder, which selects the best epoch
        def on_train_start(self, trainer, module):
            layers = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
            weights = {k: v.clone() for k, v in module.model.state_dict().items()}
            seen.append((module.modality_dropout, [layer.p for layer in layers], module.lam))
            seen[-1] += (module.lr, weights, best[-1] if best else None)

        def on_train_epoch_end(self, trainer, module):
            recorder = next(c for c in trainer.callbacks if isinstance(c, RunRecorder))
            if recorder.run.state.best_epoch == recorder.run.state.epoch:
                best.append({k: v.clone() for k, v in module.model.state_dict().items()})

    task = synthetic_task(make_motif_data([0.9, 0.6, 0.0], n=600, seed=0), seed=0)
    config = TrainConfig(seed=0, epochs=2, lr=1e-9, restarts=1)
    lines: list[str] = []
    result = fit(
        task, config, tmp_path / "run", progress=False, callbacks=[Spy()], log=lines.append
    )
    assert result.attempts == 3 and result.epochs_run >= 5
    (first, restart, finetune) = seen
    assert first[:4] == (0.3, [0.25] * 3, config.lam, config.lr) and config.lam == 0.01
    assert restart[:4] == (0.0, [0.0] * 3, config.restart_lam, config.restart_lr)
    assert finetune[:4] == (0.3, [0.25] * 3, config.lam, config.lr)
    assert any(line.startswith("fine-tune: epoch   1/2") for line in lines)
    assert result.selected_attempt == "fine-tune"  # it improved on the restart here
    assert RunResult.from_json(result.to_json()).selected_attempt == "fine-tune"
    assert "(attempt: fine-tune, of 3)" in render_report(result, tmp_path / "run").read_text()
    # the fine-tune starts from the selected (best) model of the restart, not from scratch
    starts_at, selected = finetune[4], finetune[5]
    assert all(torch.equal(starts_at[k], selected[k]) for k in starts_at)
    assert not torch.equal(starts_at["head.bias"], first[4]["head.bias"])


def test_no_fine_tune_when_the_first_attempt_is_selected(tmp_path):
    """A restart that learns nothing (restart_lr 1e-9) leaves the first attempt's model selected,
    and that model already trained with dropout: no fine-tune; ``--no-dropout-finetune`` also
    skips it after a selected restart."""
    task = synthetic_task(make_motif_data([0.9, 0.6, 0.0], n=600, seed=0), seed=0)
    lines: list[str] = []
    kept_first = fit(
        task,
        TrainConfig(seed=0, epochs=3, restarts=1, restart_lr=1e-9, restart_lam=0.01),
        tmp_path / "a",
        progress=False,
        log=lines.append,
    )
    assert kept_first.attempts == 2 and kept_first.best_epoch <= 3
    assert kept_first.selected_attempt == "first"
    assert not any(line.startswith("fine-tune") for line in lines)
    off = fit(
        task,
        TrainConfig(seed=0, epochs=2, lr=1e-9, restarts=1, dropout_finetune=False),
        tmp_path / "b",
        progress=False,
    )
    assert off.attempts == 2 and off.best_epoch > 2 and off.selected_attempt == "restart 1"


def test_dropout_layers_draw_from_the_run_seed(tmp_path):
    """Two runs with the same seed train the same weights whatever the global random state (the
    encoders' dropout used to draw from the unseeded global generator)."""
    task = synthetic_task(make_motif_data([0.9, 0.0], n=300, length=30, seed=0), seed=0)
    config = TrainConfig(seed=0, epochs=1, batch_size=32, restarts=0)
    weights = []
    for name, state in (("a", 1), ("b", 2)):
        torch.manual_seed(state)  # different global states before each run
        fit(task, config, tmp_path / name, progress=False)
        weights.append(load_checkpoint(tmp_path / name / "best.safetensors")[0])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_a_second_attempt_without_dropout_follows_only_a_first_with_dropout(tmp_path):
    """With dropout (the default) a second attempt always follows, even when the first one is
    learnt, since dropout can hide an interaction that the verdict cannot see; without any
    dropout a learnt first attempt is final."""
    task = synthetic_task(make_motif_data([0.9, 0.7], n=800, length=40, seed=0), seed=0)
    lines: list[str] = []
    with_dropout = fit(
        task,
        TrainConfig(seed=0, epochs=4, dropout_finetune=False),
        tmp_path / "a",
        progress=False,
        log=lines.append,
    )
    assert with_dropout.verdict.status == "learnt" and with_dropout.attempts == 2
    assert any(line.startswith("restart 1: epoch") for line in lines)
    plain = dataclasses.replace(
        task, encoders={m: {**spec, "dropout": 0.0} for m, spec in task.encoders.items()}
    )
    without = fit(
        plain, TrainConfig(seed=0, epochs=4, modality_dropout=0.0), tmp_path / "b", progress=False
    )
    assert without.verdict.status == "learnt" and without.attempts == 1
