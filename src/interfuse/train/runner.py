"""``fit``: train a model on a :class:`TaskData` into a run folder, resumably.

The run folder's format is described in :mod:`interfuse.run` (and ``docs/run-folder.md``).
Model selection and early stopping use the validation split only. ``fit`` returns a typed
:class:`~interfuse.results.RunResult` and writes ``results.json`` and ``history.csv``; rendering
a report from it is the caller's choice (:func:`interfuse.report.render_report`, as
``interfuse train`` does).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from safetensors import SafetensorError, safe_open
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
from ..explain.estimators import relevance_estimates
from ..explain.removal import ModalityRemoval
from ..explain.trust import learnt_verdict, relevance_evidence
from ..fusion.norm import set_sync_stats
from ..inference import evaluate
from ..io import atomic_write_text, remove_stale_temporaries
from ..metrics import balanced_weights
from ..model import MultimodalModel
from ..models import MODELS, ModelSpec, build_model, model_entry, model_spec
from ..results import HISTORY_FIGURE, RELEVANCE_FIGURE, REPORT, Relevance, RunResult
from ..run import (
    BEST,
    CONFIG,
    HISTORY,
    LAST,
    RESULTS,
    RUN_YAML,
    RunFolderError,
    lock_run_folder,
    model_digest,
    save_run_checkpoint,
)
from .config import RESUMABLE_CHANGES, TrainConfig
from .interrupt import InterruptFlag, TrainingInterrupted, catch_interrupts, install_handlers
from .module import FusionModule

__all__ = [
    "RunFolderError",
    "TrainingDiverged",
    "TrainingState",
    "fit",
    "is_global_zero",
    "missing_modality_metrics",
    "on_rank_zero",
    "prepare_run_folder",
]

RESULT_FILES = (RESULTS, LAST, BEST)
RUN_FILES = (CONFIG, HISTORY, REPORT, RUN_YAML, RELEVANCE_FIGURE, HISTORY_FIGURE)
"""Files a run writes besides its checkpoints and results (replaced without asking)."""
logger = logging.getLogger("interfuse")
T = TypeVar("T")


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
    if _never_checkpointed(out) and not overwrite:
        logger.info(f"{out} holds a run whose first checkpoint never completed; starting it afresh")
        return out
    refusal = _refusal(out, resume, overwrite)
    if refusal is not None:
        raise RunFolderError(refusal)
    return out


def _never_checkpointed(out: Path) -> bool:
    """A run was started in ``out`` but its first checkpoint never completed."""
    incomplete = not (out / LAST).exists() and not (out / RESULTS).exists()
    return incomplete and (_run_config(out) or _run_best(out))


def _run_best(out: Path) -> bool:
    """Whether ``out/best.safetensors`` may be a run's: not a readable safetensors file without
    an interfuse header (the user's weights of another tool)."""
    if not (out / BEST).exists():
        return False
    try:
        with safe_open(str(out / BEST), framework="pt") as f:
            return "interfuse" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return True  # unreadable: no one's weights, a run's part


def _run_config(out: Path) -> bool:
    """Whether ``out/config.json`` was written by a run (not a file of the user's)."""
    return _json_object_with(out / CONFIG, {"config", "data", "task"})


def _run_results(out: Path) -> bool:
    """Whether ``out/results.json`` was written by a run (not a file of the user's)."""
    return _json_object_with(out / RESULTS, {"dataset", "metrics", "config"})


def _json_object_with(path: Path, keys: set[str]) -> bool:
    """Whether ``path`` holds a JSON object with (at least) ``keys``; ``False`` when unreadable."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(values, dict) and keys <= values.keys()


def _foreign_files(out: Path) -> list[str]:
    """The files a run writes that ``out`` holds although no run was started there (the
    user's own ``results.json``, ``config.json``, ``report.md``, … that training would
    replace)."""
    if (out / LAST).exists() or _run_results(out) or _run_config(out) or _run_best(out):
        return []
    return [f for f in (RESULTS, *RUN_FILES, BEST) if (out / f).exists()]


def _refusal(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Why ``out`` cannot be used with these flags (reads only; ``None``: it can). The other
    ranks of a distributed run check this too, so that all stop, not rank 0 alone."""
    if _never_checkpointed(out) and not overwrite:
        return None
    if resume:
        if not (out / LAST).exists():
            return f"nothing to resume: {out / LAST} does not exist"
    elif not overwrite and (foreign := _foreign_files(out)):
        return (
            f"{out} holds {', '.join(foreign)}, not written by an interfuse run, "
            f"which training would replace; choose a new or empty --out, or pass --overwrite"
        )
    elif not overwrite and (out / LAST).exists():
        return (
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    elif not overwrite and any((out / f).exists() for f in RESULT_FILES):
        return (
            f"{out} already holds a run without {LAST} to resume from; choose a new or empty "
            f"--out, or pass --overwrite to replace it"
        )
    return None


def _resumes(out: Path, resume: bool) -> bool:
    """Whether ``fit`` continues from ``last.safetensors`` (not for a never-checkpointed run)."""
    return resume and (out / LAST).exists()


def _spec_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two model descriptions, one entry per differing field (``options``
    field by field: ``options.rank 8 → 4``; the encoders by modality name)."""
    parts = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if key == "options" and isinstance(old, Mapping) and isinstance(new, Mapping):
            parts += [
                f"options.{k} {old.get(k)!r} → {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
        elif key == "encoders" and isinstance(old, Mapping) and isinstance(new, Mapping):
            changed = sorted(m for m in set(old) | set(new) if old.get(m) != new.get(m))
            parts.append(f"encoders of {', '.join(changed)}")
        else:
            parts.append(f"{key} {old!r} → {new!r}")
    return parts


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
    attempt: int = 0
    attempt_start: int = 0
    attempt_best: float = float("inf")
    finetuning: bool = False

    def record(self, loss: float) -> bool:
        """Book the validation loss of the epoch just completed (``epoch``): patience counts
        epochs without a better loss *of this attempt* (``attempt_best``), while the selected
        model is the best over all attempts. Returns whether it is that best."""
        best = loss < self.best_loss
        if best:
            self.best_loss, self.best_epoch = loss, self.epoch
        if loss < self.attempt_best:
            self.attempt_best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        return best

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingState:
        """``ValueError`` naming the entry for an unknown, missing or mistyped one (a header
        edited and its checksum recomputed)."""
        if not isinstance(values, Mapping):
            raise ValueError(f"expected a mapping, got {type(values).__name__}")
        values = dict(values)
        # checkpoints written before restarts kept their own patience: the bar was the best loss
        values.setdefault("attempt_best", values.get("best_loss", float("inf")))
        defaults = asdict(cls())
        unknown = sorted(set(values) - set(defaults))
        missing = [k for k in ("epoch", "best_loss", "best_epoch") if k not in values]
        if unknown or missing:
            raise ValueError(f"unknown entries {unknown}, missing entries {missing}")
        for key, value in values.items():
            default = defaults[key]
            if isinstance(default, bool):
                valid = isinstance(value, bool)
            elif isinstance(default, list):
                valid = isinstance(value, list) and all(isinstance(r, dict) for r in value)
            else:  # a count (int) or a loss or time (float; an integral one may be an int)
                number = type(default) if isinstance(default, int) else (int, float)
                valid = isinstance(value, number) and not isinstance(value, bool)
            if not valid:
                raise ValueError(f"{key} {value!r} is not a {type(default).__name__}")
        return cls(**values)


class RunRecorder(pl.Callback):
    """After every epoch: validate, log relevance, checkpoint, select the best model, stop early.

    Distributed training: rank 0 validates on the whole validation split (no sampler padding, no
    duplicates) and broadcasts the metrics and relevance; every rank then takes the same
    decisions (best epoch, early stop) from the same numbers, and only rank 0 writes. Running
    statistics are broadcast from rank 0 at the end of every epoch, so the model is identical on
    every rank. A signal or a non-finite loss on any rank stops every rank (an all-reduced flag).
    """

    def __init__(
        self, run: _Run | None, interrupted: InterruptFlag, log: Callable[[str], None] | None = None
    ) -> None:
        self.run: _Run = run  # type: ignore[assignment]  # set by fit before training
        self.interrupted = interrupted
        self.agreed = InterruptFlag()  # the signal every rank agreed to stop on
        self.echo = log
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's own SIGTERM handler broadcasts from inside the handler, which can deadlock
        # a process group; ours only records the signal, and the ranks agree at step boundaries.
        install_handlers(self.interrupted)
        if self.run.optimizer_state is not None:
            _check_optimizer_state(trainer.optimizers[0], self.run.optimizer_state, self.run)
            trainer.optimizers[0].load_state_dict(self.run.optimizer_state)
            self.run.optimizer_state = None

    def _agree(self, trainer: pl.Trainer, nonfinite: bool = False) -> bool:
        """All-reduce (max) of this rank's signal and non-finite flag; returns whether any rank
        saw a non-finite loss, and records an agreed signal in ``self.agreed``."""
        if trainer.world_size == 1:
            self.agreed.signum = self.interrupted.signum
            return nonfinite
        flags = torch.tensor(
            [float(nonfinite), float(self.interrupted.signum or 0)],
            device=trainer.strategy.root_device,
        )
        flags = trainer.strategy.reduce(flags, reduce_op=dist.ReduceOp.MAX)
        if flags[1] > 0:
            self.agreed.signum = int(flags[1])
        return bool(flags[0] > 0)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any
    ) -> None:
        """Stop at the first non-finite loss (on any rank), before it reaches the weights."""
        finite = bool(torch.isfinite(loss.detach()))
        if not self._agree(trainer, not finite):
            return
        value = float(loss.detach())
        run = self.run
        step = trainer.global_step + 1
        epoch = run.state.epoch + 1
        lr, option = _learning_rate(run.state, run.config)
        last = run.out / LAST
        if last.exists():
            keep = (
                f"{last} (epoch {run.state.epoch}) is the last good checkpoint; continue it "
                f"with --resume, or start again with a lower {option} and --overwrite"
            )
        else:
            keep = f"No epoch completed, so nothing was saved; rerun with a lower {option}"
        where = f"{value}" if not finite else "not finite on another process"
        raise TrainingDiverged(
            f"training diverged: the loss is {where} at step {step} (epoch {epoch}); the "
            f"learning rate {lr:g} ({option}) is likely too high (or the data holds extreme "
            f"values). {keep}",
            step,
            value,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.agreed:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agree(trainer)
        if self.agreed:
            return  # a partial epoch: last.safetensors keeps the last complete one
        run, state = self.run, self.run.state
        if trainer.world_size > 1:
            for buffer in run.model.buffers():  # running statistics: rank 0's, on every rank
                dist.broadcast(buffer, src=0)
        state.epoch += 1
        if isinstance(pl_module, FusionModule):
            # an epoch cut short (max_steps) logs its part in the module's own epoch-end hook,
            # which Lightning calls after this one: log it now, so that the row below has it
            pl_module.on_train_epoch_end()
        train_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")
        }
        val, relevance = on_rank_zero(
            trainer,
            lambda: (
                evaluate(run.model, run.data.val, run.data.task, metric_set=run.data.metrics),
                run.relevance(),
            ),
            "validate",
        )
        row = {"epoch": state.epoch, **train_metrics}
        if state.attempt:
            row["attempt"] = state.attempt
        if state.finetuning:
            row["finetune"] = 1
        row.update({f"val_{k}": v for k, v in val.items()})
        row.update({f"share:{t}": s for t, s in (relevance.shares if relevance else {}).items()})
        state.history.append(row)
        if not math.isfinite(val["loss"]):
            lr, option = _learning_rate(state, run.config)
            raise TrainingDiverged(
                f"training diverged: the validation loss is {val['loss']} after epoch "
                f"{state.epoch} (step {trainer.global_step}); the learning rate {lr:g} "
                f"({option}) is likely too high (or the data holds extreme values). "
                + (
                    f"{run.out / LAST} (epoch {state.epoch - 1}) is the last good checkpoint"
                    if (run.out / LAST).exists()
                    else f"No epoch completed, so nothing was saved; rerun with a lower {option}"
                ),
                trainer.global_step,
                val["loss"],
            )
        for key in ("loss", "accuracy"):
            if key in val:
                pl_module.log(f"val_{key}", val[key], prog_bar=True, rank_zero_only=True)
        # every validation metric and the relevance reach the user's loggers (CSV, TensorBoard…)
        pl_module.log_dict(
            {
                f"val_{k}": v
                for k, v in val.items()
                if k not in ("loss", "accuracy") and math.isfinite(v)
            },
            rank_zero_only=True,
        )
        if relevance is not None:
            pl_module.log_dict(
                {f"share/{t}": v for t, v in relevance.shares.items()}, rank_zero_only=True
            )

        best = state.record(val["loss"])
        if best:
            run.save(BEST)
        if state.bad_epochs:
            for group in trainer.optimizers[0].param_groups:  # saved with the optimiser state
                group["lr"] *= run.config.lr_decay
        if self.echo is not None and run.writer:
            line = _epoch_line(
                state.epoch - state.attempt_start, run.config.epochs, row, best, self.started
            )
            name = _attempt_name(state.attempt, state.finetuning)
            self.echo(f"{name}: {line}" if state.attempt else line)
        if state.bad_epochs >= run.config.patience:
            state.stopped_early = True
            trainer.should_stop = True
        run.save(LAST, optimizer=trainer.optimizers[0])
        run.write_history()


def _check_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], run: _Run
) -> None:
    """Every saved moment has its parameter's shape (torch loads any: a checkpoint edited with
    its checksum recomputed would broadcast into the updates)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, values in saved.get("state", {}).items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue  # the step count
            if not 0 <= index < len(params) or value.shape != params[index].shape:
                expected = tuple(params[index].shape) if 0 <= index < len(params) else None
                raise CheckpointError(
                    f"{run.out / LAST}: the optimiser state {name!r} of parameter {index} has "
                    f"shape {tuple(value.shape)}, its parameter {expected}; the file was edited "
                    f"or is corrupt"
                )


def _epoch_line(
    epoch: int, epochs: int, row: Mapping[str, float], best: bool, started: float
) -> str:
    """``epoch  3/20  train_loss 0.4123  val_loss 0.3987  val_accuracy 0.9120  best  1.2 s``."""
    keys = [k for k in ("train_loss", "val_loss", "val_accuracy", "val_mae") if k in row]
    values = "  ".join(f"{k} {row[k]:.4f}" for k in keys)
    seconds = time.perf_counter() - started
    return f"epoch {epoch:>3}/{epochs}  {values}{'  best' if best else ''}  {seconds:.1f} s"


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
        writer: bool = True,
    ) -> None:
        self.data = data
        self.writer = writer  # rank 0 (or the only process) writes the run folder
        self.config = config
        self.out = out
        self.spec = spec
        self.entry = model_entry(spec)
        self.preprocessor: Preprocessor = data.fitted_preprocessor()
        self.provenance = {
            "name": data.name,
            "source": data.source,
            "fingerprint": data.fingerprint(),
            "masks_fingerprint": data.masks_fingerprint(),
            "split_sizes": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
            "present": {s: getattr(data, s).present_counts() for s in ("train", "val", "test")},
            "metrics": data.metrics,
            "info": data.info,
        }
        self.optimizer_state: dict[str, Any] | None = None
        self.encoders = dict(encoders)
        self.state = TrainingState()
        if resume:
            model_state, header, self.optimizer_state = load_checkpoint(out / LAST)
            self._check_resumable(header)
            self.model = build_model(spec, encoders=encoders)
            self.model.load_state_dict(model_state)
            try:
                self.state = TrainingState.from_dict(header.get("state"))
            except ValueError as error:
                raise CheckpointError(f"{out / LAST}: malformed training state ({error})") from None
        else:
            self.model = build_model(spec, seed=config.seed, encoders=encoders)
        # the encoders' dropout rates as built (a restart switches them off, a fine-tune back on)
        self.dropout_rates = [layer.p for layer in _dropout_layers(self.model)]
        if isinstance(self.model, MultimodalModel):
            self.model.compile_fusion = config.compile
        set_sync_stats(self.model, config.sync_stats)
        if writer:  # every model's run: a run killed before its first checkpoint starts afresh
            atomic_write_text(out / CONFIG, json.dumps(self.header(), indent=2, default=str) + "\n")

    def _check_resumable(self, header: Mapping[str, Any]) -> None:
        """Refuse to continue a run with other data, another model or other settings."""
        last = self.out / LAST
        saved_spec = header.get("spec")
        if saved_spec != self.spec.to_dict():
            differs = _spec_differences(saved_spec or {}, self.spec.to_dict())
            raise CheckpointError(
                f"{last} was written for a different model or data: {'; '.join(differs)} "
                f"(checkpoint → now); resume with the same dataset and options"
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
        # runs started before masks were fingerprinted have no digest to compare
        saved_masks = saved_data.get("masks_fingerprint")
        if saved_masks is not None and saved_masks != self.provenance["masks_fingerprint"]:
            raise CheckpointError(
                f"{last} was trained with other missing-modality masks (same tensors, other "
                "samples marked missing); resume with the same masks, or start a new run"
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
        if self.config.epochs < saved_config.epochs:  # results.json would record fewer
            raise CheckpointError(
                f"{last}: a resume trains longer, not shorter: --epochs {self.config.epochs} is "
                f"below the {saved_config.epochs} the run was started with; resume with "
                f"--epochs {saved_config.epochs} or more"
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
        if not self.writer:
            return
        header = {**self.header(), "state": asdict(self.state)}
        state = optimizer.state_dict() if optimizer is not None else None
        save_run_checkpoint(
            self.out / name, self.model, self.spec, self.preprocessor, header, state
        )

    def write_history(self) -> None:
        if not self.writer:
            return
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
    config: TrainConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    encoders: Mapping[str, nn.Module | Mapping[str, Any] | Callable[..., nn.Module]] | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[pl.Callback] = (),
    loggers: Sequence[Logger] | Logger | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    accelerator: str = "auto",
    precision: str = "32-true",
    threads: int | None = None,
    verbose: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> RunResult:
    """Train, select the best epoch on validation, evaluate, and write the run folder.

    Args:
        data: the task (splits, encoders, preprocessing, dataset defaults).
        config: training settings (``None``: all defaults); fields not set explicitly take
            ``data.train_defaults``.
        out_dir: the run folder (created; locked while training).
        resume: continue the run in ``out_dir`` from ``last.safetensors``; refused when the
            data, the model or any setting other than ``epochs``, ``compile`` and
            ``dropout_finetune`` (:data:`~interfuse.train.config.RESUMABLE_CHANGES`) differs.
            The attempt under way trains for its remaining ``epochs`` (so a larger ``epochs``
            extends it), unless it had stopped early.
        overwrite: replace a finished run in ``out_dir``.
        encoders: per modality, an ``nn.Module``, an encoder spec (``{"type": name, ...}``, see
            :data:`interfuse.encoders.ENCODERS`) or a factory called with the per-sample input
            shape, replacing ``data.encoders`` (a module not registered by name must be passed
            again to :func:`interfuse.load_run`).

        progress: a progress bar (default: when standard error is a terminal). Without a bar,
            ``log`` (default ``print``) gets one line per epoch, so a log file stays small.
        callbacks, loggers: extra Lightning callbacks, and loggers (CSV, TensorBoard, W&B…) that
            receive the training losses and, every epoch, every validation metric and the
            relevance shares (``share/<term>``).
        trainer_kwargs: further ``pl.Trainer`` arguments (e.g. ``{"deterministic": True}``).
        accelerator: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``…; ``precision``: Lightning's
            precision (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``); ``threads``: torch
            intra-op threads during training (tiny models run fastest on one).
        verbose: keep Lightning's own messages (banner, tips); quiet by default.
        devices, num_nodes, strategy: distributed data-parallel training on ``devices``
            processes per node on ``num_nodes`` machines (Lightning's ``strategy``, e.g.
            ``"ddp"``; ``"auto"`` is DDP when there is more than one process). Each process
            trains on its own ``config.batch_size`` samples per step (see
            :class:`~interfuse.data.batching.EpochBatchSampler`); ``config.sync_stats`` computes
            batch moments over all of them. Only rank 0 writes ``out_dir``; every rank returns
            the same :class:`RunResult`. Resuming needs ``out_dir`` readable by every rank.

    Returns the :class:`RunResult` also written to ``results.json``. A warning is issued when
    the best epoch is the last one (training may not have converged).
    """
    config = (config or TrainConfig()).with_defaults(data.train_defaults)
    given = dict(encoders or {})
    unknown = sorted(set(given) - set(data.modalities))
    if unknown:
        raise ValueError(
            f"encoders given for unknown modalities {unknown}; data has {data.modalities}"
        )
    partial = sorted({m for s in ("train", "val", "test") for m in getattr(data, s).masks})
    if partial and not MODELS.get(config.model).masks:
        raise ValueError(
            f"modalities {partial} are missing for some samples, but model {config.model!r} has "
            f"no missing-modality path; use a model that has one (intense or mnl)"
        )
    shapes = {m: list(x.shape[1:]) for m, x in data.train.inputs.items()}
    specs = {m: _encoder(m, given.get(m, data.encoders[m]), shapes[m]) for m in data.modalities}
    modules = {m: e for m, e in specs.items() if isinstance(e, nn.Module)}
    check_training_budget(config, specs, data.num_outputs)
    spec = model_spec(config.model, specs, config, data.num_outputs, input_shapes=shapes)
    check_model_budget(spec, config.batch_size, modules)
    bar = sys.stderr.isatty() if progress is None else progress
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    several = devices * num_nodes > 1
    dropping = config.modality_dropout_for(len(data.modalities)) > 0
    if config.compile and (dropping or partial):
        warnings.warn(compile_note(config, len(data.modalities), partial), stacklevel=2)
    if strategy in ("ddp", "auto") and several and (partial or dropping):
        # a modality missing from a whole batch leaves its encoder without gradients
        strategy = "ddp_find_unused_parameters_true"
    trainer_options = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": precision,
        "logger": list(loggers) if isinstance(loggers, Sequence) else (loggers or False),
        "enable_progress_bar": bar,
        **dict(trainer_kwargs or {}),
    }
    interrupted = InterruptFlag()
    recorder = RunRecorder(None, interrupted, None if bar else (log or print))
    with _quiet_lightning(not verbose), _lightning_warnings(), _lightning_errors():
        trainer = pl.Trainer(
            max_epochs=config.epochs,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            gradient_clip_val=config.max_grad_norm,
            callbacks=[recorder, *callbacks],
            # our sampler gives each rank its share of every global batch (exact, unpadded)
            use_distributed_sampler=False,
            **trainer_options,
        )
    writer = trainer.is_global_zero
    if writer:
        out = prepare_run_folder(out_dir, resume, overwrite)
    else:
        out = Path(out_dir)
        refusal = _refusal(out, resume, overwrite)
        if refusal is not None:
            raise RunFolderError(refusal)
    lock = lock_run_folder(out) if writer else contextlib.nullcontext()
    with lock, _quiet_lightning(not verbose), _threads(threads):
        # checked again under the lock: a run that held it may have finished since the check
        if writer and (refusal := _refusal(out, resume, overwrite)) is not None:
            raise RunFolderError(refusal)
        if writer:
            removed = remove_stale_temporaries(out)
            if removed:
                logger.info(f"removed {len(removed)} unfinished temporary file(s) from {out}")
        resuming = _resumes(out, resume)
        if not resuming and writer:
            for stale in (LAST, BEST, RESULTS):  # of a half-started or an overwritten run
                (out / stale).unlink(missing_ok=True)
        run = _Run(data, config, spec, out, resuming, modules, writer=writer)
        recorder.run = run
        _train(run, trainer, recorder, accelerator)
        while (reason := _restart_reason(run, trainer)) is not None:
            _restart(run, trainer, reason)
            _train(run, trainer, recorder, accelerator)
        return _finish_everywhere(run, trainer)


def compile_note(config: TrainConfig, modalities: int, partial: Sequence[str]) -> str:
    """Why ``compile=True`` leaves some training steps eager: the compiled step has no presence
    masks, so a batch with a missing modality (modality dropout, or missing data) runs the
    eager path — the same math, so results do not change, only which steps are compiled."""
    rate = config.modality_dropout_for(modalities)
    reasons = []
    if rate > 0:
        reasons.append(
            f"modality dropout {rate:g} masks every batch of the first attempt (and of a "
            f"fine-tune), which therefore run eagerly; restarts train without dropout and are "
            f"compiled; set modality_dropout=0 (--modality-dropout 0) to compile every step"
        )
    if partial:
        reasons.append(f"batches in which {', '.join(partial)} miss samples run eagerly")
    return (
        "compile=True (--compile) compiles only training batches without missing modalities: "
        + ("; ".join(reasons))
    )


def is_global_zero() -> bool:
    """Whether this process is rank 0 of distributed training (or not distributed): the one
    that writes the run folder and reports."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _finish_everywhere(run: _Run, trainer: pl.Trainer) -> RunResult:
    """Rank 0 evaluates and writes ``results.json``; the result (or its failure) reaches every
    rank, so no rank waits forever for one that failed."""
    return on_rank_zero(trainer, lambda: finish(run), "finish the run")


REBUILT_ERRORS: tuple[type[Exception], ...] = (
    CheckpointError,
    RunFolderError,
    ResourceBudgetError,
    ValueError,
    OSError,
)
"""Errors of rank 0 that the other ranks raise as the same type (most specific first): the
command line gives them the same exit status; any other becomes a ``RuntimeError``."""


def on_rank_zero(trainer: pl.Trainer, compute: Callable[[], T], what: str) -> T:
    """``compute()`` on rank 0 alone (it reads or writes the run folder), its value broadcast to
    every rank. When it fails, every rank raises instead of waiting forever in the broadcast for
    a rank that left: rank 0 its own error, the others its one line as the first matching type
    of :data:`REBUILT_ERRORS` (else ``RuntimeError('rank 0 failed to <what>: …')``)."""
    if trainer.world_size == 1:
        return compute()
    outcome: tuple[T | None, str | None, str | None] = (None, None, None)
    failure: Exception | None = None
    if trainer.is_global_zero:
        try:
            outcome = (compute(), None, None)
        except Exception as error:  # re-raised below, after the other ranks were told
            failure = error
            kind = next((t.__name__ for t in REBUILT_ERRORS if isinstance(error, t)), None)
            outcome = (None, kind, " ".join(str(error).split()) or type(error).__name__)
    value, kind, message = trainer.strategy.broadcast(outcome, src=0)
    if failure is not None:
        raise failure
    if message is not None:
        rebuilt = next((t for t in REBUILT_ERRORS if t.__name__ == kind), None)
        if rebuilt is None:
            raise RuntimeError(f"rank 0 failed to {what}: {message}")
        raise rebuilt(message)
    return value  # type: ignore[return-value]  # rank 0 computed it


@contextlib.contextmanager
def _lightning_errors() -> Iterator[None]:
    """Lightning's refusal of a device setting (no such accelerator, strategy or device count,
    or an accelerator whose package is not installed) as one ``ValueError`` naming the options."""
    try:
        yield
    except (MisconfigurationException, RuntimeError, ValueError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot train with these device settings (--device/accelerator, --devices, "
            f"--num-nodes, --strategy, --precision): {first}"
        ) from None


@contextlib.contextmanager
def _lightning_warnings() -> Iterator[None]:
    """Lightning's warnings about choices ``fit`` makes on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        # fit validates in RunRecorder (on the whole split, for exact resume), not in the loop
        warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        warnings.filterwarnings("ignore", message=".*distributed_sampler.*")
        warnings.filterwarnings("ignore", message=".*static graph.*")
        yield


def _loss_weight(run: _Run) -> torch.Tensor | None:
    """The training loss's weights (``class_weights``; from the training split), or ``None``."""
    data = run.data
    if run.config.class_weights != "balanced":
        return None
    return balanced_weights(data.task, data.train.targets, data.num_outputs)


def _trained_with_dropout(run: _Run) -> bool:
    """Whether the first attempt drops anything: modalities, or units in a dropout layer."""
    if run.config.modality_dropout_for(len(run.data.modalities)) > 0:
        return True
    return any(p > 0 for p in run.dropout_rates)


def _in_restart(state: TrainingState) -> bool:
    """Whether the attempt under way is a restart (no dropout, ``restart_lr``, ``restart_lam``),
    not the first attempt or the fine-tune (dropout, ``lr``, ``lam``; see :func:`_restart`)."""
    return state.attempt > 0 and not state.finetuning


def _learning_rate(state: TrainingState, config: TrainConfig) -> tuple[float, str]:
    """The learning rate of the attempt under way and the option that sets it."""
    if _in_restart(state):
        return config.restart_lr, "--restart-lr"
    return config.lr, "--lr"


def _attempt_name(attempt: int, finetune: bool) -> str:
    """``"first"``, ``"restart k"`` or ``"fine-tune"``: how lines and results name an attempt."""
    return "fine-tune" if finetune else f"restart {attempt}" if attempt else "first"


def _selected_row(state: TrainingState) -> Mapping[str, float]:
    """The history row of the epoch whose model validation has selected so far."""
    return next((row for row in state.history if row.get("epoch") == state.best_epoch), {})


def _selected_label(state: TrainingState) -> str:
    """The name of the attempt whose model validation has selected so far."""
    return _attempt_name(*_attempt_key(_selected_row(state)))


def _selected_attempt_end(state: TrainingState) -> int:
    """The last epoch trained by the attempt of the selected model."""
    key = _attempt_key(_selected_row(state))
    return max(
        (int(row["epoch"]) for row in state.history if _attempt_key(row) == key),
        default=state.epoch,
    )


def _attempt_key(row: Mapping[str, float]) -> tuple[int, bool]:
    return int(row.get("attempt", 0)), bool(row.get("finetune"))


def _restart_reason(run: _Run, trainer: pl.Trainer) -> str | None:
    """Why the run trains another attempt, or ``None``. While restarts are left: after a first
    attempt with dropout, always (``"without dropout"``: dropout can hide an interaction such
    as XOR even from a model that learnt other modalities, so the learnt verdict cannot tell);
    after that, when the best model so far is not clearly learnt (``"not learnt"``,
    :func:`learnt_verdict` on the validation split). Then, once, ``"fine-tune"`` (with
    ``dropout_finetune``) when validation selected a model of an attempt without dropout
    while the first attempt had dropout. A run with encoder modules passed in is not
    restarted (a fresh initialisation cannot be rebuilt from trained modules). In distributed
    training rank 0 decides and every rank follows."""
    state, config = run.state, run.config
    if state.finetuning or run.encoders:
        return None
    if state.attempt < config.restarts:
        if state.attempt == 0 and _trained_with_dropout(run):
            return "without dropout"
        if on_rank_zero(trainer, lambda: _not_learnt(run), "judge the selected model"):
            return "not learnt"
    if (
        config.dropout_finetune
        and state.attempt > 0
        and _selected_label(state) != "first"
        and _trained_with_dropout(run)
    ):
        return "fine-tune"
    return None


def _not_learnt(run: _Run) -> bool:
    """Whether the best model so far is not clearly learnt (loads it into ``run.model``)."""
    if not (run.out / BEST).exists():
        return False
    run.model.load_state_dict(_load_best(run))
    verdict = learnt_verdict(run.model, run.data, seed=run.config.seed, weight=_loss_weight(run))
    return verdict.status != "learnt"


def _restart(run: _Run, trainer: pl.Trainer, reason: str) -> None:
    """The next attempt (see :func:`_restart_reason` for when and why). A restart starts from
    the run's initialisation (same seed) with ``restart_lr``, ``restart_lam`` and no dropout:
    the first attempt's dropout (modality dropout, dropout layers in encoders) helps weak
    modalities' encoders learn, but it can keep a model from finding an interaction whose
    parts are useless alone (XOR; BENCHMARKS.md §1.1). The fine-tune starts from the selected
    model of such an attempt and trains it with the first attempt's dropout, ``lr`` and
    ``lam``: the interaction stays found, and dropout now strengthens the other modalities'
    encoders, which the attempt without dropout left weak (an over-credited interaction,
    overfitting). Every attempt has its own patience (epochs without a better loss *of this
    attempt*); the best validation loss over all attempts selects the model. Saved at once,
    so an interrupted attempt resumes as that attempt."""
    state = run.state
    state.attempt += 1
    state.attempt_start = state.epoch
    state.bad_epochs = 0
    state.attempt_best = float("inf")
    state.stopped_early = False
    run.optimizer_state = None
    config = run.config
    if reason == "fine-tune":
        state.finetuning = True
        # rank 0 reads the file (other nodes may not see it) and sends the weights as an object:
        # between attempts Lightning has moved the model back to the CPU, which NCCL cannot send
        best_state = on_rank_zero(trainer, lambda: _load_best(run), "read the selected model")
        run.model.load_state_dict(best_state)
        message = (
            f"fine-tune: validation selected the model of epoch {state.best_epoch}, trained "
            f"without dropout; training it further with the first attempt's dropout, learning "
            f"rate {config.lr:g} and λ {config.lam:g} (validation picks the best attempt)"
        )
    else:
        fresh = build_model(run.spec, seed=config.seed)
        run.model.load_state_dict(fresh.state_dict())
        why = (
            "the first attempt trained with dropout, which can hide interactions such as XOR"
            if reason == "without dropout"
            else f"the best model (epoch {state.best_epoch}) is not clearly better than chance "
            f"or its best single modality on validation"
        )
        message = (
            f"restart {state.attempt}: {why}; training again from the same initialisation with "
            f"learning rate {config.restart_lr:g}, λ {config.restart_lam:g}, without "
            f"dropout (validation picks the best attempt)"
        )
    logger.info(message)
    run.save(LAST)


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Lightning's banner and tips (INFO messages) off while training, unless verbose."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    if quiet:
        for n in names:
            logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encoder(
    modality: str,
    encoder: nn.Module | Mapping[str, Any] | Callable[..., nn.Module],
    shape: list[int],
) -> nn.Module | Mapping[str, Any]:
    """A module, a spec, or a factory called with the per-sample input shape."""
    if isinstance(encoder, (nn.Module, Mapping)):
        return encoder
    if callable(encoder):
        module = encoder(tuple(shape))
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"the encoder factory of modality {modality!r} returned "
                f"{type(module).__name__}, not an nn.Module"
            )
        return module
    raise ValueError(
        f"modality {modality!r}: an encoder is an nn.Module, a spec {{'type': name, ...}} or a "
        f"factory taking the input shape, got {type(encoder).__name__}"
    )


def _embedding_dim(encoder: nn.Module | Mapping[str, Any]) -> int:
    if isinstance(encoder, nn.Module):
        size = getattr(encoder, "output_dim", 0)
    else:
        size = encoder.get("output_dim", 32)
    # a malformed size counts as 0 here: building the encoder refuses it with a clear error
    return int(size) if isinstance(size, Integral) and not isinstance(size, bool) else 0


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
    if isinstance(spec, str) and "*" in spec:  # "a*b,c*d": the same terms as a list
        spec = [t.strip() for t in spec.split(",") if t.strip()]
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


def _train(run: _Run, trainer: pl.Trainer, recorder: RunRecorder, accelerator: str) -> None:
    config = run.config
    remaining = config.epochs - (run.state.epoch - run.state.attempt_start)
    if remaining <= 0 or run.state.stopped_early:
        return
    if run.state.finetuning and not config.dropout_finetune:
        return  # a run resumed in its fine-tune with --no-dropout-finetune: stop it there
    # a restart trains without dropout, the first attempt and the fine-tune with (see _restart)
    restart = _in_restart(run.state)
    _set_dropout(run.model, [0.0] * len(run.dropout_rates) if restart else run.dropout_rates)
    module = FusionModule(
        run.model,
        run.data.task,
        config.restart_lam if restart else config.lam,
        config.restart_lr if restart else config.lr,
        config.weight_decay,
        modality_dropout=0.0 if restart else config.modality_dropout_for(len(run.data.modalities)),
        seed=config.seed,
        # the same trainer runs every attempt and its epoch counter goes on: the module's epoch
        # (offset + trainer.current_epoch) is the run's epoch, as in a resumed run's new trainer
        epoch_offset=run.state.epoch - trainer.current_epoch,
        regularize=run.entry.relevance,
        loss_weight=_loss_weight(run),
        metric_set=run.data.metrics,
    )
    train = run.data.train
    if (
        isinstance(run.model, MultimodalModel)
        and run.model.check_inputs
        and all(isinstance(x, torch.Tensor) for x in train.inputs.values())
    ):
        # the batches are index subsets of the training split (in memory; a lazily read one is
        # checked batch by batch): scan it once for non-finite values, not at every step
        run.model.check_data(train.inputs, train.masks or None)
        module.inputs_checked = True
    # the same trainer runs every attempt: its epoch counter goes on, the stop flag is reset
    trainer.fit_loop.max_epochs = trainer.current_epoch + remaining
    trainer.should_stop = False
    loader = batch_loader(
        run.data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        start_epoch=run.state.epoch,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        pin_memory=torch.cuda.is_available() and accelerator in ("auto", "cuda", "gpu"),
    )
    started = time.perf_counter()
    interrupted = recorder.interrupted
    with _lightning_warnings(), catch_interrupts(interrupted):
        try:
            trainer.fit(module, train_dataloaders=loader)
        except SIGTERMException:
            recorder.agreed.signum = recorder.agreed.signum or interrupted.signum
    if recorder.agreed:
        raise TrainingInterrupted(recorder.agreed.signum, run.state.epoch, str(run.out / LAST))
    run.state.train_seconds += time.perf_counter() - started
    run.save(LAST, optimizer=trainer.optimizers[0])  # keeps the accumulated time


def _dropout_layers(model: nn.Module) -> Iterator[nn.modules.dropout._DropoutNd]:
    """The dropout layers of ``model`` (``nn.Dropout`` and its 1-3d and alpha variants)."""
    return (m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd))


def _set_dropout(model: nn.Module, rates: list[float]) -> None:
    """Set the rate of every dropout layer of ``model``, in :func:`_dropout_layers` order (a
    restart switches them off, a fine-tune back on; dropout layers have no parameters, so
    checkpoints are unchanged)."""
    for layer, rate in zip(_dropout_layers(model), rates, strict=True):
        layer.p = rate


def _load_best(run: _Run) -> dict[str, torch.Tensor]:
    """The weights in ``best.safetensors``, which must be of the epoch the run selected: a run
    stopped between writing ``best`` and ``last`` of an epoch, then resumed without training
    that epoch again, would report one model's epoch with another model's metrics."""
    path = run.out / BEST
    state, header, _ = load_checkpoint(path)
    saved = (header.get("state") or {}).get("best_epoch", run.state.best_epoch)
    if saved != run.state.best_epoch:
        raise CheckpointError(
            f"{path} holds the model of epoch {saved}, but {run.out / LAST} (epoch "
            f"{run.state.epoch}) selected epoch {run.state.best_epoch}: the run was stopped "
            f"between writing the two and resumed with settings that did not train epoch "
            f"{saved} again; resume with the settings it was interrupted with, or retrain it "
            f"(--overwrite)"
        )
    return state


def finish(run: _Run) -> RunResult:
    """Reload the best model, evaluate it on every split, write results.json and history.csv."""
    best_state = _load_best(run)
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
        attempts=run.state.attempt + 1,
        selected_attempt=_selected_label(run.state),
        selected_attempt_end=_selected_attempt_end(run.state),
        stopped_early=run.state.stopped_early,
        train_seconds=round(run.state.train_seconds, 2),
        missing_modalities=missing_modality_metrics(run.model, data) if run.entry.masks else None,
        ground_truth=data.ground_truth,
        class_names=data.class_names,
        data=run.provenance,
        label_relevance={
            name: run.model.head.output_relevance(k) for k, name in enumerate(data.class_names)
        }
        if data.task == "multilabel" and isinstance(run.model, MultimodalModel) and data.class_names
        else None,
        verdict=learnt_verdict(run.model, data, seed=run.config.seed, weight=_loss_weight(run)),
        relevance_evidence=relevance_evidence(run.model, data, seed=run.config.seed)
        if run.entry.relevance and isinstance(run.model, MultimodalModel)
        else None,
        estimates=relevance_estimates(run.model, data.task, data.val, seed=run.config.seed)
        if run.entry.relevance and isinstance(run.model, MultimodalModel)
        else None,
        model_sha256=model_digest(run.out / BEST),  # readers tell when best changes later
    )
    atomic_write_text(run.out / RESULTS, result.to_json())
    run.write_history()
    if not result.converged:
        warnings.warn(NotConverged(result), stacklevel=3)
    return result


class NotConverged(UserWarning):
    """The best validation loss came in the last epoch: training may not have converged."""

    def __init__(self, result: RunResult) -> None:
        end = result.selected_attempt_end
        if end is not None and end < result.epochs_run:  # an earlier attempt was selected
            super().__init__(
                f"the best validation loss came in the last epoch of the {result.selected_attempt}"
                f" attempt (epoch {result.best_epoch}; the run trained {result.epochs_run}): "
                f"that attempt may not have converged; train longer (a larger --epochs)"
            )
            return
        super().__init__(
            f"the best validation loss came in the last epoch ({result.best_epoch} of "
            f"{result.epochs_run}): training may not have converged; train longer (--epochs, "
            f"or --resume with a larger --epochs)"
        )


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
