"""The run folder: one self-contained artefact per training run.

A run folder holds (see ``docs/run-folder.md``):

* ``best.safetensors`` / ``last.safetensors`` — checkpoints. Each holds the model weights, the
  fitted preprocessing (scaler statistics, class labels, task) and, in its header, the model
  description (:class:`~interfuse.models.ModelSpec`), the training configuration, the data
  provenance and the training state; ``last`` also holds the optimiser. One SHA-256 covers the
  header and every tensor.
* ``results.json`` — :class:`~interfuse.results.RunResult` (schema-versioned).
* ``config.json`` — the configuration and data provenance, written when the run starts.
* ``history.csv`` — one row per epoch; ``report.md`` and figures, rendered from the results.
* ``.lock`` — held (``flock``) while a process writes the folder.

:func:`load_run` brings a run back as a :class:`Run` that predicts from *raw* arrays exactly as
training saw them, and that rebuilds its data for explanations. Nothing in a run folder depends
on where the folder lies, so a moved folder loads the same.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .budget import MemoryEstimate, check_budget
from .checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from .data.arrays import LABELS, group_splits, mark_missing, read_arrays, split_masks
from .data.batching import TensorData
from .data.preprocess import Preprocessor
from .data.registry import load_dataset
from .data.task import TaskData
from .inference import Prediction, as_mask, check_batch_size, predict
from .metrics import compute_metrics
from .models import ModelSpec, build_model, model_entry
from .results import PosthocResult, RunResult, SchemaError

__all__ = [
    "BEST",
    "LAST",
    "Run",
    "RunFolderError",
    "RunPrediction",
    "explained_model",
    "explanations_outdated",
    "load_run",
    "lock_run_folder",
    "model_digest",
    "read_history",
    "read_results",
    "results_outdated",
    "save_run_checkpoint",
]

LAST = "last.safetensors"
BEST = "best.safetensors"
RESULTS = "results.json"
CONFIG = "config.json"
HISTORY = "history.csv"
LOCK = ".lock"
RUN_YAML = "run.yaml"
EXPLAIN_JSON = "explain.json"
CHUNK_BYTES = 16 * 2**20
"""About how many bytes of float64 :meth:`Run.predict_chunks` preprocesses at a time."""


class RunFolderError(ValueError):
    """A run folder cannot be used: held by another process, not writable, not a run."""


# -- writing -----------------------------------------------------------------------------


@contextlib.contextmanager
def lock_run_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while writing it; a second writer gets a clear error.

    The lock is an ``flock`` on ``folder/.lock`` (released by the kernel when the process ends,
    however it ends), holding the writer's PID for the message.
    """
    path = folder / LOCK
    try:  # never through a symbolic link: the lock file is truncated and written
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        why = "it is a symbolic link; remove it" if error.errno == errno.ELOOP else error.strerror
        raise RunFolderError(f"cannot create the lock file {path}: {why}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(
                f"run folder {folder} is being written by another process (PID {holder}); "
                f"wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def save_run_checkpoint(
    path: Path,
    model: nn.Module,
    spec: ModelSpec,
    preprocessor: Preprocessor,
    header: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
) -> None:
    """A checkpoint that is enough to predict: weights, model description, preprocessing."""
    prep_tensors, prep_meta = preprocessor.state()
    save_checkpoint(
        path,
        model.state_dict(),
        {**header, "spec": spec.to_dict(), "preprocessing": prep_meta},
        optimizer_state,
        extra={"prep": prep_tensors},
    )


def _refuse_seed_parent(folder: Path) -> None:
    """The folder of ``interfuse train --seeds`` holds one run per seed, not a run: say so."""
    runs = sorted(p.name for p in folder.glob("seed-*") if (p / RESULTS).is_file())
    if runs:
        raise RunFolderError(
            f"{folder} holds one run per seed ({', '.join(runs)}), not a "
            f"run; name one of them, e.g. {folder / runs[0]}"
        )


def _check_run_folder(folder: Path) -> None:
    """A run folder must exist and be a folder (a file inside one is named as such)."""
    if folder.is_file():
        hint = f"; the run folder is {folder.parent}" if (folder.parent / RESULTS).is_file() else ""
        raise RunFolderError(f"{folder} is a file, not a run folder{hint}")
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}")


def read_results(folder: Path) -> RunResult:
    """``folder/results.json`` as a :class:`RunResult` (clear errors for missing/old/corrupt)."""
    file = folder / RESULTS
    _check_run_folder(folder)
    if not file.is_file():
        _refuse_seed_parent(folder)
        raise FileNotFoundError(f"{file} not found: is {folder} a finished run?")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SchemaError(f"{file}: not a text file ({error.reason})") from None
    return RunResult.from_json(text, str(file))


def model_digest(checkpoint: Path) -> str:
    """The SHA-256 a checkpoint records for its tensors and header (read, not recomputed): it
    changes whenever the model it holds does."""
    return str(read_header(checkpoint)[0].get("sha256", ""))


def explained_model(folder: Path, checkpoint: str) -> dict[str, str]:
    """What ``explain.json`` records of the model it explains (``PosthocResult.run``): the run
    folder, the checkpoint and its :func:`model_digest` (read by :func:`explanations_outdated`)."""
    return {
        "dir": str(folder),
        "checkpoint": checkpoint,
        "model_sha256": model_digest(folder / checkpoint),
    }


def explanations_outdated(folder: Path) -> bool:
    """Whether ``folder/explain.json`` explains another model than its checkpoint holds now
    (the run was resumed or overwritten after ``interfuse explain``): the digest recorded when
    explaining (:func:`explained_model`) against :func:`model_digest` of that checkpoint.
    ``False`` without ``explain.json`` or without a recorded digest (older explanations)."""
    path = folder / EXPLAIN_JSON
    if not path.is_file():
        return False
    try:
        recorded = PosthocResult.from_dict(json.loads(path.read_text(encoding="utf-8"))).run
        digest, checkpoint = recorded.get("model_sha256"), recorded.get("checkpoint")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False  # unreadable: interfuse explain writes it anew
    if not digest or not checkpoint:
        return False
    return _model_changed(folder / checkpoint, digest)  # also when the checkpoint is gone


def results_outdated(folder: Path, result: RunResult | None = None) -> bool:
    """Whether ``folder/results.json`` was measured on another model than ``best.safetensors``
    holds now (a finished run resumed to train longer and stopped before it finished): the
    digest the results recorded (``RunResult.model_sha256``) against :func:`model_digest` of
    ``best.safetensors``. ``result`` is the folder's results when already read. ``False``
    without results, without a recorded digest (results of older versions) or without
    ``best.safetensors`` (checkpoints deleted: no later model to compare with)."""
    if result is None:
        if not (folder / RESULTS).is_file():
            return False
        result = read_results(folder)
    if not result.model_sha256 or not (folder / BEST).exists():
        return False  # no digest recorded, or no model to be outdated against (checkpoints deleted)
    return _model_changed(folder / BEST, result.model_sha256)


def _model_changed(checkpoint: Path, digest: str) -> bool:
    """Whether ``checkpoint`` no longer holds the model whose :func:`model_digest` was
    ``digest``: another model, or a missing or broken file."""
    try:
        return model_digest(checkpoint) != digest
    except CheckpointError:
        return True


def read_history(folder: Path) -> list[dict[str, float]]:
    """``folder/history.csv`` as rows (empty when absent); ``ValueError`` naming the file and line
    for a malformed one."""
    file = folder / HISTORY
    if not file.exists():
        return []
    try:
        with file.open(newline="", encoding="utf-8") as f:
            lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{file}: malformed history ({err})") from err
    if not lines:
        raise ValueError(f"{file}: malformed history (no header row)")
    _, header = lines[0]
    header = [name.strip() for name in header]
    if "epoch" not in header or "" in header or len(set(header)) != len(header):
        raise ValueError(
            f"{file}: malformed history header {header!r} "
            "(needs an 'epoch' column and unique, non-empty column names)"
        )
    history = []
    for n, row in lines[1:]:
        if len(row) != len(header):
            raise ValueError(
                f"{file}: malformed history, line {n} has {len(row)} fields, expected {len(header)}"
            )
        try:
            values = [float(v) if v.strip() else math.nan for v in row]
        except ValueError as err:
            raise ValueError(f"{file}: malformed history, line {n}: {err}") from err
        history.append(dict(zip(header, values, strict=True)))
    return history


# -- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPrediction(Prediction):
    """Predictions for raw inputs.

    ``outputs``: raw model outputs ``(N, C)``; ``labels``: predicted class labels
    (:attr:`Run.class_names`: the raw label values of training as strings, or the names the data
    set gives its classes) for classification, the labels that are on (joined by ``+``) for
    multilabel, ``None`` for regression; ``probabilities``: softmax ``(N, C)`` for
    classification, per-label sigmoid ``(N, K)`` for multilabel; ``missing``: per modality,
    which samples lacked it.
    """

    labels: list[str] | None = None
    probabilities: Tensor | None = None


@dataclass
class Run:
    """A trained run, loaded from its folder by :func:`load_run`.

    ``model`` is in eval mode; ``preprocessor`` turns raw arrays into model inputs; ``result``
    is the run's :class:`RunResult` (``None`` while training has not finished); ``header`` is the
    checkpoint's header (configuration, provenance, training state). ``results_outdated``:
    ``result`` was measured on an earlier model than ``best.safetensors`` holds now (a resumed
    run stopped before it finished; :func:`results_outdated`): its numbers are not this model's.
    """

    path: Path
    spec: ModelSpec
    model: nn.Module
    preprocessor: Preprocessor
    result: RunResult | None
    header: dict[str, Any]
    results_outdated: bool = False

    @property
    def task(self) -> str:
        return self.preprocessor.task

    @property
    def modalities(self) -> list[str]:
        return list(self.spec.modalities)

    @property
    def class_names(self) -> list[str] | None:
        """Names of classes ``0 .. C-1`` (labels for multilabel), as training recorded them:
        the data set's names (e.g. ``sarcastic``) or the raw label values as strings; ``None``
        for regression. What predictions, CSV headers and results all use."""
        classes = self.preprocessor.classes
        if classes is None:
            return None
        recorded = (self.header.get("task") or {}).get("class_names")
        for names in (self.result.class_names if self.result else None, recorded):
            if isinstance(names, list) and len(names) == len(classes):
                return [str(name) for name in names]
        return list(classes)

    def predict(
        self,
        inputs: Mapping[str, Any],
        masks: Mapping[str, Any] | None = None,
        batch_size: int = 1024,
        source: str = "",
        chunk_rows: int | None = None,
    ) -> RunPrediction:
        """Predict from raw arrays ``{modality: (N, ...)}``, preprocessed as in training.

        Leave a modality out, pass ``masks={m: bool array}`` (True = present), or fill a sample's
        row with NaN to mark it missing (models with a missing-modality path only). Inputs are
        checked as in training (numbers, shapes, sample counts, no infinite values, no partly
        NaN samples, no float32 overflow); errors name ``source`` when given. The rows are
        preprocessed and predicted in chunks (:meth:`predict_chunks`), whose outputs are joined.
        """
        chunks = list(self.predict_chunks(inputs, masks, batch_size, source, chunk_rows))
        missing = {m: torch.cat([c.missing[m] for c in chunks]) for m in chunks[0].missing}
        outputs = torch.cat([c.outputs for c in chunks])
        if self.task == "regression":
            return RunPrediction(outputs, missing)
        labels = [label for c in chunks for label in c.labels or ()]
        probabilities = torch.cat([c.probabilities for c in chunks if c.probabilities is not None])
        return RunPrediction(outputs, missing, labels, probabilities)

    def predict_chunks(
        self,
        inputs: Mapping[str, Any],
        masks: Mapping[str, Any] | None = None,
        batch_size: int = 1024,
        source: str = "",
        chunk_rows: int | None = None,
    ) -> Iterator[RunPrediction]:
        """:meth:`predict` for consecutive chunks of rows, one :class:`RunPrediction` each, so
        that only one chunk is preprocessed (in float64) at a time.

        ``chunk_rows`` (rounded down to a multiple of ``batch_size``, at least one batch) is by
        default what keeps a chunk's float64 copy near :data:`CHUNK_BYTES`. The model sees the
        same batches whatever the chunking, so the outputs are those of one whole pass; an
        error names the counts of the whole input, as a whole pass would.
        """
        prefix = f"{source}: " if source else ""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(
                f"{prefix}no modality arrays given; the run expects some of {self.modalities}"
            )
        check_batch_size(batch_size)
        arrays = {m: x if isinstance(x, Tensor) else np.asarray(x) for m, x in inputs.items()}
        if any(x.ndim == 0 for x in arrays.values()):
            self.preprocessor.transform(arrays, source)  # names the scalar
        sizes = {m: len(x) for m, x in arrays.items()}
        n = max(sizes.values())
        step = _chunk_rows(arrays, batch_size, chunk_rows)
        # the first chunk's checks (names, dtypes, shapes) before the sample counts, as ever
        first = self._transform_rows(arrays, slice(0, step), source)
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{prefix}modalities have different numbers of samples: {sizes}")
        given = self._whole_masks(masks, n, prefix)
        for start in range(0, n, step):
            rows = slice(start, start + step)
            tensors = first if start == 0 else self._transform_rows(arrays, rows, source)
            chunk_masks = (
                None
                if given is None
                else {m: k[rows] if isinstance(k, Tensor) else k for m, k in given.items()}
            )
            try:
                result = predict(self.model, tensors, masks=chunk_masks, batch_size=batch_size)
            except ValueError as error:
                raise ValueError(f"{prefix}{error}") from None
            yield self._labelled(result)

    def _transform_rows(
        self, arrays: Mapping[str, Any], rows: slice, source: str
    ) -> dict[str, Tensor]:
        """The run's preprocessing of ``rows``; an error is that of the whole input (its counts
        and largest values), as one pass over all rows reports it."""
        try:
            return self.preprocessor.transform({m: x[rows] for m, x in arrays.items()}, source)
        except ValueError:
            if rows.start == 0 and rows.stop >= max(len(x) for x in arrays.values()):
                raise
            self.preprocessor.transform(arrays, source)
            raise

    def _whole_masks(
        self, masks: Mapping[str, Any] | None, n: int, prefix: str
    ) -> dict[str, Any] | None:
        """Given masks of the run's modalities as ``(n,)`` bool tensors (checked once, for all
        rows); bools and masks of unknown modalities stay as given, for :func:`predict` to judge."""
        if masks is None:
            return None
        try:
            return {
                m: k if isinstance(k, bool) or m not in self.modalities else as_mask(m, k, n)
                for m, k in masks.items()
            }
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None

    def _labelled(self, result: Prediction) -> RunPrediction:
        """Model outputs with the predicted labels and probabilities of the task."""
        if self.task == "regression":
            return RunPrediction(result.outputs, result.missing)
        if self.task == "multilabel":
            probabilities = torch.sigmoid(result.outputs.double())
            labels = self.preprocessor.decode(probabilities >= 0.5, self.class_names)
        else:
            probabilities = torch.softmax(result.outputs.double(), dim=1)
            labels = self.preprocessor.decode(probabilities.argmax(dim=1), self.class_names)
        return RunPrediction(result.outputs, result.missing, labels, probabilities)

    def evaluate(
        self,
        inputs: Mapping[str, Any],
        labels: Any,
        masks: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> dict[str, float]:
        """Metrics on raw inputs and raw labels (the run's metric set); missing modalities are
        marked as for :meth:`predict`."""
        self.preprocessor.encode_labels(labels, source)  # bad labels fail before predicting
        return self.score(self.predict(inputs, masks, source=source).outputs, labels, source)

    def score(self, outputs: Tensor, labels: Any, source: str = "") -> dict[str, float]:
        """Metrics (the run's metric set) of model ``outputs`` already made by :meth:`predict`
        against raw ``labels``."""
        targets = self.preprocessor.encode_labels(labels, source)
        if len(targets) != len(outputs):
            raise ValueError(
                f"{source + ': ' if source else ''}{len(targets)} labels for {len(outputs)} samples"
            )
        return compute_metrics(self.task, outputs, targets, self.metric_set)

    @property
    def metric_set(self) -> str:
        return str(self.header.get("data", {}).get("metrics", "default"))

    def load_data(self, data_path: str | os.PathLike[str] | None = None) -> TaskData:
        """The data to explain or evaluate this run on.

        With ``data_path``: raw arrays in the run's modality names plus ``labels`` (``.npz`` or a
        folder), preprocessed with the run's own preprocessing; with split keys
        (``train/<m>``, ``test/<m>``, …) the file's splits are used, otherwise all its samples
        form every split. Without: the run's registered dataset is loaded again from its
        recorded source, and its fingerprint must match the one the run was trained on.
        """
        if data_path is not None:
            return self._data_from_file(Path(data_path))
        data = self.header.get("data") or {}
        source = data.get("source") or {}
        if "dataset" not in source:
            raise ValueError(
                f"run {self.path} was trained on data given from Python (no registered dataset "
                f"to reload); pass the data: --data-path FILE.npz (raw arrays named "
                f"{self.modalities} plus 'labels'), or run.load_data(path)"
            )
        options = dict(source.get("options") or {})
        try:
            task = load_dataset(str(source["dataset"]), **options)
        except FileNotFoundError as error:  # the recorded file moved or was deleted
            arrays = Path(str(options.get("path", ""))).suffix in ("", ".npz", ".npy")
            hint = (
                "if it moved, give its new location: --data-path FILE"
                if arrays
                else f"restore it there, or give the data as raw arrays (.npz or folder: "
                f"{self.modalities} plus 'labels'): --data-path FILE"
            )
            raise FileNotFoundError(
                f"{error} (the data run {self.path} was trained on); {hint}, or "
                f"run.load_data(path) from Python"
            ) from None
        if data.get("fingerprint") and task.fingerprint() != data["fingerprint"]:
            raise ValueError(
                f"the data of run {self.path} changed since training (dataset "
                f"{source['dataset']!r}, file {source.get('path')}): its fingerprint differs"
            )
        return task

    def _data_from_file(self, path: Path) -> TaskData:
        arrays = read_arrays(path)
        arrays.pop("task", None)
        grouped = group_splits(arrays, str(path))
        pools = grouped or {"train": arrays, "val": arrays, "test": arrays}
        splits = {}
        for split, content in pools.items():
            content = dict(content)
            if LABELS not in content:
                raise ValueError(f"{path}: split {split!r} has no 'labels' array")
            labels = content.pop(LABELS)
            where = f"{path}: split {split!r}"
            try:
                content, given = split_masks(content)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            absent = [m for m in self.modalities if m not in content]
            if absent:
                raise ValueError(
                    f"{where} has no {absent[0]!r} array (the run's modalities are "
                    f"{self.modalities}; fill a sample with NaN to mark it missing)"
                )
            tensors = self.preprocessor.transform(content, where)
            present = {}
            for m, x in tensors.items():
                # a row of NaN after the run's preprocessing (which may turn NaN into 0, as
                # training did) or a <m>__mask marks a missing sample, as for predict
                _, keep = mark_missing(x.numpy(), given.get(m), m, f"{where}: ")
                present[m] = torch.from_numpy(keep)
                x[~present[m]] = 0.0  # missing rows: finite, ignored (as in training)
            splits[split] = TensorData(
                tensors, self.preprocessor.encode_labels(labels, where), present
            )
        classes = self.preprocessor.classes
        return TaskData(
            name=str(self.header.get("data", {}).get("name", path.stem)),
            task=self.task,  # type: ignore[arg-type]
            train=splits["train"],
            val=splits["val"],
            test=splits["test"],
            encoders={m: dict(e) for m, e in self.spec.encoders.items()},
            num_classes=None if classes is None else len(classes),
            metrics=self.metric_set,
            class_names=self.class_names,
            preprocessor=self.preprocessor,
            source={"path": str(path.resolve())},
        )


def _chunk_rows(arrays: Mapping[str, Any], batch_size: int, chunk_rows: int | None) -> int:
    """Rows per chunk: ``chunk_rows``, or what keeps a float64 copy near :data:`CHUNK_BYTES`,
    rounded down to whole batches (at least one)."""
    if chunk_rows is None:
        width = sum(math.prod(x.shape[1:]) for x in arrays.values())
        chunk_rows = CHUNK_BYTES // (8 * max(width, 1))
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    return max(chunk_rows // batch_size, 1) * batch_size


def load_run(
    path: str | os.PathLike[str],
    checkpoint: str = BEST,
    encoders: Mapping[str, nn.Module] | None = None,
) -> Run:
    """Load a run folder: model (eval mode), preprocessing and results.

    ``encoders`` supplies modules for modalities trained with a custom (unregistered) encoder.
    Sizes are checked against the stored tensors before the model is allocated, so an edited
    description cannot make this allocate more than the file holds.
    """
    folder = Path(path)
    _check_run_folder(folder)
    if "/" in checkpoint or checkpoint in ("", ".", ".."):
        raise ValueError(f"--checkpoint names a file inside the run folder, got {checkpoint!r}")
    file = folder / checkpoint
    if not file.is_file():
        _refuse_seed_parent(folder)
        if (folder / RESULTS).is_file():
            read_results(folder)  # a folder of another command is named as such
    header, shapes = read_header(file)
    stored = sum(math.prod(shape) for shape in shapes.values())
    check_budget(
        MemoryEstimate(stored * 4 * 2, 0, 0),
        f"loading {file} ({stored:,} stored values)",
        "the model size (this machine cannot hold it); use a machine with more memory",
    )
    spec = _spec_from_header(header, file)
    _check_sizes(spec, file, shapes, encoders)
    state, header, _ = load_checkpoint(file)
    model = build_model(spec, encoders=encoders)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{file} does not fit its model description ({error})") from None
    try:
        preprocessor = Preprocessor.from_state(
            header.get("tensors", {}).get("prep", {}), header["preprocessing"]
        )
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{file}: {error}") from None
    result = read_results(folder) if (folder / RESULTS).is_file() else None
    outdated = result is not None and results_outdated(folder, result)
    return Run(folder, spec, model.eval(), preprocessor, result, header, outdated)


def _spec_from_header(header: Mapping[str, Any], file: Path) -> ModelSpec:
    if "spec" not in header:
        raise CheckpointError(f"{file} has no model description in its header")
    try:
        spec = ModelSpec.from_dict(header["spec"])
        model_entry(spec)
    except ValueError as error:
        raise CheckpointError(f"{file}: {error}") from None
    return spec


def _check_sizes(
    spec: ModelSpec,
    file: Path,
    shapes: Mapping[str, tuple[int, ...]],
    encoders: Mapping[str, nn.Module] | None,
) -> None:
    """Build the model on the meta device (no memory) and compare every parameter's shape."""
    stored = {k[len("model.") :]: s for k, s in shapes.items() if k.startswith("model.")}
    try:
        skeleton = build_model(spec, device="meta", encoders=encoders)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{file}: cannot rebuild its model ({error})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if expected != stored:
        differs = sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))
        given = [m for m in encoders or {} if any(k.startswith(f"encoders.{m}.") for k in differs)]
        if given:
            key = next(k for k in differs if k.startswith(f"encoders.{given[0]}."))
            raise CheckpointError(
                f"{file}: the encoder given for modality {given[0]!r} does not match the one "
                f"trained ({key!r}: given {expected.get(key)}, stored {stored.get(key)}); pass "
                f"the module the run was trained with"
            )
        raise CheckpointError(
            f"{file}: the model description does not match the stored tensors ({len(differs)} "
            f"differ, e.g. {differs[0]!r}: described {expected.get(differs[0])}, stored "
            f"{stored.get(differs[0])}); the file was edited or is corrupt"
        )
