"""``fit``: train a model on a :class:`TaskData` into a run folder, resumably.

A run folder holds ``config.json`` (model description + hyperparameters), ``last.safetensors``
(written after every epoch: model, optimiser, early-stopping state, history), ``best.safetensors``
(the model with the best validation loss so far), and at the end ``results.json``,
``history.csv`` and the report. Model selection and early stopping use the validation split only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from ..data.batching import batch_loader
from ..data.task import TaskData
from ..io import atomic_write_text
from ..model import MultimodalModel
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, build_model, model_description
from .interrupt import InterruptFlag, TrainingInterrupted, catch_interrupts
from .metrics import evaluate
from .module import FusionModule

LAST = "last.safetensors"
BEST = "best.safetensors"
RESULT_FILES = ("results.json", LAST, BEST)


class RunFolderError(ValueError):
    """The output folder cannot be used: holds a run already, not writable, nothing to resume."""


def prepare_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Create/check ``out_dir``; never silently replace a previous run."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create output folder {out}: {error.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"output folder {out} is not writable")
    if resume:
        if not (out / LAST).exists():
            raise RunFolderError(f"nothing to resume: {out / LAST} does not exist")
    elif not overwrite and any((out / f).exists() for f in RESULT_FILES):
        raise RunFolderError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    return out


class RunRecorder(pl.Callback):
    """After every epoch: validate, log relevance, checkpoint, select the best model, stop early."""

    def __init__(self, run: _Run, interrupted: InterruptFlag) -> None:
        self.run = run
        self.interrupted = interrupted

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run.optimizer_state is not None:
            trainer.optimizers[0].load_state_dict(self.run.optimizer_state)
            self.run.optimizer_state = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.interrupted:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interrupted:
            return  # a partial epoch: last.safetensors keeps the last complete one
        run = self.run
        run.state["epoch"] += 1
        train_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")
        }
        val = evaluate(run.model, run.data.val, run.data.task, metric_set=run.data.metrics)
        shares = run.model.relevance().shares if hasattr(run.model, "relevance") else {}
        row = {"epoch": run.state["epoch"], **train_metrics}
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({f"share:{t}": s for t, s in shares.items()})
        run.state["history"].append(row)
        for key in ("loss", "accuracy"):
            if key in val:
                pl_module.log(f"val_{key}", val[key], prog_bar=True)

        if val["loss"] < run.state["best_loss"]:
            run.state.update(best_loss=val["loss"], best_epoch=run.state["epoch"], bad_epochs=0)
            run.save(BEST)
        else:
            run.state["bad_epochs"] += 1
        if run.state["bad_epochs"] >= run.config.patience:
            run.state["stopped_early"] = True
            trainer.should_stop = True
        run.save(LAST, optimizer=trainer.optimizers[0])
        run.write_history()


class _Run:
    """Mutable state of one training run and the files it owns."""

    def __init__(
        self,
        data: TaskData,
        config: TrainConfig,
        description: dict[str, Any],
        out: Path,
        resume: bool,
    ) -> None:
        self.data = data
        self.config = config
        self.out = out
        self.description = description
        self.optimizer_state: dict[str, Any] | None = None
        self.state: dict[str, Any] = {
            "epoch": 0,
            "best_loss": float("inf"),
            "best_epoch": 0,
            "bad_epochs": 0,
            "stopped_early": False,
            "history": [],
            "train_seconds": 0.0,
        }
        if resume:
            model_state, header, self.optimizer_state = load_checkpoint(out / LAST)
            saved = header.get("model") or {}
            if saved != self.description:
                differs = sorted(
                    k
                    for k in set(saved) | set(self.description)
                    if saved.get(k) != self.description.get(k)
                )
                raise CheckpointError(
                    f"{out / LAST} was written for a different model or data: "
                    f"{', '.join(differs)} differ (checkpoint modalities "
                    f"{saved.get('modalities')}, now {self.description['modalities']}); "
                    f"resume with the same dataset and options"
                )
            self.model: MultimodalModel | nn.Module = build_model(self.description)
            self.model.load_state_dict(model_state)
            self.state.update(header["state"])
        else:
            self.model = build_model(self.description, seed=config.seed)
            atomic_write_text(
                out / "config.json",
                json.dumps(self.header(), indent=2, default=str) + "\n",
            )

    def header(self) -> dict[str, Any]:
        return {
            "model": self.description,
            "train": self.config.to_dict(),
            "task": {
                "name": self.data.name,
                "kind": self.data.task,
                "num_classes": self.data.num_classes,
            },
        }

    def save(self, name: str, optimizer: Any = None) -> None:
        header = {**self.header(), "state": self.state}
        state = optimizer.state_dict() if optimizer is not None else None
        save_checkpoint(self.out / name, self.model.state_dict(), header, state)

    def write_history(self) -> None:
        rows = self.state["history"]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "history.csv", buffer.getvalue())


def fit(
    data: TaskData,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Train, select the best epoch on validation, evaluate, and write the run folder.

    Returns the content of ``results.json``.
    """
    shapes = {m: list(x.shape[1:]) for m, x in data.train.inputs.items()}
    description = model_description(  # validates first
        data.encoders, config, data.num_outputs, input_shapes=shapes
    )
    out = prepare_run_folder(out_dir, resume, overwrite)
    run = _Run(data, config, description, out, resume)
    remaining = config.epochs - run.state["epoch"]
    if remaining > 0 and not run.state["stopped_early"]:
        module = FusionModule(
            run.model,
            data.task,
            config.lam,
            config.lr,
            config.weight_decay,
            modality_dropout=config.modality_dropout,
            seed=config.seed,
            epoch_offset=run.state["epoch"],
        )
        interrupted = InterruptFlag()
        trainer = pl.Trainer(
            max_epochs=remaining,
            accelerator="auto",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            gradient_clip_val=config.max_grad_norm,
            callbacks=[RunRecorder(run, interrupted)],
        )
        loader = batch_loader(
            data.train,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            start_epoch=run.state["epoch"],
        )
        started = time.perf_counter()
        with warnings.catch_warnings(), catch_interrupts(interrupted):
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
            try:
                trainer.fit(module, train_dataloaders=loader)
            except SIGTERMException:
                pass  # Lightning's reaction to the SIGTERM that `interrupted` recorded
        if interrupted:
            raise TrainingInterrupted(interrupted.signum, run.state["epoch"], str(out / LAST))
        run.state["train_seconds"] += time.perf_counter() - started
        run.save(LAST, optimizer=trainer.optimizers[0])  # keeps the accumulated time
    return finish(run, report)


def finish(run: _Run, report: bool = True) -> dict[str, Any]:
    """Reload the best model, evaluate it on validation and test, write results and report."""
    best_state, _, _ = load_checkpoint(run.out / BEST)
    run.model.load_state_dict(best_state)
    relevance = run.model.relevance() if hasattr(run.model, "relevance") else None
    results: dict[str, Any] = {
        # baselines have no built-in relevance: null (see `interfuse explain` for post-hoc ones)
        "relevance": relevance.shares if relevance is not None else None,
        "relevance_beta": relevance.beta if relevance is not None else None,
        "p": relevance.p if relevance is not None else None,
        "metrics": {
            split: evaluate(
                run.model, getattr(run.data, split), run.data.task, metric_set=run.data.metrics
            )
            for split in ("train", "val", "test")
        },
        "best_epoch": run.state["best_epoch"],
        "epochs_run": run.state["epoch"],
        "stopped_early": run.state["stopped_early"],
        "train_seconds": round(run.state["train_seconds"], 2),
        "config": {"dataset": run.data.name, **run.config.to_dict(), **run.data.info},
        "model": run.description,
    }
    missing = missing_modality_metrics(run.model, run.data)
    if missing is not None:
        results["missing_modalities"] = missing
    if run.data.ground_truth is not None:
        results["ground_truth"] = run.data.ground_truth
    atomic_write_text(run.out / "results.json", json.dumps(results, indent=2) + "\n")
    run.write_history()
    if report:
        from ..explain.report import render_report

        render_report(run.out)
    return results


def missing_modality_metrics(
    model: nn.Module, data: TaskData, max_order: int = 2
) -> dict[str, dict[str, float]] | None:
    """Test metrics with no modality missing (``"none"``) and with each set of up to
    ``max_order`` modalities missing for every sample, through the model's own missing-modality
    path; ``None`` for models without one (the baselines)."""
    from ..explain.ablation import modality_ablation
    from ..explain.removal import ModalityRemoval, supports_masks

    if not supports_masks(model) or len(data.modalities) < 2:
        return None
    removal = ModalityRemoval(model, method="mask")
    order = min(max_order, len(data.modalities) - 1)  # keep at least one modality
    ablation = modality_ablation(removal, data.test, data.task, order, data.metrics)
    return {"none": ablation.full, **ablation.removed}
