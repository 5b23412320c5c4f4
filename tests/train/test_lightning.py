"""The Lightning module in a user's own loop; fit with loggers and callbacks; output for logs."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.loggers import CSVLogger

from interfuse.data import batch_loader, make_motif_data, synthetic_task
from interfuse.models import build_model, model_spec
from interfuse.run import read_history
from interfuse.train import FusionModule, NotConverged, TrainConfig, fit


@pytest.fixture(scope="module")
def task():
    return synthetic_task(make_motif_data([0.9, 0.0], n=600, length=40, seed=0), seed=0)


def read_csv_log(folder: Path) -> list[dict[str, str]]:
    [metrics] = folder.rglob("metrics.csv")
    return list(csv.DictReader(metrics.open()))


def test_a_users_own_trainer_early_stopping_and_csv_logger(task, tmp_path):
    model = build_model(model_spec("intense", task.encoders, TrainConfig(), 2), seed=0)
    module = FusionModule(model, task.task)
    stopper = EarlyStopping("val_loss", patience=2)
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[stopper],
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        module,
        batch_loader(task.train, 64, shuffle=True),
        batch_loader(task.val, 512, shuffle=False),
    )
    assert stopper.best_score is not None  # EarlyStopping saw val_loss
    rows = [r for r in read_csv_log(tmp_path) if r.get("val_loss")]
    assert len(rows) == trainer.current_epoch  # one validation row per epoch
    for row in rows:
        shares = [float(row[f"share/{t}"]) for t in ("m0", "m1", "m0*m1")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= float(row["val_accuracy"]) <= 1
    (result,) = trainer.test(module, batch_loader(task.test, 512, shuffle=False), verbose=False)
    assert {"test_loss", "test_accuracy", "test_auroc"} <= set(result)
    predictions = trainer.predict(module, batch_loader(task.test, 512, shuffle=False))
    assert torch.cat(predictions).shape == (len(task.test), 2)


def test_fit_sends_metrics_and_shares_to_loggers_and_runs_callbacks(task, tmp_path):
    class Count(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, pl_module):
            Count.epochs += 1

    config = TrainConfig(epochs=3, patience=10, seed=0, restarts=0)
    before = torch.get_num_threads()
    fit(
        task,
        config,
        tmp_path / "run",
        progress=False,
        log=lambda line: None,
        loggers=CSVLogger(tmp_path / "logs"),
        callbacks=[Count()],
        threads=1,
    )
    assert torch.get_num_threads() == before  # restored after training
    assert Count.epochs == 3
    rows = [r for r in read_csv_log(tmp_path / "logs") if r.get("share/m0")]
    assert len(rows) == 3 and all(r.get("val_macro_f1") for r in rows)


def test_not_converged_is_a_warning(task, tmp_path):
    with pytest.warns(NotConverged, match="may not have converged"):
        result = fit(task, TrainConfig(epochs=1), tmp_path / "one", progress=False, log=print)
    assert not result.converged


def test_a_log_file_gets_one_line_per_epoch(tmp_path):
    """stdout redirected to a file (not a terminal): no progress bar, small, one line per epoch."""
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    with log.open("w") as f:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "interfuse",
                "train",
                "--probs",
                "0.9,0",
                "--n",
                "300",
                "--length",
                "30",
                "--epochs",
                "20",
                "--patience",
                "30",
                "--restarts",
                "0",
                "--threads",
                "1",
                "--out",
                str(out),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
            timeout=300,
            check=False,
        )
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert log.stat().st_size < 5000, text
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 20 and "\r" not in text
    assert "Tip" not in text and "GPU available" not in text  # Lightning's chatter is off


def test_fused_adamw_is_the_per_tensor_update(task):
    """``configure_optimizers`` uses the fused AdamW kernel: the same update as the default
    per-tensor loop (to float rounding), with the head's blocks free of weight decay."""
    config = TrainConfig(seed=3)
    model = build_model(model_spec("mnl", task.encoders, config, task.num_outputs), seed=3)
    twin = build_model(model_spec("mnl", task.encoders, config, task.num_outputs), seed=3)
    fused = FusionModule(model, task.task, weight_decay=0.1).configure_optimizers()
    assert fused.defaults["fused"]
    groups = FusionModule(twin, task.task, weight_decay=0.1).configure_optimizers().param_groups
    loop = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups], lr=3e-3
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


class _NoLength(torch.utils.data.IterableDataset):
    """The same batches as a loader, but without ``len``: the module logs every step."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")
@pytest.mark.parametrize("max_steps", [-1, 3], ids=["whole-epochs", "cut-short"])
def test_training_losses_logged_once_per_epoch_equal_per_step_logging(task, max_steps):
    """``train_*`` logged once at the epoch's last batch (or at its end, when ``max_steps``
    cuts it short) are bit-identical to Lightning's per-step ``on_epoch`` accumulation (used
    where the epoch length is unknown)."""

    def train(wrap):
        model = build_model(model_spec("intense", task.encoders, TrainConfig(), 2), seed=0)
        module = FusionModule(model, task.task)
        trainer = pl.Trainer(
            max_epochs=2,
            max_steps=max_steps,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        loader = batch_loader(task.train, 64, shuffle=True, seed=3)
        trainer.fit(module, wrap(loader) if wrap else loader)
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train_")}
        return metrics, model.state_dict()

    once, weights = train(None)
    per_step, weights_per_step = train(
        lambda loader: torch.utils.data.DataLoader(_NoLength(loader), batch_size=None)
    )
    assert list(once) == ["train_regularizer", "train_loss", "train_task_loss"]
    assert list(once) == list(per_step)
    for name in once:
        assert once[name].item() == per_step[name].item(), name
    for name in weights:
        assert torch.equal(weights[name], weights_per_step[name]), name


def test_an_epoch_cut_short_has_its_training_losses_in_the_history(task, tmp_path):
    """max_steps ends the epoch early: the module logs the part's losses in its own epoch-end
    hook, which Lightning calls after fit's recorder; the history row used to lack them."""
    with pytest.warns(NotConverged):
        fit(
            task,
            TrainConfig(epochs=2, batch_size=32, restarts=0),  # 13 batches an epoch
            tmp_path,
            progress=False,
            log=lambda line: None,
            trainer_kwargs={"max_steps": 3},
        )
    [row] = read_history(tmp_path)
    for name in ("train_loss", "train_task_loss", "train_regularizer"):
        assert math.isfinite(row[name]) and row[name] > 0, name


def test_fit_scans_the_training_split_once_and_names_bad_values(task, tmp_path):
    """fit checks the training split for non-finite values before training (not every step):
    the same one-line error as a forward pass on a bad batch."""
    from dataclasses import replace

    from interfuse.data.batching import TensorData

    bad = {m: x.clone() for m, x in task.train.inputs.items()}
    bad["m1"][5, 0, 0] = float("nan")
    data = replace(task, train=TensorData(bad, task.train.targets))
    with pytest.raises(ValueError, match=r"modality 'm1': input has 1 non-finite"):
        fit(data, TrainConfig(epochs=1), tmp_path / "run", progress=False)


def test_modality_dropout_draws_for_any_seed_of_a_run():
    # the step seed (seed · 1_000_003 + epoch) · 1_000_003 + batch overflowed torch's 64-bit
    # seeds from seed ≈ 1.8e7 on (a date such as 20240101; modality dropout is on by default)
    model = torch.nn.Module()
    model.modalities = ["a", "b"]
    for seed in (0, 20240101):
        drops = FusionModule(model, "classification", modality_dropout=0.3, seed=seed)
        masks = drops.dropout_masks(64, 5)
        assert sorted(masks) == ["a", "b"] and all(k.shape == (64,) for k in masks.values())
        assert 0 < sum(int((~k).sum()) for k in masks.values()) < 128
