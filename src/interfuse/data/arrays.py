"""Bring your own data: arrays → :class:`TaskData`, and ``.npz``/``.npy`` files read without pickle.

Conventions
-----------
* ``inputs`` maps modality names to arrays whose first axis is the sample: ``(N, d)`` feature
  vectors get an :class:`~interfuse.encoders.MLP`, ``(N, T, d)`` sequences (front zero-padded,
  as in MultiBench) a :class:`~interfuse.encoders.SequenceGRU`, ``(N, C, H, W)`` images an
  :class:`~interfuse.encoders.ImageCNN`; other shapes need an encoder (a spec or a module).
* The task is inferred from the labels unless given: floating-point labels mean regression,
  integer, boolean or string labels classification (classes are the sorted distinct labels,
  their names recorded in ``TaskData.class_names``).
* Features are standardised per feature with mean and standard deviation of the training split
  only; in sequences only the rows after the padding count, and padding stays zero.

Array files (:func:`read_arrays`): an ``.npz`` archive, or a folder of ``.npz``/``.npy`` files
whose keys are prefixed by the file name (``train.npz`` holding ``vision`` → ``train/vision``;
``train/vision.npy`` → ``train/vision``). Keys are either ``<modality>`` and ``labels`` (one pool,
split here with a seeded stratified split) or ``<split>/<modality>`` and ``<split>/labels`` for
the splits ``train``, ``val`` (or ``valid``) and ``test``. An optional string entry ``task``
(``"classification"`` or ``"regression"``) overrides the inferred task. A sample that lacks a
modality has a row of NaN there, or ``<modality>__mask`` (``(N,)``, True = present) says so.
Nothing is ever unpickled: object arrays are refused.
"""

from __future__ import annotations

import logging
import lzma
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budget import available_memory, format_bytes
from .batching import TensorData, split_indices
from .preprocess import Preprocessor, label_string, sequence_lengths
from .task import TASKS, TaskData, TaskKind

log = logging.getLogger("interfuse")

__all__ = [
    "LABELS",
    "default_encoder",
    "from_arrays",
    "from_splits",
    "group_splits",
    "load_npy",
    "load_npz_dataset",
    "mark_missing",
    "read_arrays",
    "sequence_lengths",
]

LABELS = "labels"
MASK_SUFFIX = "__mask"
"""``<modality>__mask``: an optional ``(N,)`` bool or 0/1 array, True where a sample has it."""
TASK_KEY = "task"
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "test": "test"}
SPLITS = ("train", "val", "test")
_MAX_DEPTH = 2


# -- reading ---------------------------------------------------------------------------


def read_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file or a folder of ``.npz``/``.npy`` files (no pickle)."""
    path = Path(path)
    if path.is_dir():
        arrays = _read_folder(path, "", 0)
        if not arrays:
            raise FileNotFoundError(f"{path}: no .npz or .npy files in this folder")
        return arrays
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".npy":
        return {path.stem: load_npy(path)}
    return _load_npz(path)


def _read_folder(folder: Path, prefix: str, depth: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for entry in sorted(folder.iterdir()):
        key = f"{prefix}{entry.stem}"
        if entry.is_dir() and depth < _MAX_DEPTH:
            arrays.update(_read_folder(entry, f"{prefix}{entry.name}/", depth + 1))
        elif entry.suffix == ".npy":
            arrays[key] = load_npy(entry)
        elif entry.suffix == ".npz":
            arrays.update({f"{key}/{k}": v for k, v in _load_npz(entry).items()})
    return arrays


def _declared_bytes(stream: Any, where: str) -> tuple[int, int] | None:
    """``(bytes the array will take, bytes of its header)`` from an ``.npy`` header at the start
    of ``stream``, or ``None`` when the header is not one numpy's public readers parse (then
    ``np.load`` reports the problem). An object array (stored as a pickle) is refused, naming
    ``where``."""
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(stream)
    except (ValueError, TypeError, OverflowError, EOFError):
        return None
    if dtype.hasobject:
        raise ValueError(
            f"{where}: an object array (stored as a pickle, which is never loaded); save "
            f"numbers, or strings as a fixed-width array (e.g. np.asarray(values, dtype=str))"
        )
    try:
        return int(np.prod(shape, dtype=object)) * dtype.itemsize, int(stream.tell())
    except (ValueError, TypeError, OverflowError, EOFError):
        return None


def _check_declared(where: str, declared: int, present: int | None, total: int) -> None:
    """Refuse an array whose header declares more bytes than its file holds (truncated or
    crafted), or files whose arrays would not fit in memory, before anything is allocated."""
    if present is not None and declared > present:
        raise ValueError(
            f"{where}: its header declares {format_bytes(declared)} of data but the file holds "
            f"{format_bytes(present)} (truncated, or not a valid .npy)"
        )
    room = available_memory()
    if total > room:
        raise ValueError(
            f"{where}: its arrays would take {format_bytes(total)}, more than the "
            f"{format_bytes(room)} of memory available; split the data into smaller files"
        )


def load_npy(path: Path) -> np.ndarray:
    """One ``.npy`` file, without pickle; a header declaring more than the file holds, or more
    than the memory available, is refused before anything is allocated."""
    with path.open("rb") as stream:
        sizes = _declared_bytes(stream, str(path))
        stream.seek(0)
        if stream.read(4) in _ZIP_STARTS:  # np.load would return the archive, unchecked
            raise ValueError(f"{path}: an .npz archive, not an .npy file; rename it to .npz")
    if sizes is not None:
        declared, header = sizes
        _check_declared(str(path), declared, path.stat().st_size - header, declared)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: cannot read without pickle ({error})") from None


_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")
"""How a file np.load reads as an archive starts (any other start it reads as .npy or pickle)."""
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as stream:
        start = stream.read(4)
    if not zipfile.is_zipfile(path) or start not in _ZIP_STARTS:
        raise ValueError(f"{path}: not an .npz archive (an .npz file starts with a zip header)")
    try:
        return _read_npz(path)
    except _ARCHIVE_ERRORS as error:
        raise ValueError(
            f"{path}: cannot read the archive ({type(error).__name__}: {error}); it may be "
            f"damaged or incomplete (copy or download it again) or encrypted"
        ) from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # every member's header first: a few compressed bytes can declare (and inflate to)
    # gigabytes, so the sizes are checked before np.load allocates any of them; np.load reads
    # any member that starts like an .npy file, whatever its name, so every member is checked;
    # any other member it returns as its raw bytes, read whole: those count at their full size
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            where = f"{path}, array {name!r}"
            with archive.open(info) as stream:
                sizes = _declared_bytes(stream, where)
            if sizes is None:
                total += info.file_size
                _check_declared(f"{path}, member {info.filename!r}", 0, None, total)
                continue
            declared, header = sizes
            total += declared
            _check_declared(where, declared, info.file_size - header, total)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        raise ValueError(f"{path}: cannot read without pickle ({error})") from None


def group_splits(
    arrays: Mapping[str, np.ndarray], source: str
) -> dict[str, dict[str, np.ndarray]] | None:
    """``{"train/vision": a, …}`` → ``{"train": {"vision": a, …}, "val": …, "test": …}``.

    Returns ``None`` when no key is split-prefixed (one unsplit pool); ``valid`` is read as
    ``val``; other top-level keys (e.g. ``task``) are ignored.
    """
    splits: dict[str, dict[str, np.ndarray]] = {}
    for key, array in arrays.items():
        head, _, rest = key.partition("/")
        if rest and head in SPLIT_ALIASES:
            split = SPLIT_ALIASES[head]
            if rest in splits.get(split, {}):
                raise ValueError(f"{source}: split {split!r} has {rest!r} twice (val and valid?)")
            splits.setdefault(split, {})[rest] = array
    if not splits:
        return None
    for split in SPLITS:
        if split not in splits:
            raise ValueError(
                f"{source}: no {split!r} split (found splits {sorted(splits)}; expected keys "
                f"like 'train/<modality>', 'val/<modality>', 'test/<modality>')"
            )
    return splits


# -- preprocessing -------------------------------------------------------------------


def default_encoder(modality: str, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """MLP for ``(d,)`` samples, SequenceGRU for ``(T, d)`` samples, ImageCNN for ``(C, H, W)``."""
    if len(sample_shape) == 1:
        return {"type": "mlp", "input_dim": int(sample_shape[0]), "hidden": [64], "output_dim": 32}
    if len(sample_shape) == 2:
        return {"type": "sequence_gru", "input_dim": int(sample_shape[1]), "output_dim": 32}
    if len(sample_shape) == 3:
        return {"type": "image_cnn", "in_channels": int(sample_shape[0]), "output_dim": 32}
    raise ValueError(
        f"modality {modality!r}: no default encoder for samples of shape {sample_shape} "
        f"(2-D arrays (N, d) get an MLP, 3-D arrays (N, T, d) a GRU, 4-D arrays (N, C, H, W) a "
        f"CNN); reshape the array to one of these, or train from Python with an encoder: "
        f"encoders={{{modality!r}: module or spec}}"
    )


def _check_features(modality: str, x: Any, where: str) -> np.ndarray:
    """Numbers of shape ``(N, ...)``; a row that is entirely NaN marks a missing sample, any
    other non-finite value is an error."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}modality {modality!r}: expected numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{where}modality {modality!r}: expected an array (N, ...) with features per "
            f"sample, got shape {x.shape}"
        )
    if 0 in x.shape[1:]:
        raise ValueError(
            f"{where}modality {modality!r} has no features: samples of shape {x.shape[1:]} "
            f"(every axis after the first needs a size >= 1)"
        )
    if x.dtype.kind == "f":
        rows = x.reshape(len(x), int(np.prod(x.shape[1:])))
        finite = np.isfinite(rows)
        missing = np.isnan(rows).all(axis=1)
        bad = int((~finite[~missing]).sum())
        if bad:
            raise ValueError(
                f"{where}modality {modality!r}: {bad} values are NaN or infinite (a sample that "
                f"lacks this modality is a row of NaN, or pass a mask; partial rows are not "
                f"allowed)"
            )
    return x


def mask_problem(mask: np.ndarray) -> str | None:
    """Why ``mask`` is not a presence mask of bools or 0/1 (``None`` when it is): ``dtype …``,
    or ``values […]`` with up to five of its other values (a mask of -1/1 or of indices would
    otherwise be read as bools)."""
    if mask.dtype.kind not in "bui":
        return f"dtype {mask.dtype}"
    if mask.dtype.kind != "b" and not np.isin(mask, (0, 1)).all():
        return f"values {sorted(set(mask[~np.isin(mask, (0, 1))].tolist()))[:5]}"
    return None


def mark_missing(
    x: np.ndarray, mask: Any, modality: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(x with missing rows NaN, presence (N,) bool)`` from all-NaN rows and an optional mask."""
    present = np.ones(len(x), dtype=bool)
    if x.dtype.kind == "f":
        present &= ~np.isnan(x.reshape(len(x), int(np.prod(x.shape[1:])))).all(axis=1)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (len(x),) or mask.dtype.kind not in "bui":
            raise ValueError(
                f"{where}the mask of modality {modality!r} must hold one 0/1 or bool per sample "
                f"({len(x)}), got shape {mask.shape} and dtype {mask.dtype}"
            )
        if (problem := mask_problem(mask)) is not None:
            raise ValueError(
                f"{where}the mask of modality {modality!r} must hold one 0/1 or bool per sample, "
                f"got {problem}"
            )
        present &= mask.astype(bool)
    if present.all():
        return x, present
    # float32 holds floats of up to 4 bytes and integers of up to 2 bytes exactly; other values
    # (int32 1_700_000_000 + k: float32 steps of 128) need float64
    exact = x.dtype.itemsize <= (4 if x.dtype.kind == "f" else 2)
    x = x.astype(np.float32 if exact else np.float64, copy=True)
    x[~present] = np.nan
    return x, present


def _nan_labels(labels: np.ndarray) -> np.ndarray:
    """Which labels are NaN (float labels, or strings/objects spelling NaN)."""
    if labels.dtype.kind in "fc":
        return np.isnan(labels)
    if labels.dtype.kind in "OUS":
        return np.array([_is_nan_label(v) for v in labels.tolist()], dtype=bool)
    return np.zeros(len(labels), dtype=bool)


def _is_nan_label(value: Any) -> bool:
    if isinstance(value, float):
        return value != value
    if isinstance(value, (str, bytes)):
        return value.strip().lower() in ("nan", b"nan")
    return False


def _drop_nan_labels(
    inputs: Mapping[str, np.ndarray], labels: np.ndarray, where: str, drop: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Refuse NaN labels, or (``drop``) remove their samples, logging how many."""
    nan = _nan_labels(labels)
    if not nan.any():
        return dict(inputs), labels
    count = int(nan.sum())
    first = ", ".join(str(i) for i in np.flatnonzero(nan)[:5])
    if not drop:
        raise ValueError(
            f"{where}{count} of {len(labels)} labels are NaN (samples {first}"
            f"{', ...' if count > 5 else ''}); remove those samples or pass "
            f"drop_nan_labels=True (--drop-nan-labels) to drop them"
        )
    log.warning(f"{where}dropped {count} of {len(labels)} samples whose label is NaN")
    keep = ~nan
    return {m: np.asarray(x)[keep] for m, x in inputs.items()}, labels[keep]


def _infer_task(labels: np.ndarray) -> TaskKind:
    """2-D labels → multilabel; float labels → regression (with a warning when they look like
    classes); integer, bool or string labels → classification."""
    if labels.ndim == 2:
        return "multilabel"
    if labels.dtype.kind not in "fc":
        return "classification"
    values = np.unique(labels[np.isfinite(labels)])
    if 1 < len(values) <= 10 and np.all(values == np.round(values)):
        warnings.warn(
            f"float labels with only the values {values.tolist()} are treated as regression "
            f"targets; if they are classes, pass task='classification' (--task classification)",
            UserWarning,
            stacklevel=3,
        )
    return "regression"


def _labels(labels: Any, where: str) -> np.ndarray:
    """One label per sample ``(N,)`` (``(N, 1)`` is flattened), or a 0/1 matrix ``(N, K)`` for
    multilabel tasks."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels
    if labels.ndim == 0 or labels.size != len(labels):
        raise ValueError(f"{where}labels must hold one label per sample, got shape {labels.shape}")
    return labels.reshape(len(labels))


# -- building tasks ------------------------------------------------------------------


def from_splits(
    splits: Mapping[str, tuple[Mapping[str, Any], Any]],
    *,
    task: TaskKind | None = None,
    encoders: Mapping[str, dict[str, Any]] | None = None,
    standardize: bool = True,
    name: str = "arrays",
    metrics: str = "default",
    info: dict[str, Any] | None = None,
    source: str = "",
    masks: Mapping[str, Mapping[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    drop_nan_labels: bool = False,
) -> TaskData:
    """A task from given ``{"train"|"val"|"test": (inputs, labels)}`` splits.

    ``encoders`` may cover some modalities; the others get :func:`default_encoder`. Labels
    ``(N, K)`` of 0/1 make a multilabel task (``label_names`` name the K columns). Missing
    modalities: a row of NaN, or ``masks[split][modality]`` (``(N,)``, True = present). Errors
    name the split and modality (and ``source``, e.g. a file, when given). Refused, naming the
    split: an empty split, a modality without features, NaN labels (unless ``drop_nan_labels``,
    which drops those samples and logs how many), a training split with a single class, and
    classes in validation or test that training never saw.
    """
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise ValueError(f"{source + ': ' if source else ''}missing split(s) {missing}")
    prefix = f"{source}: " if source else ""
    checked: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    present: dict[str, dict[str, np.ndarray]] = {}
    modalities: list[str] | None = None
    for split in SPLITS:
        inputs, labels = splits[split]
        where = f"{prefix}split {split!r}: "
        if not inputs:
            raise ValueError(f"{where}no modalities")
        labels = _labels(labels, where)
        if len(labels) == 0:
            raise ValueError(f"{where}the split is empty (0 samples)")
        arrays = {m: _check_features(m, x, where) for m, x in inputs.items()}
        given = dict((masks or {}).get(split) or {})
        if task != "regression" and labels.ndim == 1:
            lengths = [len(x) for x in (*arrays.values(), *given.values())]
            if all(n == len(labels) for n in lengths):
                masked = {f"{m}{MASK_SUFFIX}": np.asarray(k) for m, k in given.items()}
                kept, labels = _drop_nan_labels(
                    {**arrays, **masked}, labels, where, drop_nan_labels
                )
                arrays, given = split_masks(kept)
                if len(labels) == 0:
                    raise ValueError(f"{where}no samples left after dropping NaN labels")
        if modalities is None:
            modalities = list(arrays)
        elif set(arrays) != set(modalities):
            raise ValueError(f"{where}modalities {sorted(arrays)} differ from train's {modalities}")
        for m, x in arrays.items():
            if len(x) != len(labels):
                raise ValueError(
                    f"{where}modality {m!r} has {len(x)} samples but there are {len(labels)} labels"
                )
            reference = checked["train"][0][m] if checked else x
            if x.ndim != reference.ndim or x.shape[-1] != reference.shape[-1]:
                raise ValueError(
                    f"{where}modality {m!r} has shape {x.shape}, train has {reference.shape} "
                    f"(the feature size and number of axes must match)"
                )
        unknown = sorted(set(given) - set(modalities))
        if unknown:
            raise ValueError(f"{where}masks given for unknown modalities {unknown}")
        marked = {m: mark_missing(arrays[m], given.get(m), m, where) for m in modalities}
        checked[split] = ({m: marked[m][0] for m in modalities}, labels)
        present[split] = {m: marked[m][1] for m in modalities}
    assert modalities is not None
    empty = [m for m in modalities if not present["train"][m].any()]
    if empty:
        raise ValueError(f"{prefix}split 'train': no sample has modality {empty[0]!r}")

    train_labels = checked["train"][1]
    task = task or _infer_task(train_labels)
    classes = None
    if task == "classification":
        classes = _classes(checked, prefix)
    elif task == "multilabel":
        if train_labels.ndim != 2:
            raise ValueError(
                f"{prefix}multilabel needs labels of shape (N, K), got {train_labels.shape}"
            )
        classes = np.asarray(
            label_names if label_names is not None else range(train_labels.shape[1])
        )
        if len(classes) != train_labels.shape[1]:
            raise ValueError(
                f"{prefix}{len(classes)} label names for {train_labels.shape[1]} label columns"
            )
    elif train_labels.dtype.kind not in "biuf":
        raise ValueError(f"{prefix}regression needs numeric labels, got {train_labels.dtype}")
    preprocessor = Preprocessor.fit(
        task, {m: checked["train"][0][m] for m in modalities}, classes, standardize
    )
    data = {}
    for s in SPLITS:
        where = f"{prefix}split {s!r}"
        targets = preprocessor.encode_labels(checked[s][1], where)
        if task == "regression" and not torch.isfinite(targets).all():
            raise ValueError(f"{where}: labels contain NaN or infinite values")
        tensors = preprocessor.transform(checked[s][0], where)
        for m, keep in present[s].items():
            tensors[m][torch.from_numpy(~keep)] = 0.0  # missing rows: finite, ignored
        data[s] = TensorData(
            tensors, targets, {m: torch.from_numpy(keep) for m, keep in present[s].items()}
        )

    specs = dict(encoders or {})
    unknown = sorted(set(specs) - set(modalities))
    if unknown:
        raise ValueError(f"encoder specs given for unknown modalities {unknown}")
    for m in modalities:
        specs.setdefault(m, default_encoder(m, checked["train"][0][m].shape[1:]))
    return TaskData(
        name=name,
        task=task,
        train=data["train"],
        val=data["val"],
        test=data["test"],
        encoders={m: specs[m] for m in modalities},
        num_classes=len(classes) if classes is not None else None,
        info={
            "split_sizes": {s: len(data[s]) for s in SPLITS},
            "standardized": standardize,
            **(info or {}),
        },
        metrics=metrics,
        class_names=list(preprocessor.classes) if preprocessor.classes else None,
        preprocessor=preprocessor,
    )


def _classes(
    checked: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]], prefix: str
) -> np.ndarray:
    """The training split's distinct labels; refuse one class, or classes only val/test have."""
    names = {s: [label_string(v) for v in checked[s][1].tolist()] for s in SPLITS}
    seen = set(names["train"])
    if len(seen) < 2:
        got = ", ".join(repr(c) for c in sorted(seen))
        raise ValueError(
            f"{prefix}split 'train': classification needs at least 2 classes in training, "
            f"the training labels hold only {got} (a constant classifier would be trained)"
        )
    for split in ("val", "test"):
        unseen = sorted(set(names[split]) - seen)
        if unseen:
            count = sum(n in unseen for n in names[split])
            raise ValueError(
                f"{prefix}split {split!r}: classes {unseen[:5]} ({count} samples) never occur "
                f"in training, so the model can never predict them; move such samples into "
                f"training or remove them"
            )
    train = checked["train"][1]
    first = {}
    for value, name in zip(train.tolist(), names["train"]):
        first.setdefault(name, value)
    return np.unique(np.asarray(list(first.values()), dtype=train.dtype))


def from_arrays(
    inputs: Mapping[str, Any],
    labels: Any,
    *,
    task: TaskKind | None = None,
    encoders: Mapping[str, dict[str, Any]] | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    standardize: bool = True,
    name: str = "arrays",
    metrics: str = "default",
    masks: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    drop_nan_labels: bool = False,
) -> TaskData:
    """A task from one pool of samples, split train/val/test with a seeded split.

    ``inputs``: ``{modality: array (N, ...)}`` (numpy or torch); ``labels``: ``(N,)``; ``masks``:
    ``{modality: (N,) bool}`` (True = present) for samples that lack a modality (a row of NaN
    works too). The split is stratified by label for classification. See the module docstring.
    """
    if not inputs:
        raise ValueError("inputs must map at least one modality name to an array")
    labels = _labels(np.asarray(labels), "")
    arrays = {
        m: _check_features(m, x.numpy() if isinstance(x, torch.Tensor) else x, "")
        for m, x in inputs.items()
    }
    for m, x in arrays.items():
        if len(x) != len(labels):
            raise ValueError(
                f"modality {m!r} has {len(x)} samples but there are {len(labels)} labels"
            )
    if len(labels) == 0:
        raise ValueError("no samples: the labels and every modality have 0 rows")
    for m, x in arrays.items():
        if encoders is None or m not in encoders:
            default_encoder(m, x.shape[1:])  # fail early for shapes without a default
    task = task or _infer_task(labels)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    masks = {m: np.asarray(mask) for m, mask in (masks or {}).items()}
    unknown = sorted(set(masks) - set(arrays))
    if unknown:
        raise ValueError(f"masks given for unknown modalities {unknown}")
    for m, mask in masks.items():
        if mask.shape != (len(labels),):
            raise ValueError(
                f"the mask of modality {m!r} must hold one 0/1 or bool per sample "
                f"({len(labels)}), got shape {mask.shape}"
            )
    if task == "classification":  # masks checked first: they are indexed like the labels
        masked = {f"{m}{MASK_SUFFIX}": k for m, k in masks.items()}
        kept, labels = _drop_nan_labels({**arrays, **masked}, labels, "", drop_nan_labels)
        arrays, masks = split_masks(kept)
    stratify = labels if task == "classification" else None
    parts = split_indices(len(labels), fractions, seed=seed, stratify=stratify)
    splits = {
        s: ({m: x[index] for m, x in arrays.items()}, labels[index])
        for s, index in zip(SPLITS, parts)
    }
    masks_by_split = {
        s: {m: mask[index] for m, mask in masks.items()} for s, index in zip(SPLITS, parts)
    }
    return from_splits(
        splits,
        task=task,
        encoders=encoders,
        standardize=standardize,
        name=name,
        metrics=metrics,
        info={"split_seed": seed, "split_fractions": list(fractions)},
        masks=masks_by_split,
        label_names=label_names,
        drop_nan_labels=drop_nan_labels,
    )


def load_npz_dataset(
    path: str | os.PathLike[str],
    *,
    task: TaskKind | None = None,
    seed: int = 0,
    standardize: bool = True,
    name: str = "npz",
    drop_nan_labels: bool = False,
) -> TaskData:
    """A task from an ``.npz`` file or array folder in the layout of the module docstring."""
    arrays = read_arrays(path)
    source = str(path)
    if TASK_KEY in arrays and task is None:
        task = str(arrays.pop(TASK_KEY))  # type: ignore[assignment]
        if task not in TASKS:
            raise ValueError(
                f"{source}: entry 'task' must be one of {', '.join(TASKS)}, got {task!r}"
            )
    arrays.pop(TASK_KEY, None)
    splits = group_splits(arrays, source)
    if splits is None:
        if LABELS not in arrays:
            raise ValueError(
                f"{source}: no 'labels' array (keys: {sorted(arrays)}); expected one array "
                f"per modality plus 'labels'"
            )
        labels = arrays.pop(LABELS)
        nested = sorted(k for k in arrays if "/" in k)
        if nested:
            raise ValueError(
                f"{source}: unexpected keys {nested}; use '<modality>' and 'labels', or "
                f"'<split>/<modality>' and '<split>/labels' for train, val and test"
            )
        inputs, masks = split_masks(arrays)
        try:
            return from_arrays(
                inputs,
                labels,
                task=task,
                seed=seed,
                standardize=standardize,
                name=name,
                masks=masks,
                drop_nan_labels=drop_nan_labels,
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    pairs, masks_by_split = {}, {}
    for split, content in splits.items():
        if LABELS not in content:
            raise ValueError(f"{source}: split {split!r} has no 'labels' array")
        content = dict(content)
        labels = content.pop(LABELS)
        inputs, masks_by_split[split] = split_masks(content)
        pairs[split] = (inputs, labels)
    return from_splits(
        pairs,
        task=task,
        standardize=standardize,
        name=name,
        source=source,
        info={"path": source},
        masks=masks_by_split,
        drop_nan_labels=drop_nan_labels,
    )


def split_masks(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Separate ``<modality>__mask`` entries (presence per sample) from the modality arrays."""
    masks = {k[: -len(MASK_SUFFIX)]: v for k, v in arrays.items() if k.endswith(MASK_SUFFIX)}
    inputs = {k: v for k, v in arrays.items() if not k.endswith(MASK_SUFFIX)}
    orphans = sorted(set(masks) - set(inputs))
    if orphans:
        raise ValueError(f"masks for modalities that are not in the data: {orphans}")
    return inputs, masks
