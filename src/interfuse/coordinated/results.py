"""Typed results of the coordinated tasks: frozen dataclasses with a schema version and JSON.

Every result records its task, seed, settings and metrics; :meth:`to_json` / :meth:`from_json`
round-trip exactly (tuples stay tuples), :meth:`save` writes atomically, and :func:`load_result`
reads any of them back by its ``task`` field. A file with another schema version, or with a
missing or mistyped field, is refused with one line naming it rather than misread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from interfuse.io import atomic_write_text

__all__ = [
    "SCHEMA_VERSION",
    "CaptionResult",
    "ColearnResult",
    "GroundingResult",
    "RetrievalResult",
    "ZeroShotResult",
    "load_result",
]

SCHEMA_VERSION = 1

R = TypeVar("R", bound="_Result")


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON-read ``value`` has the type ``hint`` of a result field (ints pass as
    floats; booleans are not numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (int, str):
        return isinstance(value, hint) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    return True


@dataclass(frozen=True)
class _Result:
    task: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "task": self.task, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"results schema version {version} is not supported (expected {SCHEMA_VERSION})"
            )
        if data.get("task") != cls.task:
            raise ValueError(f"expected a {cls.task!r} result, got task {data.get('task')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"{cls.task} result lacks {', '.join(sorted(missing))}")
        values = {k: _tupled(data[k]) for k in names}
        hints = typing.get_type_hints(cls)
        wrong = sorted(k for k in names if not _conforms(values[k], hints[k]))
        if wrong:
            raise ValueError(
                f"{cls.task} result: {', '.join(wrong)} not of the expected type "
                f"({'; '.join(f'{k}: {values[k]!r}' for k in wrong)})"
            )
        return cls(**values)

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_json())

    def metrics(self) -> dict[str, float]:
        """The headline numbers (name → value) that benchmarks aggregate over seeds."""
        return {
            f.name: float(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("seed", "seconds")
            and isinstance(getattr(self, f.name), (int, float))
            and not isinstance(getattr(self, f.name), bool)
        }


@dataclass(frozen=True)
class ZeroShotResult(_Result):
    """DeViSE zero-shot on unseen (shape, colour) pairs and generalised zero-shot (GZSL).

    ``zsl_top1``: accuracy among the unseen classes only (chance ``1 / n_unseen``);
    ``gzsl_seen`` / ``gzsl_unseen``: per-class mean accuracy over all classes on seen- / unseen-
    class test scenes, ``gzsl_harmonic`` their harmonic mean; ``classifier_seen``: a softmax
    classifier (same CNN) on the seen classes, whose unseen accuracy is 0 by construction.
    """

    task: ClassVar[str] = "zeroshot"
    seed: int
    settings: dict[str, Any]
    text_encoder: str
    seen_classes: tuple[str, ...]
    unseen_classes: tuple[str, ...]
    n_train: int
    n_test_unseen: int
    n_test_seen: int
    zsl_top1: float
    zsl_chance: float
    gzsl_seen: float
    gzsl_unseen: float
    gzsl_harmonic: float
    gzsl_chance: float
    classifier_seen: float
    classifier_gzsl_harmonic: float
    per_class_unseen: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class RetrievalResult(_Result):
    """Image↔caption retrieval in a contrastive space on held-out scenes (R@K, higher better)."""

    task: ClassVar[str] = "retrieval"
    seed: int
    settings: dict[str, Any]
    text_encoder: str
    n_train: int
    n_test_images: int
    n_test_captions: int
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    i2t_r1_chance: float
    t2i_r1_chance: float
    seconds: float = 0.0


@dataclass(frozen=True)
class GroundingResult(_Result):
    """Pointing accuracy of word-to-region attention (words of the given kind) vs baselines."""

    task: ClassVar[str] = "grounding"
    seed: int
    settings: dict[str, Any]
    n_train: int
    n_test_words: int
    pointing_shape: float
    pointing_colour: float
    pointing_all: float
    random_baseline: float
    centre_baseline: float
    random_baseline_shape: float
    centre_baseline_shape: float
    retrieval_i2t_r1: float
    seconds: float = 0.0


@dataclass(frozen=True)
class CaptionResult(_Result):
    """Example-based captioning (nearest training caption) scored by BLEU vs random captions."""

    task: ClassVar[str] = "caption"
    seed: int
    settings: dict[str, Any]
    text_encoder: str
    n_train: int
    n_test: int
    bleu4: float
    bleu1: float
    random_bleu4: float
    random_bleu1: float
    exact_match: float
    examples: tuple[tuple[str, str, str], ...] = ()
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in super().metrics().items() if k != "examples"}


def fraction_tag(fraction: float) -> str:
    """The label fraction as a percentage in metric names: ``0.05`` → ``"5%"``, ``0.125`` →
    ``"12.5%"`` (6 significant digits, so nearby fractions keep apart)."""
    return f"{100 * fraction:g}%"


@dataclass(frozen=True)
class ColearnResult(_Result):
    """mfeat co-learning: weak-view test accuracy alone vs helped by a strong view, per label
    fraction (``fractions[i]`` ↔ ``weak_alone[i]``, ``weak_helped[i]``, ``strong_alone[i]``)."""

    task: ClassVar[str] = "colearn"
    seed: int
    settings: dict[str, Any]
    weak_view: str
    strong_view: str
    n_train: int
    n_test: int
    fractions: tuple[float, ...]
    n_labelled: tuple[int, ...]
    weak_alone: tuple[float, ...]
    weak_helped: tuple[float, ...]
    strong_alone: tuple[float, ...]
    weak_all_labels: float
    chance: float
    seconds: float = 0.0

    def __post_init__(self) -> None:
        per_fraction = (self.n_labelled, self.weak_alone, self.weak_helped, self.strong_alone)
        if any(len(values) != len(self.fractions) for values in per_fraction):
            raise ValueError(
                "colearn result: n_labelled, weak_alone, weak_helped and strong_alone need one "
                "entry per label fraction"
            )

    def metrics(self) -> dict[str, float]:
        out = {"weak_all_labels": self.weak_all_labels, "chance": self.chance}
        for i, f in enumerate(self.fractions):
            tag = fraction_tag(f)
            out[f"weak_alone@{tag}"] = self.weak_alone[i]
            out[f"weak_helped@{tag}"] = self.weak_helped[i]
            out[f"strong_alone@{tag}"] = self.strong_alone[i]
        return out


RESULT_TYPES: dict[str, type[_Result]] = {
    t.task: t
    for t in (ZeroShotResult, RetrievalResult, GroundingResult, CaptionResult, ColearnResult)
}


def load_result(path: str | os.PathLike[str]) -> _Result:
    """Read a results.json written by any coordinated task."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(task, str) or task not in RESULT_TYPES:
        raise ValueError(f"{path}: not a coordinated result (task {task!r})")
    try:
        return RESULT_TYPES[task].from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
