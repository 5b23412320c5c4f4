"""Training hyperparameters: one dataclass, the single source of every default.

The command line derives its ``interfuse train`` options from the fields of :class:`TrainConfig`
(name, default and help text live here), so a default is written once.

Dataset defaults: a dataset may need other settings than the library's defaults (mfeat: λ, p,
epochs). :class:`TrainConfig` remembers which fields its caller set; :func:`interfuse.train.fit`
fills every field that was *not* set from the data's ``train_defaults``. So
``fit(load_dataset("mfeat"), TrainConfig())`` trains what ``interfuse train --dataset mfeat``
trains, and ``TrainConfig(lam=0.1)`` still wins over the dataset's λ.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..models import MODELS
from ..terms import InteractionSpec

__all__ = ["CLASS_WEIGHTS", "DEFAULT_MODALITY_DROPOUT", "RESUMABLE_CHANGES", "TrainConfig"]

CLASS_WEIGHTS = ("none", "balanced")

DEFAULT_MODALITY_DROPOUT = 0.3
"""Modality dropout of a run that does not set it (see :meth:`TrainConfig.modality_dropout_for`):
with it each modality's encoder also learns from the samples that a stronger modality would
decide alone, so weak modalities' relevance is not understated (docs/training.md)."""

RESUMABLE_CHANGES = frozenset({"epochs", "compile", "dropout_finetune"})
"""Settings that may differ when a run is resumed: ``epochs`` (train longer), ``compile`` (how
the same math is executed) and ``dropout_finetune`` (whether the last attempt, the fine-tune,
runs; a run resumed in its fine-tune with it off stops there); every other one must match."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run. Every field is JSON-safe; see the field help texts."""

    model: str = field(
        default="intense",
        metadata=_help("Architecture (registered models; intense is ours with interactions)."),
    )
    interactions: InteractionSpec = field(
        default="pairs",
        metadata=_help(
            "Interaction terms: none, pairs, all, a maximal order (e.g. 3), or a list such as "
            "m0*m1,m1*m2."
        ),
    )
    rank: int = field(
        default=8,
        metadata=_help(
            "Size r of each modality's interaction factor (an order-k term has r^k coordinates); "
            "tfn: projected size; lmf: rank."
        ),
    )
    p: float = field(
        default=2.0, metadata=_help("lp-norm of the relevance weights, p >= 1 (1 is sparsest).")
    )
    lam: float = field(
        default=1e-2, metadata=_help("Strength λ of the group-norm regulariser Ω_p in the loss.")
    )
    iterbn: bool = field(
        default=True,
        metadata=_help(
            "Wick-normalise interaction products (IterBN); --no-iterbn uses raw products of "
            "uncentred factors (shows degree inflation)."
        ),
    )
    vbn: bool = field(
        default=True,
        metadata=_help("Vector-wise batch norm on every block; --no-vbn feeds raw blocks."),
    )
    epochs: int = field(
        default=20,
        metadata=_help(
            "Maximal number of epochs of each training attempt (the first, every restart and "
            "the fine-tune; each stops earlier after --patience epochs without improvement)."
        ),
    )
    batch_size: int = field(default=128, metadata=_help("Training batch size."))
    lr: float = field(default=3e-3, metadata=_help("AdamW learning rate."))
    lr_decay: float = field(
        default=1.0,
        metadata=_help(
            "Multiply the learning rate by this after every epoch without a better validation "
            "loss (1 keeps it constant)."
        ),
    )
    restarts: int = field(
        default=2,
        metadata=_help(
            "Further attempts from the same initialisation with --restart-lr, --restart-lam and "
            "without dropout (modality and encoder dropout), the best validation loss over all "
            "attempts kept: after a first attempt with dropout always one (dropout can hide an "
            "interaction such as XOR), then while the selected model is not clearly better "
            "than chance or than its best single modality on validation (the learnt verdict); "
            "at most this many (0: never)."
        ),
    )
    restart_lr: float = field(
        default=1e-2,
        metadata=_help(
            "Learning rate of a restart (a larger step escapes the plateau on which "
            "interaction-only signals such as XOR can stall)."
        ),
    )
    restart_lam: float = field(
        default=5e-2,
        metadata=_help(
            "λ of a restart: a restart trains without dropout, and without that regulariser "
            "the stronger group-norm penalty keeps it from overfitting before it finds an "
            "interaction such as XOR."
        ),
    )
    dropout_finetune: bool = field(
        default=True,
        metadata=_help(
            "When validation selects the model of an attempt without dropout (a restart) "
            "while the first attempt trained with dropout, train that model once more with "
            "the first attempt's dropout, learning rate and λ, the best validation loss over "
            "all attempts kept: the interaction the restart found stays, and dropout "
            "strengthens the other modalities' encoders (less over-credited interaction, "
            "less overfitting); --no-dropout-finetune skips it."
        ),
    )
    weight_decay: float = field(
        default=1e-4,
        metadata=_help("AdamW weight decay of encoders and factors (never of the MNL head)."),
    )
    patience: int = field(
        default=5,
        metadata=_help("Stop after this many epochs without a better validation loss."),
    )
    seed: int = field(
        default=0, metadata=_help("Seed of initialisation, shuffling and (by default) data.")
    )
    max_grad_norm: float | None = field(
        default=None, metadata=_help("Clip the gradient norm to this value (off by default).")
    )
    class_weights: str = field(
        default="none",
        metadata=_help(
            "Loss weights: none, or balanced (classes weighted N / (C·n_c); multilabel: positive "
            "weight n_negative / n_positive per label), computed on the training split."
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "Compile the fusion head's training step with torch.compile (needs a C++ compiler; "
            "falls back with one warning; the first step takes tens of seconds). Only batches "
            "without missing modalities are compiled: with modality dropout, set "
            "--modality-dropout 0 to compile every step."
        ),
    )
    sync_stats: bool = field(
        default=False,
        metadata=_help(
            "Distributed training: compute the batch moments of centring, IterBN and vBN over "
            "all processes (all-reduced sums and counts, like SyncBatchNorm) instead of per "
            "process; P processes with batch b then train as one with batch P·b."
        ),
    )
    modality_dropout: float | None = field(
        default=None,
        metadata=_help(
            "Drop each modality of each training sample with this probability, so the model "
            "learns to predict from any subset and weak modalities get their own gradient "
            f"(default: {DEFAULT_MODALITY_DROPOUT:g} for a model with a missing-modality path "
            "and two or more modalities, else 0; a restart trains without it)."
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.interactions, tuple):
            object.__setattr__(self, "interactions", list(self.interactions))
        for f in fields(self):  # NumPy scalars (np.int64 seeds, np.float32 rates) as Python's
            value = getattr(self, f.name)
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                plain = int(value) if isinstance(value, numbers.Integral) else float(value)
                object.__setattr__(self, f.name, plain)
        checks = [
            (
                isinstance(self.model, str) and self.model in MODELS,
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS.names())}",
            ),
            (_int(self.rank) and self.rank >= 1, f"rank must be an integer >= 1, got {self.rank}"),
            (_real(self.p) and self.p >= 1, f"p must be >= 1, got {self.p}"),
            (_real(self.lam) and self.lam >= 0, f"lam must be >= 0, got {self.lam}"),
            (
                _real(self.restart_lam) and self.restart_lam >= 0,
                f"restart_lam must be >= 0, got {self.restart_lam}",
            ),
            (_int(self.epochs) and self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                _int(self.batch_size) and self.batch_size >= 2,
                f"batch_size must be >= 2 (batch statistics), got {self.batch_size}",
            ),
            (_real(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (
                _real(self.lr_decay) and 0 < self.lr_decay <= 1,
                f"lr_decay must be in (0, 1], got {self.lr_decay}",
            ),
            (
                _int(self.restarts) and self.restarts >= 0,
                f"restarts must be an integer >= 0, got {self.restarts}",
            ),
            (
                _real(self.restart_lr) and self.restart_lr > 0,
                f"restart_lr must be a finite number > 0, got {self.restart_lr}",
            ),
            (
                _real(self.weight_decay) and self.weight_decay >= 0,
                f"weight_decay must be >= 0, got {self.weight_decay}",
            ),
            (
                _int(self.patience) and self.patience >= 1,
                f"patience must be >= 1, got {self.patience}",
            ),
            (_int(self.seed) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed}"),
            (
                self.max_grad_norm is None
                or (_real(self.max_grad_norm) and self.max_grad_norm > 0),
                f"max_grad_norm must be > 0, got {self.max_grad_norm}",
            ),
            (
                self.class_weights in CLASS_WEIGHTS,
                f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got "
                f"{self.class_weights!r}",
            ),
            (
                self.modality_dropout is None
                or (_real(self.modality_dropout) and 0.0 <= self.modality_dropout < 1.0),
                f"modality_dropout must be in [0, 1), got {self.modality_dropout}",
            ),
        ]
        checks += [
            (
                isinstance(getattr(self, name), bool),
                f"{name} must be True or False, got {getattr(self, name)!r}",
            )
            for name in ("iterbn", "vbn", "dropout_finetune", "compile", "sync_stats")
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.compile and not MODELS.get(self.model).relevance:
            raise ValueError(
                f"compile applies to the fusion head of intense/mnl, not {self.model!r}"
            )
        if (self.modality_dropout or 0.0) > 0 and not MODELS.get(self.model).masks:
            capable = [n for n in MODELS.names() if MODELS.get(n).masks]
            raise ValueError(
                f"modality dropout needs a model with a missing-modality path "
                f"({' or '.join(capable)}), not {self.model!r}"
            )

    def modality_dropout_for(self, modalities: int) -> float:
        """The modality dropout a run with ``modalities`` modalities trains with:
        ``modality_dropout`` when set, else :data:`DEFAULT_MODALITY_DROPOUT` for a model with
        a missing-modality path and at least two modalities, else 0."""
        if self.modality_dropout is not None:
            return float(self.modality_dropout)
        if modalities >= 2 and MODELS.get(self.model).masks:
            return DEFAULT_MODALITY_DROPOUT
        return 0.0

    @property
    def given(self) -> frozenset[str]:
        """The fields the caller set explicitly (the others may take dataset defaults)."""
        return self.__dict__.get("_given", frozenset())

    def with_defaults(self, defaults: Mapping[str, Any]) -> TrainConfig:
        """This configuration with every field the caller did not set taken from ``defaults``."""
        unknown = sorted(set(defaults) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown training settings in dataset defaults: {unknown}")
        changes = {k: v for k, v in defaults.items() if k not in self.given}
        return self.replace(**changes) if changes else self

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; the fields set explicitly are those of both."""
        values = {**self.to_dict(), **changes}
        given = self.given | frozenset(changes)
        config = TrainConfig(**values)
        object.__setattr__(config, "_given", given)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """From :meth:`to_dict`'s output; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields whose values differ (``interactions`` compared as lists)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs[name]]


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_dataclass_init = TrainConfig.__init__


@functools.wraps(_dataclass_init)
def _init_recording_given(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
    _dataclass_init(self, *args, **kwargs)
    names = [f.name for f in fields(TrainConfig)]
    object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))


TrainConfig.__init__ = _init_recording_given  # type: ignore[method-assign]
