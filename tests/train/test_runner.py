"""End to end on the synthetic DNA experiment (seeded; docs/data.md §2–§3): relevance finds the
ground truth."""

import dataclasses
import json
import os
import signal
import warnings

import pytest
import pytorch_lightning as pl
import torch

from interfuse.checkpoint import CheckpointError, load_checkpoint
from interfuse.data.synthetic import make_motif_data
from interfuse.data.task import synthetic_task
from interfuse.train import NotConverged, TrainConfig
from interfuse.train.interrupt import TrainingInterrupted
from interfuse.train.runner import RunFolderError, RunRecorder, fit, on_rank_zero


def interaction_share(shares):
    return sum(s for t, s in shares.items() if "*" in t)


@pytest.fixture(scope="module")
def motif_run(motif_demo_run):
    task, results, out = motif_demo_run
    return results, out, task.ground_truth


def test_motif_relevance_follows_insertion_probability(motif_run):
    results, _, _ = motif_run
    shares = results.relevance.shares
    assert shares["m0"] > shares["m1"] > shares["m2"] > shares["m3"]
    assert shares["m3"] < 0.05  # the irrelevant source


def test_motif_accuracy_close_to_bayes_optimal(motif_run):
    results, _, truth = motif_run
    assert results.metrics["test"]["accuracy"] >= truth["bayes_accuracy"] - 0.02


def test_no_degree_inflation_with_iterbn(motif_run):
    results, _, _ = motif_run
    assert interaction_share(results.relevance.shares) < 0.1


def test_degree_inflation_contrast_interaction_share_larger_without_normalisation(tmp_path):
    """Same data, seed and training (one attempt), no true interaction: without IterBN+vBN the
    interaction blocks take a clearly larger β share than with them (small data; measured 0.38
    against 0.15 with λ = 0.01 and dropout, 0.40 against 0.09 with the earlier λ = 0.05 and no
    dropout)."""
    task = synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=1500, seed=0), seed=0)
    share = {}
    for on in (True, False):
        config = TrainConfig(seed=0, epochs=10, iterbn=on, vbn=on, restarts=0)
        with warnings.catch_warnings():  # 10 epochs may stop short of convergence: fine here
            warnings.simplefilter("ignore", NotConverged)
            result = fit(task, config, tmp_path / str(on), progress=False)
        share[on] = interaction_share(result.relevance.shares)
    assert share[True] < 0.2
    assert share[False] > 2 * share[True] and share[False] - share[True] > 0.15


def test_missing_modalities_degrade_gracefully(motif_run):
    results, out, _ = motif_run
    missing = {k: v["accuracy"] for k, v in results.missing_modalities.items()}
    assert set(missing) == {"none", "m0", "m1", "m2", "m3"} | {
        f"m{i}*m{j}" for i in range(4) for j in range(i + 1, 4)
    }
    assert abs(missing["m3"] - missing["none"]) < 0.01  # the irrelevant source
    # Without m0 the Bayes-optimal accuracy is 1 - 0.5 * 0.4 * 0.7 = 0.86: close, not chance.
    assert 0.8 < missing["m0"] < missing["none"] - 0.05


def test_modality_dropout_rejected_for_baselines():
    with pytest.raises(ValueError, match="missing-modality path"):
        TrainConfig(model="late", modality_dropout=0.2)


def test_run_folder_contents(motif_run):
    results, out, _ = motif_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["relevance"]["shares"] == pytest.approx(results.relevance.shares)
    assert set(on_disk) >= {"schema", "relevance", "metrics", "ground_truth", "config", "data"}
    assert set(on_disk["metrics"]) >= {"val", "test"}
    for name in ("history.csv", "config.json", "best.safetensors", "last.safetensors"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "history.csv").read_text().splitlines()[0]
    assert "share:m0*m1" in header and "val_loss" in header
    # The best checkpoint rebuilds the model the results were computed with.
    _, meta, _ = load_checkpoint(out / "best.safetensors")
    assert meta["state"]["best_epoch"] == results.best_epoch


def test_refuses_to_overwrite_a_finished_run(motif_run):
    _, out, _ = motif_run
    data = make_motif_data([0.5, 0.0], n=200, seed=0)
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(synthetic_task(data), TrainConfig(epochs=1), out, progress=False)


@pytest.fixture(scope="module")
def xor_task(xor_demo_run):
    return xor_demo_run[0]


def test_xor_interaction_dominates(xor_demo_run):
    results = xor_demo_run[1]
    shares = results.relevance.shares
    assert max(shares, key=shares.get) == "m0*m1"
    assert results.metrics["test"]["accuracy"] > 0.9


def test_xor_needs_interactions(xor_task, tmp_path):
    config = TrainConfig(seed=0, interactions="none", epochs=8)
    results = fit(xor_task, config, tmp_path, progress=False)
    assert results.metrics["test"]["accuracy"] < 0.6  # chance is 0.5


@pytest.mark.parametrize("attempt", [1, 2], ids=["restart", "fine-tune"])
def test_run_interrupted_during_a_restart_resumes_to_the_uninterrupted_run(tmp_path, attempt):
    """Modality dropout draws from (seed, epoch, batch): the restart of an uninterrupted run (whose
    trainer's epoch counter goes on across attempts) must use the run's epoch, as the new trainer
    of a resumed run does; it used to count the epochs before the restart twice. A run cut in
    the fine-tune (attempt 2: dropout back on, from the restart's best model) resumes as one."""

    class InterruptRestart(pl.Callback):  # SIGINT in the restart's 2nd / the fine-tune's 1st epoch
        def on_train_batch_start(self, trainer, *args):
            recorder = next(c for c in trainer.callbacks if isinstance(c, RunRecorder))
            state = recorder.run.state
            if state.attempt == attempt and state.epoch == state.attempt_start + 2 - attempt:
                os.kill(os.getpid(), signal.SIGINT)

    task = synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=1000, seed=0), seed=0)
    config = TrainConfig(
        seed=0, epochs=4, patience=1, lr=1e-9, restarts=1, restart_lr=1e-2, modality_dropout=0.3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(task, config, tmp_path / "straight", progress=False, log=lambda line: None)
        with pytest.raises(TrainingInterrupted):
            fit(
                task,
                config,
                tmp_path / "cut",
                progress=False,
                log=lambda line: None,
                callbacks=[InterruptRestart()],
            )
        fit(task, config, tmp_path / "cut", resume=True, progress=False, log=lambda line: None)
    a, meta_a, _ = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    b, meta_b, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert meta_a["state"]["attempt"] == meta_b["state"]["attempt"] == 2  # the fine-tune ran
    assert meta_b["state"]["finetuning"]
    assert meta_a["state"]["best_epoch"] == meta_b["state"]["best_epoch"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dropout_finetune_may_change_on_resume(tmp_path):
    """Turned on when a finished run (its restart selected) is resumed, the fine-tune runs; turned
    off when a run cut in its fine-tune is resumed, the run stops there."""
    task = synthetic_task(make_motif_data([0.9, 0.6, 0.0], n=600, seed=0), seed=0)
    config = TrainConfig(seed=0, epochs=2, lr=1e-9, restarts=1, dropout_finetune=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = fit(task, config, tmp_path / "a", progress=False, log=lambda line: None)
        assert (off.attempts, off.selected_attempt) == (2, "restart 1")
        on = dataclasses.replace(config, dropout_finetune=True)
        later = fit(task, on, tmp_path / "a", resume=True, progress=False, log=lambda line: None)
        assert later.attempts == 3 and later.epochs_run > off.epochs_run

        class InterruptFinetune(pl.Callback):  # SIGINT in the fine-tune's first epoch
            def on_train_batch_start(self, trainer, *args):
                recorder = next(c for c in trainer.callbacks if isinstance(c, RunRecorder))
                if recorder.run.state.finetuning:
                    os.kill(os.getpid(), signal.SIGINT)

        with pytest.raises(TrainingInterrupted):
            fit(task, on, tmp_path / "b", progress=False, callbacks=[InterruptFinetune()])
        stopped = fit(task, config, tmp_path / "b", resume=True, progress=False)
    assert stopped.attempts == 3 and stopped.epochs_run == off.epochs_run
    assert stopped.selected_attempt == "restart 1"


@pytest.mark.parametrize("modality_dropout", [0.0, 0.3])
def test_resumed_run_matches_uninterrupted_run(tmp_path, modality_dropout):
    task = synthetic_task(make_motif_data([0.9, 0.0], n=600, seed=1), seed=1)
    config = TrainConfig(
        epochs=4,
        patience=10,
        seed=1,
        batch_size=64,
        modality_dropout=modality_dropout,
        restarts=0,  # exact resume of one attempt (a run cut at 2 epochs may restart)
    )
    straight = tmp_path / "straight"
    fit(task, config, straight, progress=False)
    # "Kill" after two epochs: train a run limited to 2 epochs, then resume it with 4.
    interrupted = tmp_path / "interrupted"
    fit(
        task,
        config.replace(epochs=2),
        interrupted,
        progress=False,
    )
    fit(task, config, interrupted, resume=True, progress=False)
    for name in ("last.safetensors", "best.safetensors"):
        a, meta_a, _ = load_checkpoint(straight / name)
        b, meta_b, _ = load_checkpoint(interrupted / name)
        assert meta_a["state"]["best_epoch"] == meta_b["state"]["best_epoch"]
        assert meta_b["state"]["epoch"] == 4
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_fit_documents_every_setting_that_may_change_on_resume():
    """``fit``'s ``resume`` doc named ``epochs`` as the only setting that may change, while
    ``compile`` and ``dropout_finetune`` may too (``RESUMABLE_CHANGES``)."""
    from interfuse.train.config import RESUMABLE_CHANGES

    doc = " ".join(fit.__doc__.split())
    resume = doc[doc.index("resume:") : doc.index("overwrite:")]
    assert all(f"``{name}``" in resume for name in RESUMABLE_CHANGES), resume


def test_an_earlier_attempt_that_ran_out_of_epochs_is_not_converged():
    """The selected model came from the last epoch of the first attempt (it ran out of epochs
    while improving) and a worse restart followed: the run is not converged, although its best
    epoch is not the run's last — the warning names the attempt."""
    from interfuse.results import RunResult
    from interfuse.train.runner import TrainingState, _selected_attempt_end

    history = [{"epoch": e, "val_loss": 1.0 / e} for e in range(1, 5)]  # first: best at 4, its last
    history += [{"epoch": e, "attempt": 1, "val_loss": 1.0} for e in range(5, 8)]
    state = TrainingState(epoch=7, best_epoch=4, history=history, attempt=1, stopped_early=True)
    assert _selected_attempt_end(state) == 4
    state_later = dataclasses.replace(state, best_epoch=5)  # the restart's first epoch
    assert _selected_attempt_end(state_later) == 7

    result = RunResult(
        dataset="d",
        task="classification",
        model={},
        config={},
        metrics={},
        relevance=None,
        best_epoch=4,
        epochs_run=7,
        stopped_early=True,
        train_seconds=0.0,
        attempts=2,
        selected_attempt="first",
        selected_attempt_end=4,
    )
    assert not result.converged
    assert str(NotConverged(result)) == (
        "the best validation loss came in the last epoch of the first attempt (epoch 4; the "
        "run trained 7): that attempt may not have converged; train longer (a larger --epochs)"
    )
    assert dataclasses.replace(result, best_epoch=3).converged


class _Strategy:
    """What rank 0 broadcasts, as a rank other than 0 receives it."""

    def __init__(self, sent: object) -> None:
        self.sent = sent

    def broadcast(self, value: object, src: int = 0) -> object:
        return self.sent


class _OtherRank:
    world_size = 2
    is_global_zero = False

    def __init__(self, sent: object) -> None:
        self.strategy = _Strategy(sent)


@pytest.mark.parametrize(
    ("sent", "error", "message"),
    [
        ((None, "CheckpointError", "best is corrupt"), CheckpointError, "^best is corrupt$"),
        ((None, "OSError", "disk full"), OSError, "^disk full$"),
        ((None, None, "boom"), RuntimeError, "^rank 0 failed to validate: boom$"),
    ],
)
def test_a_rank_0_failure_is_raised_on_every_rank(sent, error, message):
    """A rank other than 0 raises rank 0's failure (same type where the command line's exit
    status depends on it) instead of returning or waiting; rank 0's value reaches it."""
    with pytest.raises(error, match=message):
        on_rank_zero(_OtherRank(sent), lambda: pytest.fail("computed on rank 1"), "validate")
    assert on_rank_zero(_OtherRank((7, None, None)), lambda: 0, "validate") == 7
