"""``fit``: train a model on a :class:`TaskData` into a run folder, resumably.

The run folder's format is described in :mod:`interfuse.run` (and ``docs/run-folder.md``).
Model selection and early stopping use the validation split only. ``fit`` returns a typed
:class:`~interfuse.results.RunResult` and writes ``results.json`` and ``history.csv``; rendering
a report from it is the caller's choice (:func:`interfuse.report.render_report`, as
``interfuse train`` does).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from ..budget import (
    MAX_TERMS,
    MemoryEstimate,
    ResourceBudgetError,
    check_budget,
    count_terms,
    fusion_memory,
)
from ..checkpoint import CheckpointError, load_checkpoint
from ..data.batching import batch_loader
from ..data.preprocess import Preprocessor
from ..data.task import TaskData
from ..explain.ablation import modality_ablation
from ..explain.removal import ModalityRemoval
from ..inference import evaluate
from ..io import atomic_write_text, remove_stale_temporaries
from ..models import ModelSpec, build_model, model_entry, model_spec
from ..results import Relevance, RunResult
from ..run import (
    BEST,
    CONFIG,
    HISTORY,
    LAST,
    RESULTS,
    RunFolderError,
    lock_run_folder,
    save_run_checkpoint,
)
from .config import RESUMABLE_CHANGES, TrainConfig
from .interrupt import InterruptFlag, TrainingInterrupted, catch_interrupts
from .module import FusionModule

__all__ = [
    "RunFolderError",
    "TrainingDiverged",
    "TrainingState",
    "fit",
    "missing_modality_metrics",
    "prepare_run_folder",
]

RESULT_FILES = (RESULTS, LAST, BEST)
log = logging.getLogger("interfuse")


def prepare_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Create/check ``out_dir``; never silently replace a previous run.

    A folder whose first checkpoint never completed (killed during the first epoch or while
    writing ``last.safetensors`` for the first time: no ``last.safetensors``, no
    ``results.json``) holds nothing to keep; it is treated as empty, saying so, with or without
    ``--resume``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(
            f"cannot create output folder {out}: {error.strerror} "
            f"[{errno.errorcode.get(error.errno or 0, '?')}]"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"output folder {out} is not writable")
    has_last = (out / LAST).exists()
    incomplete = not has_last and not (out / RESULTS).exists()
    started = (out / CONFIG).exists() or (out / BEST).exists()
    if incomplete and started and not overwrite:
        log.info(f"{out} holds a run whose first checkpoint never completed; starting it afresh")
        return out
    if resume:
        if not has_last:
            raise RunFolderError(f"nothing to resume: {out / LAST} does not exist")
    elif not overwrite and any((out / f).exists() for f in RESULT_FILES):
        raise RunFolderError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    return out


def _resumes(out: Path, resume: bool) -> bool:
    """Whether ``fit`` continues from ``last.safetensors`` (not for a never-checkpointed run)."""
    return resume and (out / LAST).exists()


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite; nothing after the last complete epoch is kept.

    ``exit_code`` 5 on the command line.
    """

    exit_code = 5

    def __init__(self, message: str, step: int, loss: float) -> None:
        super().__init__(message)
        self.step = step
        self.loss = loss


@dataclass
class TrainingState:
    """Where training stands (stored in every checkpoint, so a resumed run continues exactly)."""

    epoch: int = 0
    best_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingState:
        return cls(**dict(values))


class RunRecorder(pl.Callback):
    """After every epoch: validate, log relevance, checkpoint, select the best model, stop early."""

    def __init__(self, run: _Run, interrupted: InterruptFlag) -> None:
        self.run = run
        self.interrupted = interrupted

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run.optimizer_state is not None:
            trainer.optimizers[0].load_state_dict(self.run.optimizer_state)
            self.run.optimizer_state = None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any
    ) -> None:
        """Stop at the first non-finite loss, before it reaches the weights."""
        value = float(loss.detach())
        if math.isfinite(value):
            return
        run = self.run
        step = trainer.global_step + 1
        epoch = run.state.epoch + 1
        last = run.out / LAST
        if last.exists():
            keep = (
                f"{last} (epoch {run.state.epoch}) is the last good checkpoint; continue it "
                f"with --resume, or start again with a lower --lr and --overwrite"
            )
        else:
            keep = "No epoch completed, so nothing was saved; rerun with a lower --lr"
        raise TrainingDiverged(
            f"training diverged: the loss is {value} at step {step} (epoch {epoch}); the "
            f"learning rate {run.config.lr:g} is likely too high (or the data holds extreme "
            f"values). {keep}",
            step,
            value,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.interrupted:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interrupted:
            return  # a partial epoch: last.safetensors keeps the last complete one
        run, state = self.run, self.run.state
        state.epoch += 1
        train_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")
        }
        val = evaluate(run.model, run.data.val, run.data.task, metric_set=run.data.metrics)
        relevance = run.relevance()
        row = {"epoch": state.epoch, **train_metrics}
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({f"share:{t}": s for t, s in (relevance.shares if relevance else {}).items()})
        state.history.append(row)
        if not math.isfinite(val["loss"]):
            raise TrainingDiverged(
                f"training diverged: the validation loss is {val['loss']} after epoch "
                f"{state.epoch} (step {trainer.global_step}); the learning rate "
                f"{run.config.lr:g} is likely too high (or the data holds extreme values). "
                + (
                    f"{run.out / LAST} (epoch {state.epoch - 1}) is the last good checkpoint"
                    if (run.out / LAST).exists()
                    else "No epoch completed, so nothing was saved; rerun with a lower --lr"
                ),
                trainer.global_step,
                val["loss"],
            )
        for key in ("loss", "accuracy"):
            if key in val:
                pl_module.log(f"val_{key}", val[key], prog_bar=True)

        if val["loss"] < state.best_loss:
            state.best_loss, state.best_epoch, state.bad_epochs = val["loss"], state.epoch, 0
            run.save(BEST)
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= run.config.patience:
            state.stopped_early = True
            trainer.should_stop = True
        run.save(LAST, optimizer=trainer.optimizers[0])
        run.write_history()


class _Run:
    """Mutable state of one training run and the files it owns."""

    def __init__(
        self,
        data: TaskData,
        config: TrainConfig,
        spec: ModelSpec,
        out: Path,
        resume: bool,
        encoders: Mapping[str, nn.Module],
    ) -> None:
        self.data = data
        self.config = config
        self.out = out
        self.spec = spec
        self.entry = model_entry(spec)
        self.preprocessor: Preprocessor = data.fitted_preprocessor()
        self.provenance = {
            "name": data.name,
            "source": data.source,
            "fingerprint": data.fingerprint(),
            "split_sizes": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
            "metrics": data.metrics,
            "info": data.info,
        }
        self.optimizer_state: dict[str, Any] | None = None
        self.state = TrainingState()
        if resume:
            model_state, header, self.optimizer_state = load_checkpoint(out / LAST)
            self._check_resumable(header)
            self.model = build_model(spec, encoders=encoders)
            self.model.load_state_dict(model_state)
            self.state = TrainingState.from_dict(header["state"])
        else:
            self.model = build_model(spec, seed=config.seed, encoders=encoders)
            atomic_write_text(out / CONFIG, json.dumps(self.header(), indent=2, default=str) + "\n")

    def _check_resumable(self, header: Mapping[str, Any]) -> None:
        """Refuse to continue a run with other data, another model or other settings."""
        last = self.out / LAST
        saved_spec = header.get("spec")
        if saved_spec != self.spec.to_dict():
            saved = saved_spec or {}
            now = self.spec.to_dict()
            differs = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(
                f"{last} was written for a different model or data: {', '.join(differs)} differ "
                f"(checkpoint modalities {saved.get('modalities')}, now {now['modalities']}); "
                f"resume with the same dataset and options"
            )
        saved_data = header.get("data") or {}
        if saved_data.get("fingerprint") != self.provenance["fingerprint"]:
            what = [
                k
                for k in ("source", "split_sizes")
                if saved_data.get(k) != json.loads(json.dumps(self.provenance[k], default=str))
            ]
            raise CheckpointError(
                f"{last} was trained on other data: the data fingerprint differs"
                + (f" ({', '.join(what)} differ)" if what else " (same shapes, other values)")
                + "; a different file, data seed or split would mix training and test samples. "
                "Resume with the same data and --data-seed, or start a new run"
            )
        saved_config = TrainConfig.from_dict(header.get("config") or {})
        changed = [k for k in self.config.differences(saved_config) if k not in RESUMABLE_CHANGES]
        if changed:
            old = saved_config.to_dict()
            new = self.config.to_dict()
            detail = ", ".join(f"{k} {old[k]!r} → {new[k]!r}" for k in changed)
            raise CheckpointError(
                f"{last}: cannot resume with other training settings ({detail}); only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change on resume"
            )

    def header(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "data": self.provenance,
            "task": {
                "kind": self.data.task,
                "num_classes": self.data.num_classes,
                "class_names": self.data.class_names,
            },
        }

    def relevance(self) -> Relevance | None:
        return self.model.relevance() if self.entry.relevance else None

    def save(self, name: str, optimizer: Any = None) -> None:
        header = {**self.header(), "state": asdict(self.state)}
        state = optimizer.state_dict() if optimizer is not None else None
        save_run_checkpoint(
            self.out / name, self.model, self.spec, self.preprocessor, header, state
        )

    def write_history(self) -> None:
        rows = self.state.history
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / HISTORY, buffer.getvalue())


def fit(
    data: TaskData,
    config: TrainConfig | None = None,
    out_dir: str | Path = "runs/run",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    encoders: Mapping[str, nn.Module | Mapping[str, Any]] | None = None,
) -> RunResult:
    """Train, select the best epoch on validation, evaluate, and write the run folder.

    Args:
        data: the task (splits, encoders, preprocessing, dataset defaults).
        config: training settings; fields not set explicitly take ``data.train_defaults``.
        out_dir: the run folder (created; locked while training).
        resume: continue the run in ``out_dir`` from ``last.safetensors``; refused when the
            data, the model or any setting other than ``epochs`` differs.
        overwrite: replace a finished run in ``out_dir``.
        encoders: per modality, an ``nn.Module`` or an encoder spec replacing ``data.encoders``
            (a module not registered by name must be passed again to :func:`interfuse.load_run`).

    Returns the :class:`RunResult` also written to ``results.json``.
    """
    config = (config or TrainConfig()).with_defaults(data.train_defaults)
    given = dict(encoders or {})
    unknown = sorted(set(given) - set(data.modalities))
    if unknown:
        raise ValueError(
            f"encoders given for unknown modalities {unknown}; data has {data.modalities}"
        )
    modules = {m: e for m, e in given.items() if isinstance(e, nn.Module)}
    specs = {m: given.get(m, data.encoders[m]) for m in data.modalities}
    shapes = {m: list(x.shape[1:]) for m, x in data.train.inputs.items()}
    check_training_budget(config, specs, data.num_outputs)
    spec = model_spec(config.model, specs, config, data.num_outputs, input_shapes=shapes)
    check_model_budget(spec, config.batch_size, modules)
    out = prepare_run_folder(out_dir, resume, overwrite)
    with lock_run_folder(out):
        removed = remove_stale_temporaries(out)
        if removed:
            log.info(f"removed {len(removed)} unfinished temporary file(s) from {out}")
        if not _resumes(out, resume):
            for stale in (LAST, BEST, RESULTS):  # of a half-started or an overwritten run
                (out / stale).unlink(missing_ok=True)
        run = _Run(data, config, spec, out, _resumes(out, resume), modules)
        _train(run, progress)
        return finish(run)


def _embedding_dim(encoder: nn.Module | Mapping[str, Any]) -> int:
    if isinstance(encoder, nn.Module):
        return int(getattr(encoder, "output_dim", 0) or 0)
    return int(encoder.get("output_dim", 32) or 0)


def check_training_budget(
    config: TrainConfig, encoders: Mapping[str, nn.Module | Mapping[str, Any]], num_outputs: int
) -> None:
    """Refuse an MNL model whose interaction terms cannot fit in memory, before enumerating
    its terms or allocating anything (see :mod:`interfuse.budget`)."""
    if not model_entry(config.model).relevance:
        return
    m = len(encoders)
    spec = config.interactions if config.model != "mnl" else "none"
    orders = count_terms(spec, m)
    if orders is None:
        return
    terms = sum(orders.values())
    if terms > MAX_TERMS:
        raise ResourceBudgetError(
            f"--interactions {spec}: {terms} interaction terms for {m} modalities (at most "
            f"{MAX_TERMS}); lower --interactions (a maximal order such as 2 or 3, or a list)"
        )
    explicit = None
    if isinstance(spec, (list, tuple)):
        explicit = [t.split("*") if isinstance(t, str) else list(t) for t in spec]
    estimate = fusion_memory(
        orders,
        m,
        config.rank,
        config.batch_size,
        num_outputs,
        [_embedding_dim(e) for e in encoders.values()],
        explicit,
    )
    highest = max(orders, default=1)
    check_budget(
        estimate,
        f"training {config.model} with {m} modalities, {terms} interaction terms up to order "
        f"{highest} and rank {config.rank} (blocks of up to {config.rank}^{highest} "
        f"coordinates), batch size {config.batch_size},",
        "--rank, --interactions (a lower order) or --batch-size",
    )


def check_model_budget(spec: ModelSpec, batch_size: int, encoders: Mapping[str, nn.Module]) -> None:
    """Count the model's parameters and buffers on the meta device (no memory) and refuse a
    model whose training state alone cannot fit."""
    skeleton = build_model(spec, device="meta", encoders=encoders or None)
    given = {id(p) for e in encoders.values() for p in e.parameters()}
    parameters = sum(p.numel() for p in skeleton.parameters() if id(p) not in given)
    buffers = sum(b.numel() for b in skeleton.buffers())
    check_budget(
        MemoryEstimate(parameters * 4 * 4, buffers * 4, 0),
        f"training {spec.model} ({parameters:,} parameters, batch size {batch_size})",
        "--rank, --interactions or the encoder sizes",
    )


def _train(run: _Run, progress: bool) -> None:
    config = run.config
    remaining = config.epochs - run.state.epoch
    if remaining <= 0 or run.state.stopped_early:
        return
    module = FusionModule(
        run.model,
        run.data.task,
        config.lam,
        config.lr,
        config.weight_decay,
        modality_dropout=config.modality_dropout,
        seed=config.seed,
        epoch_offset=run.state.epoch,
        regularize=run.entry.relevance,
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
        run.data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        start_epoch=run.state.epoch,
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
        raise TrainingInterrupted(interrupted.signum, run.state.epoch, str(run.out / LAST))
    run.state.train_seconds += time.perf_counter() - started
    run.save(LAST, optimizer=trainer.optimizers[0])  # keeps the accumulated time


def finish(run: _Run) -> RunResult:
    """Reload the best model, evaluate it on every split, write results.json and history.csv."""
    best_state, _, _ = load_checkpoint(run.out / BEST)
    run.model.load_state_dict(best_state)
    data = run.data
    result = RunResult(
        dataset=data.name,
        task=data.task,
        model=run.spec.to_dict(),
        config=run.config.to_dict(),
        metrics={
            split: evaluate(run.model, getattr(data, split), data.task, metric_set=data.metrics)
            for split in ("train", "val", "test")
        },
        relevance=run.relevance(),
        best_epoch=run.state.best_epoch,
        epochs_run=run.state.epoch,
        stopped_early=run.state.stopped_early,
        train_seconds=round(run.state.train_seconds, 2),
        missing_modalities=missing_modality_metrics(run.model, data) if run.entry.masks else None,
        ground_truth=data.ground_truth,
        class_names=data.class_names,
        data=run.provenance,
    )
    atomic_write_text(run.out / RESULTS, result.to_json())
    run.write_history()
    return result


def missing_modality_metrics(
    model: nn.Module, data: TaskData, max_order: int = 2
) -> dict[str, dict[str, float]] | None:
    """Test metrics with no modality missing (``"none"``) and with each set of up to
    ``max_order`` modalities missing for every sample, through the model's own missing-modality
    path; ``None`` with fewer than two modalities."""
    if len(data.modalities) < 2:
        return None
    removal = ModalityRemoval(model, method="mask")
    order = min(max_order, len(data.modalities) - 1)  # keep at least one modality
    ablation = modality_ablation(removal, data.test, data.task, order, data.metrics)
    return {"none": ablation.full, **ablation.removed}
