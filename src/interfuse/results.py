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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from scipy.stats import t as student_t

__all__ = [
    "RESULTS_OUTDATED",
    "SCHEMA",
    "Explanation",
    "LearntVerdict",
    "PosthocResult",
    "Relevance",
    "RelevanceEstimate",
    "RelevanceEstimates",
    "RelevanceEvidence",
    "RunResult",
    "SchemaError",
    "SeedSummary",
    "TermEstimate",
    "TermEvidence",
    "json_safe",
    "mean_std",
    "summarize_seeds",
]

SCHEMA = "interfuse-run/6"
"""Schema of ``results.json`` written by this version (``/3`` added ``estimates``, ``/4``
``selected_attempt``, ``/5`` ``selected_attempt_end``, ``/6`` ``model_sha256``)."""

RESULTS_OUTDATED = (
    "results.json was measured on an earlier model than best.safetensors holds now (the run was "
    "resumed and stopped before it finished); its numbers are not this model's: finish the run "
    "with --resume"
)
"""What readers say when ``results.json`` is of an earlier model (``RunResult.model_sha256``)."""

READABLE_SCHEMAS = (
    "interfuse-run/2",
    "interfuse-run/3",
    "interfuse-run/4",
    "interfuse-run/5",
    SCHEMA,
)
"""Schemas this version reads: ``/2`` files load with ``estimates = None``, ``/2`` and ``/3``
files with ``selected_attempt = None``, ``/2``–``/4`` files with ``selected_attempt_end =
None``."""

REPORT, RELEVANCE_FIGURE, HISTORY_FIGURE = "report.md", "relevance.png", "history.png"
"""The rendered files of a run folder (docs/run-folder.md), next to ``results.json``."""


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
class LearntVerdict:
    """Did the model learn anything the relevance could describe? Decided on the validation
    split (never the test split) by a paired bootstrap over its samples.

    The measure is the validation loss (cross-entropy / MSE, the quantity the model is selected
    on). ``chance``: the loss of the best constant predictor fitted on the training targets
    (class or label frequencies, the mean); ``single``: the loss of the best single modality
    through the model's missing-modality path (``None`` for models without one). A gain is
    "clear" when the lower end of its one-sided ``level`` bootstrap interval exceeds ``margin``
    (a fraction of the chance loss).

    ``status``: ``"not_learnt"`` (not clearly better than chance: the shares do not describe the
    data), ``"single_modality"`` (better than chance, not clearly better than the best single
    modality alone: shares of the other terms are not supported), ``"learnt"``.
    """

    status: str
    message: str
    loss: float
    chance: float
    gain_over_chance: float
    gain_over_chance_low: float
    best_single: str | None = None
    single: float | None = None
    gain_over_single: float | None = None
    gain_over_single_low: float | None = None
    margin: float = 0.01
    level: float = 0.95
    draws: int = 1000
    split: str = "val"

    @property
    def learnt(self) -> bool:
        return self.status != "not_learnt"

    @property
    def headline(self) -> str:
        """The one line a run prints first."""
        return {
            "not_learnt": "NOT LEARNT — ",
            "single_modality": "NO GAIN OVER ONE MODALITY — ",
        }.get(self.status, "Learnt — ") + self.message

    def to_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LearntVerdict:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class TermEvidence:
    """Held-out evidence for one term (see :class:`RelevanceEvidence`)."""

    heldout_share: float
    share_low: float
    share_high: float
    loss_increase: float
    loss_increase_low: float
    p_value: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class RelevanceEvidence:
    """Intervals and a verdict per term, from the validation split (bootstrap over its samples).

    The built-in β shares are a function of the trained weights only; they have no sampling
    distribution over held-out data. What is bootstrapped is their *held-out* counterpart: the
    same closed form (``relevance_from_norms``) applied to block norms measured on validation
    data, ``a_t = sqrt(D_t · mean_i ‖W_t z_t,i‖²)`` — equal to ‖W_t‖_F when the normalised block
    is isotropic (E z zᵀ = I/D_t, the vBN scale), so the held-out share then equals the β
    share. ``share_low``/``share_high`` is the percentile ``level`` interval of that held-out
    share for this fixed model: it covers sampling noise of the validation data, not the
    variability of training (seeds, training sample).

    ``verdict`` per term: ``"relevant"`` when removing only that term's block from the head
    (its expectation 0 in place of W_t z_t) raises the validation loss, by a one-sided bootstrap
    test of H0: loss increase ≤ 0 at false-positive rate ``alpha`` per term (``p_value`` < alpha);
    else ``"not significant"``.
    """

    terms: dict[str, TermEvidence]
    level: float = 0.95
    alpha: float = 0.05
    draws: int = 1000
    split: str = "val"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "terms": {t: e.to_dict() for t, e in self.terms.items()},
                "level": self.level,
                "alpha": self.alpha,
                "draws": self.draws,
                "split": self.split,
            }
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RelevanceEvidence:
        return cls(
            terms={
                str(t): TermEvidence(
                    **{k: (math.nan if v is None and k != "verdict" else v) for k, v in e.items()}
                )
                for t, e in values["terms"].items()
            },
            level=float(values.get("level", 0.95)),
            alpha=float(values.get("alpha", 0.05)),
            draws=int(values.get("draws", 1000)),
            split=str(values.get("split", "val")),
        )

    def intervals(self) -> dict[str, tuple[float, float]]:
        return {t: (e.share_low, e.share_high) for t, e in self.terms.items()}


@dataclass(frozen=True)
class TermEstimate:
    """One term under one relevance estimator (see :class:`RelevanceEstimate`).

    ``share``: the term's share (non-negative, the shares of an estimator sum to 1);
    ``value``: the estimator's raw value (unit in :attr:`RelevanceEstimate.unit`);
    ``low``/``high``: the percentile interval of the share (NaN when the estimator has no
    sampling distribution); ``p_value`` and ``verdict``: the test of "share > margin" (NaN and
    ``""`` without an interval).
    """

    share: float
    value: float
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TermEstimate:
        return cls(
            **{
                k: (str(v) if k == "verdict" else (math.nan if v is None else float(v)))
                for k, v in values.items()
            }
        )

    def covers(self, value: float) -> bool:
        """Whether the interval contains ``value`` (False without an interval)."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class RelevanceEstimate:
    """One estimator's relevance of every term, on held-out data, with intervals.

    ``method``/``label``/``description``: the estimator (registry name, column heading, what a
    value is); ``unit`` of :attr:`TermEstimate.value`; ``details``: anything else the estimator
    reports (JSON-safe; e.g. exact or sampled, the Monte-Carlo error).
    """

    method: str
    label: str
    description: str
    unit: str
    terms: dict[str, TermEstimate]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shares(self) -> dict[str, float]:
        return {t: e.share for t, e in self.terms.items()}

    @property
    def has_intervals(self) -> bool:
        return any(math.isfinite(e.low) for e in self.terms.values())

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "method": self.method,
                "label": self.label,
                "description": self.description,
                "unit": self.unit,
                "terms": {t: e.to_dict() for t, e in self.terms.items()},
                "details": self.details,
            }
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RelevanceEstimate:
        return cls(
            method=str(values["method"]),
            label=str(values["label"]),
            description=str(values["description"]),
            unit=str(values["unit"]),
            terms={str(t): TermEstimate.from_dict(e) for t, e in values["terms"].items()},
            details=dict(values.get("details") or {}),
        )


@dataclass(frozen=True)
class RelevanceEstimates:
    """Every registered relevance estimator on the validation split, and the headline.

    ``headline`` names the estimator the report leads with (the most faithful one in the
    fidelity suite, BENCHMARKS.md §1). Intervals are paired percentile bootstrap intervals
    (Efron 1979) at ``level`` over the ``split``'s samples (``draws`` resamples, the same
    resamples for every estimator), for this fixed model: they cover the sampling noise of the
    held-out data (and the Monte-Carlo error of a sampled estimator), not the variability of
    training. ``verdict`` per term: ``"relevant"`` when the share exceeds ``margin`` by a
    one-sided bootstrap test at false-positive rate ``alpha`` (H0: share ≤ margin), else
    ``"not significant"``.
    """

    headline: str
    estimates: dict[str, RelevanceEstimate]
    level: float = 0.95
    alpha: float = 0.05
    margin: float = 0.01
    draws: int = 1000
    split: str = "val"

    def __post_init__(self) -> None:
        if self.headline not in self.estimates:
            raise ValueError(
                f"headline estimator {self.headline!r} is not among {sorted(self.estimates)}"
            )

    @property
    def best(self) -> RelevanceEstimate:
        """The headline estimate."""
        return self.estimates[self.headline]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "headline": self.headline,
                "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
                "level": self.level,
                "alpha": self.alpha,
                "margin": self.margin,
                "draws": self.draws,
                "split": self.split,
            }
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RelevanceEstimates:
        return cls(
            headline=str(values["headline"]),
            estimates={
                str(k): RelevanceEstimate.from_dict(e) for k, e in values["estimates"].items()
            },
            level=float(values.get("level", 0.95)),
            alpha=float(values.get("alpha", 0.05)),
            margin=float(values.get("margin", 0.01)),
            draws=int(values.get("draws", 1000)),
            split=str(values.get("split", "val")),
        )


@dataclass(frozen=True)
class RunResult:
    """What one training run produced (the content of ``results.json``).

    Attributes:
        dataset: name of the data (registered dataset or the task's name).
        task: ``"classification"``, ``"regression"`` or ``"multilabel"``.
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
            ``fingerprint`` (SHA-256 of the preprocessed splits), ``masks_fingerprint`` (of
            their missing-modality masks), ``split_sizes``, ``present``
            (samples with each modality per split) and the loader's ``info``.
        label_relevance: multilabel tasks, per label: relevance from the head rows of that label.
        verdict: whether the model learnt anything on held-out data (:class:`LearntVerdict`);
            ``None`` for runs that did not compute it.
        relevance_evidence: intervals and a verdict per term (:class:`RelevanceEvidence`);
            ``None`` for models without an MNL head.
        estimates: every registered relevance estimator with intervals and verdicts, and the
            headline (:class:`RelevanceEstimates`); ``None`` for models without an MNL head
            and for results of schema ``interfuse-run/2``.
        attempts: training attempts (1 + the restarts that fired, see ``TrainConfig.restarts``,
            + the fine-tune, see ``TrainConfig.dropout_finetune``); the selected model is the
            best on validation over all of them.
        selected_attempt: the attempt of the selected model: ``"first"``, ``"restart k"`` or
            ``"fine-tune"``; ``None`` for results written before it was recorded.
        selected_attempt_end: the last epoch that attempt trained (``epochs_run`` when it is
            the last attempt); ``None`` for results written before it was recorded.
        model_sha256: the digest ``best.safetensors`` recorded for the model these results were
            measured on (``interfuse.run.model_digest``): a later model in that file (a resumed
            run stopped before it finished) no longer matches, and readers say so
            (``interfuse.run.results_outdated``); ``None`` for results of schema /2–/5.
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
    verdict: LearntVerdict | None = None
    relevance_evidence: RelevanceEvidence | None = None
    estimates: RelevanceEstimates | None = None
    attempts: int = 1
    selected_attempt: str | None = None
    selected_attempt_end: int | None = None
    model_sha256: str | None = None
    schema: str = SCHEMA

    @property
    def modalities(self) -> list[str]:
        return list(self.model.get("modalities", []))

    @property
    def converged(self) -> bool:
        """False when the selected model comes from the last epoch its attempt trained: that
        attempt ran out of epochs while still improving (training may have stopped too soon).
        An attempt that stopped early has its best epoch before its last (patience ≥ 1)."""
        if self.selected_attempt_end is None:  # results of schema /2–/4
            return self.stopped_early or self.best_epoch < self.epochs_run
        return self.best_epoch < self.selected_attempt_end

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
        values["verdict"] = None if self.verdict is None else self.verdict.to_dict()
        values["relevance_evidence"] = (
            None if self.relevance_evidence is None else self.relevance_evidence.to_dict()
        )
        values["estimates"] = None if self.estimates is None else self.estimates.to_dict()
        return json_safe(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "results") -> RunResult:
        """Parse a results document; :class:`SchemaError` names ``source`` and what is wrong."""
        if not isinstance(values, Mapping):
            raise SchemaError(f"{source}: expected a JSON object at the top level")
        schema = values.get("schema")
        if schema not in READABLE_SCHEMAS:
            if schema is None and "schema_version" in values:  # interfuse.coordinated's results
                raise SchemaError(
                    f"{source} is the result of `interfuse coordinated "
                    f"{values.get('task', '…')}`, not of `interfuse train`: it has no model, "
                    f"and its report.md is already written"
                )
            if schema is None:
                raise SchemaError(
                    f"{source} was made by an older version of interfuse (no schema version; "
                    f"this version reads {SCHEMA!r}); retrain the run to use it here"
                )
            raise SchemaError(
                f"{source}: unknown schema {schema!r}; this version reads "
                f"{', '.join(map(repr, READABLE_SCHEMAS))}"
            )
        known = {f.name for f in fields(cls)}
        unexpected = sorted(set(values) - known)
        if unexpected:
            raise SchemaError(f"{source}: unexpected keys {unexpected}")
        for key in ("model", "config", "metrics", "data"):
            if key in values and not isinstance(values[key], Mapping):
                raise SchemaError(
                    f"{source}: malformed results ({key!r} must be an object, got "
                    f"{type(values[key]).__name__})"
                )
        digest = values.get("model_sha256")
        if digest is not None and not isinstance(digest, str):
            raise SchemaError(
                f"{source}: malformed results ('model_sha256' must be a string, got "
                f"{type(digest).__name__})"
            )
        try:
            relevance = values.get("relevance")
            labels = values.get("label_relevance")
            verdict = values.get("verdict")
            evidence = values.get("relevance_evidence")
            estimates = values.get("estimates")
            # an undefined metric is written null; in memory, as at training, it is NaN
            tables = {
                k: _undefined_as_nan(values[k])
                for k in ("metrics", "missing_modalities")
                if values.get(k) is not None
            }
            return cls(
                **{
                    **dict(values),
                    **tables,
                    "relevance": None if relevance is None else Relevance.from_dict(relevance),
                    "label_relevance": None
                    if labels is None
                    else {k: Relevance.from_dict(r) for k, r in labels.items()},
                    "verdict": None if verdict is None else LearntVerdict.from_dict(verdict),
                    "relevance_evidence": None
                    if evidence is None
                    else RelevanceEvidence.from_dict(evidence),
                    "estimates": None
                    if estimates is None
                    else RelevanceEstimates.from_dict(estimates),
                    "schema": SCHEMA,
                }
            )
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise SchemaError(f"{source}: malformed results ({error})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "results.json") -> RunResult:
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:  # nested beyond the stack
            raise SchemaError(f"{source}: invalid JSON ({error})") from None
        return cls.from_dict(values, source)


def _null_as_nan(row: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` with the ``null`` of an undefined value read as NaN."""
    return {n: math.nan if v is None else v for n, v in row.items()}


def _undefined_as_nan(table: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{set: {metric: value}}`` with the ``null`` of an undefined metric read as NaN."""
    return {k: _null_as_nan(row) for k, row in table.items()}


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
    "all": {…}}``); ``run``: the run folder and checkpoint, when explained from one;
    ``absent``: modalities that no sample of the split has — removing them changes nothing, so
    every post-hoc value of theirs is 0 whatever the model learnt from them.
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
    absent: list[str] = field(default_factory=list)
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
                    # an undefined ρ, metric or v(S) is written null; in memory it is NaN
                    "coalitions": _undefined_as_nan(values["coalitions"]),
                    "game": _null_as_nan(values["game"]),
                    "agreement": _undefined_as_nan(values["agreement"]),
                    "explanations": {
                        k: Explanation.from_dict(e) for k, e in values["explanations"].items()
                    },
                }
            )
        except (TypeError, KeyError, AttributeError) as error:
            raise SchemaError(f"{source}: malformed explanation ({error})") from None

    def column(self, method: str) -> dict[str, float | None]:
        """Per-term values of one method (``"truth"`` for the ground truth)."""
        if method == "truth":
            return {t: (self.truth or {}).get(t, 0.0) for t in self.terms}
        return dict(self.explanations[method].scores)


@dataclass(frozen=True)
class SeedSummary:
    """Mean and standard deviation over runs that differ only in their seed.

    ``metrics[split][metric]`` and ``shares[term]`` (β shares) are ``(mean, std)`` over the runs
    (std with ``n − 1``; undefined for one run: NaN, ``null`` in ``summary.json``, ``n/a`` in
    ``summary.md``); ``seeds`` lists the seeds in run order.
    ``headline_shares[term]``: ``(mean, std)`` of the headline estimator's shares (named
    ``headline``) and ``headline_intervals[term]`` the 95 % Student-t interval of their mean over
    seeds (``mean ± t_{0.975, n−1} · std / √n``; it includes training variability, and the
    held-out sampling noise of each run as part of the seed-to-seed spread; empty for one run).
    """

    seeds: list[int]
    metrics: dict[str, dict[str, tuple[float, float]]]
    shares: dict[str, tuple[float, float]]
    headline: str | None = None
    headline_shares: dict[str, tuple[float, float]] = field(default_factory=dict)
    headline_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "seeds": self.seeds,
                "metrics": {
                    s: {k: {"mean": m, "std": d} for k, (m, d) in v.items()}
                    for s, v in self.metrics.items()
                },
                "shares": {t: {"mean": m, "std": d} for t, (m, d) in self.shares.items()},
                "headline": self.headline,
                "headline_shares": {
                    t: {"mean": m, "std": d} for t, (m, d) in self.headline_shares.items()
                },
                "headline_intervals": {t: list(v) for t, v in self.headline_intervals.items()},
            }
        )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1) of runs' values; the deviation is NaN for
    one run (``n/a`` in tables: one run says nothing about the spread)."""
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return mean, math.sqrt(var)


def summarize_seeds(results: Mapping[int, RunResult]) -> SeedSummary:
    """:class:`SeedSummary` of runs keyed by seed (metrics present in every run)."""
    if not results:
        raise ValueError("no runs to summarise")
    runs = list(results.values())
    metrics = {
        split: {
            k: mean_std([float(r.metrics[split][k]) for r in runs])
            for k in runs[0].metrics[split]
            if all(r.metrics.get(split, {}).get(k) is not None for r in runs)
        }
        for split in runs[0].metrics
    }
    terms = runs[0].relevance.terms if runs[0].relevance is not None else []
    shares = {
        t: mean_std([r.relevance.shares[t] for r in runs if r.relevance is not None])
        for t in terms
        if all(r.relevance is not None and t in r.relevance.shares for r in runs)
    }
    headline = runs[0].estimates.headline if runs[0].estimates is not None else None
    headline_shares: dict[str, tuple[float, float]] = {}
    headline_intervals: dict[str, tuple[float, float]] = {}
    if headline is not None and all(
        r.estimates is not None and r.estimates.headline == headline for r in runs
    ):
        per_run = [r.estimates.best.shares for r in runs if r.estimates is not None]
        for t in per_run[0]:
            mean, std = mean_std([s[t] for s in per_run])
            headline_shares[t] = (mean, std)
            if len(per_run) > 1:
                half = float(student_t.ppf(0.975, len(per_run) - 1)) * std / math.sqrt(len(per_run))
                headline_intervals[t] = (max(mean - half, 0.0), min(mean + half, 1.0))
    else:
        headline = None
    return SeedSummary(
        list(results), metrics, shares, headline, headline_shares, headline_intervals
    )
