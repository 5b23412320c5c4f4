"""Typed results that cross layers: relevance of a model and everything a run produced.

These are plain, frozen dataclasses of numbers and strings with a JSON form
(:meth:`RunResult.to_json` / :meth:`RunResult.from_json`) and a schema version, so that the
trainer, the report renderer, ``interfuse explain`` and users' scripts agree on one schema
instead of reading dicts by string keys. ``results.json`` in a run folder is
``RunResult.to_json()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "SCHEMA",
    "Explanation",
    "PosthocResult",
    "Relevance",
    "RunResult",
    "SchemaError",
    "SeedSummary",
    "json_safe",
    "summarize_seeds",
]

SCHEMA = "interfuse-run/2"
"""Schema of ``results.json`` written by this version."""


class SchemaError(ValueError):
    """A results file of another (older or unknown) schema, or one that does not parse."""


@dataclass(frozen=True)
class Relevance:
    """Relevance of each term: ``beta`` (‖β‖_p = 1) and ``shares`` (β normalised to sum to 1)."""

    p: float
    beta: dict[str, float]
    shares: dict[str, float]

    @property
    def terms(self) -> list[str]:
        return list(self.beta)

    def ranking(self) -> list[str]:
        """Terms sorted by decreasing share."""
        return sorted(self.shares, key=self.shares.__getitem__, reverse=True)

    def to_dict(self) -> dict[str, object]:
        return {"p": self.p, "beta": dict(self.beta), "shares": dict(self.shares)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Relevance:
        return cls(
            p=float(values["p"]),
            beta={str(t): float(v) for t, v in values["beta"].items()},
            shares={str(t): float(v) for t, v in values["shares"].items()},
        )

    def table(self) -> str:
        """A plain-text table, one row per term, sorted by share."""
        width = max([len("term"), *(len(t) for t in self.beta)])
        lines = [
            f"{'term':<{width}}  {'share':>7}  {'beta (p=' + format(self.p, 'g') + ')':>12}",
            f"{'-' * width}  {'-' * 7}  {'-' * 12}",
        ]
        for t in self.ranking():
            bar = "#" * round(30 * self.shares[t])
            lines.append(f"{t:<{width}}  {self.shares[t]:7.3f}  {self.beta[t]:12.4f}  {bar}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class RunResult:
    """What one training run produced (the content of ``results.json``).

    Attributes:
        dataset: name of the data (registered dataset or the task's name).
        task: ``"classification"`` or ``"regression"``.
        model: the model description (:class:`interfuse.models.ModelSpec` as a dict).
        config: the training configuration that was used (``TrainConfig`` as a dict, after
            dataset defaults were applied).
        metrics: ``{split: {metric: value}}`` of the selected (best-validation) model.
        relevance: built-in relevance, ``None`` for models without an MNL head.
        best_epoch, epochs_run, stopped_early, train_seconds: the course of training.
        missing_modalities: test metrics with each set of modalities missing
            (``{"none": …, "a": …, "a+b": …}``), ``None`` for models without a missing path.
        ground_truth: known relevance of synthetic data (``term_shares``, ``bayes_accuracy``…).
        class_names: display names of classes ``0 .. C-1`` (classification).
        data: provenance — ``source`` (dataset, options, path, SHA-256 of the file),
            ``fingerprint`` (SHA-256 of the preprocessed splits), ``split_sizes``, ``present``
            (samples with each modality per split) and the loader's ``info``.
        label_relevance: multilabel tasks, per label: relevance from the head rows of that label.
        schema: the schema version (:data:`SCHEMA`).
    """

    dataset: str
    task: str
    model: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    relevance: Relevance | None
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    missing_modalities: dict[str, dict[str, float]] | None = None
    ground_truth: dict[str, Any] | None = None
    class_names: list[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    label_relevance: dict[str, Relevance] | None = None
    schema: str = SCHEMA

    @property
    def modalities(self) -> list[str]:
        return list(self.model.get("modalities", []))

    @property
    def converged(self) -> bool:
        """False when the best epoch is the last one run without early stopping (training may
        have stopped too soon)."""
        return self.stopped_early or self.best_epoch < self.epochs_run

    @property
    def truth_shares(self) -> dict[str, float] | None:
        """Ground-truth relevance shares per term, if the data has them."""
        shares = (self.ground_truth or {}).get("term_shares")
        return dict(shares) if shares else None

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["relevance"] = None if self.relevance is None else self.relevance.to_dict()
        values["label_relevance"] = (
            None
            if self.label_relevance is None
            else {k: r.to_dict() for k, r in self.label_relevance.items()}
        )
        return json_safe(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "results") -> RunResult:
        """Parse a results document; :class:`SchemaError` names ``source`` and what is wrong."""
        if not isinstance(values, Mapping):
            raise SchemaError(f"{source}: expected a JSON object at the top level")
        schema = values.get("schema")
        if schema != SCHEMA:
            if schema is None:
                raise SchemaError(
                    f"{source} was made by an older version of interfuse (no schema version; "
                    f"this version reads {SCHEMA!r}); retrain the run to use it here"
                )
            raise SchemaError(f"{source}: unknown schema {schema!r}; this version reads {SCHEMA!r}")
        known = {f.name for f in fields(cls)}
        unexpected = sorted(set(values) - known)
        if unexpected:
            raise SchemaError(f"{source}: unexpected keys {unexpected}")
        try:
            relevance = values.get("relevance")
            labels = values.get("label_relevance")
            return cls(
                **{
                    **dict(values),
                    "relevance": None if relevance is None else Relevance.from_dict(relevance),
                    "label_relevance": None
                    if labels is None
                    else {k: Relevance.from_dict(r) for k, r in labels.items()},
                }
            )
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise SchemaError(f"{source}: malformed results ({error})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "results.json") -> RunResult:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise SchemaError(f"{source}: invalid JSON ({error})") from None
        return cls.from_dict(values, source)


def json_safe(value: Any) -> Any:
    """Non-finite floats → ``None`` and tuples → lists, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Explanation:
    """One explainer's relevance per term of a trained model.

    ``scores`` maps term names (``"a"``, ``"a*b"``) to a value, or ``None`` where the method has
    none (e.g. built-in relevance of a baseline); ``details`` holds the method's other results
    (JSON-safe). ``label`` is the column heading; ``description`` says what a value means.
    """

    method: str
    label: str
    description: str
    scores: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Explanation:
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @property
    def has_scores(self) -> bool:
        return any(v is not None for v in self.scores.values())


@dataclass(frozen=True)
class PosthocResult:
    """Post-hoc explanations of a trained model on one split (``explain.json``).

    ``coalitions``: metrics with only the modalities of S present (S written ``{a,b}``);
    ``game``: v(S); ``explanations``: one :class:`Explanation` per explainer that ran, in
    registration order; ``truth``: ground-truth shares per term, if known; ``agreement``:
    Spearman ρ between every two methods with values for every term (``{"unimodal": {"a~b": ρ},
    "all": {…}}``); ``run``: the run folder and checkpoint, when explained from one.
    """

    split_size: int
    removal: str
    metric: str
    modalities: list[str]
    terms: list[str]
    cost: str
    coalitions: dict[str, dict[str, float]]
    game: dict[str, float]
    explanations: dict[str, Explanation]
    truth: dict[str, float] | None
    agreement: dict[str, dict[str, float]]
    seconds: float
    run: dict[str, str] = field(default_factory=dict)
    schema: str = "interfuse-explain/1"

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["explanations"] = {k: e.to_dict() for k, e in self.explanations.items()}
        return json_safe(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "explain.json") -> PosthocResult:
        if values.get("schema") != cls.schema:
            raise SchemaError(
                f"{source}: not an explanation of this version (schema {values.get('schema')!r})"
            )
        try:
            return cls(
                **{
                    **dict(values),
                    "explanations": {
                        k: Explanation.from_dict(e) for k, e in values["explanations"].items()
                    },
                }
            )
        except (TypeError, KeyError) as error:
            raise SchemaError(f"{source}: malformed explanation ({error})") from None

    def column(self, method: str) -> dict[str, float | None]:
        """Per-term values of one method (``"truth"`` for the ground truth)."""
        if method == "truth":
            return {t: (self.truth or {}).get(t, 0.0) for t in self.terms}
        return dict(self.explanations[method].scores)


@dataclass(frozen=True)
class SeedSummary:
    """Mean and standard deviation over runs that differ only in their seed.

    ``metrics[split][metric]`` and ``shares[term]`` are ``(mean, std)`` over the runs (std with
    ``n − 1``; 0 for one run); ``seeds`` lists the seeds in run order.
    """

    seeds: list[int]
    metrics: dict[str, dict[str, tuple[float, float]]]
    shares: dict[str, tuple[float, float]]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "seeds": self.seeds,
                "metrics": {
                    s: {k: {"mean": m, "std": d} for k, (m, d) in v.items()}
                    for s, v in self.metrics.items()
                },
                "shares": {t: {"mean": m, "std": d} for t, (m, d) in self.shares.items()},
            }
        )


def summarize_seeds(results: Mapping[int, RunResult]) -> SeedSummary:
    """:class:`SeedSummary` of runs keyed by seed (metrics present in every run)."""
    if not results:
        raise ValueError("no runs to summarise")
    runs = list(results.values())

    def stats(values: list[float]) -> tuple[float, float]:
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return mean, math.sqrt(var)

    metrics = {
        split: {
            k: stats([float(r.metrics[split][k]) for r in runs])
            for k in runs[0].metrics[split]
            if all(r.metrics.get(split, {}).get(k) is not None for r in runs)
        }
        for split in runs[0].metrics
    }
    terms = runs[0].relevance.terms if runs[0].relevance is not None else []
    shares = {
        t: stats([r.relevance.shares[t] for r in runs if r.relevance is not None])
        for t in terms
        if all(r.relevance is not None and t in r.relevance.shares for r in runs)
    }
    return SeedSummary(list(results), metrics, shares)
