"""CMU-MOSI, CMU-MOSEI, MUStARD and UR-FUNNY in the MultiBench affect format.

MultiBench distributes these data sets as pickles ``{"train"|"valid"|"test": {"vision": (N, T,
dv), "audio": (N, T, da), "text": (N, T, 300), "labels": (N, 1) …, "id": …}}`` whose sequences
are zero-padded at the front. They are read here

* from the pickle, only through the restricted unpickler of :mod:`interfuse.data.safe_pickle`;
* from an ``.npz`` archive with keys ``train/vision``, ``valid/labels``, … (what
  ``interfuse convert`` writes);
* from a folder with ``train.npz``, ``valid.npz`` (or ``val.npz``) and ``test.npz``, each
  holding ``vision``, ``audio``, ``text`` and ``labels`` (or sub-folders ``train/vision.npy`` …).

Feature sizes are checked (MOSI 20/5/300, MOSEI 35/74/300, MUStARD and UR-FUNNY 371/81/300).
Non-finite values (MultiBench audio holds ``-inf``) become 0 and are counted in
``TaskData.info``. Labels: MOSI/MOSEI are sentiment scores in [-3, 3] (regression, with the
``"sentiment"`` metric set); MUStARD/UR-FUNNY are binary, class 1 meaning a label > 0 (this reads
both 0/1 and -1/1 encodings). Every modality gets a :class:`~interfuse.encoders.SequenceGRU`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .arrays import LABELS, from_splits, group_splits, read_arrays
from .safe_pickle import flatten_arrays, safe_load
from .task import TaskData, TaskKind

__all__ = ["AFFECT_DATASETS", "MODALITIES", "AffectFormat", "load_affect", "read_affect"]

MODALITIES = ("vision", "audio", "text")


@dataclass(frozen=True)
class AffectFormat:
    """Expected layout of one affect data set."""

    name: str
    title: str
    dims: dict[str, int]
    task: TaskKind
    class_names: tuple[str, ...] | None = None


AFFECT_DATASETS: dict[str, AffectFormat] = {
    "mosi": AffectFormat(
        "mosi", "CMU-MOSI sentiment", {"vision": 20, "audio": 5, "text": 300}, "regression"
    ),
    "mosei": AffectFormat(
        "mosei", "CMU-MOSEI sentiment", {"vision": 35, "audio": 74, "text": 300}, "regression"
    ),
    "mustard": AffectFormat(
        "mustard",
        "MUStARD sarcasm",
        {"vision": 371, "audio": 81, "text": 300},
        "classification",
        ("not sarcastic", "sarcastic"),
    ),
    "urfunny": AffectFormat(
        "urfunny",
        "UR-FUNNY humour",
        {"vision": 371, "audio": 81, "text": 300},
        "classification",
        ("not humorous", "humorous"),
    ),
}


def read_affect(path: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """The splits ``{"train"|"val"|"test": {key: array}}`` of a pickle, ``.npz`` or folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"data file not found: {path} (MultiBench affect pickles are not downloaded "
            f"automatically; see 'Real data' in the README)"
        )
    if path.is_dir() or path.suffix == ".npy" or zipfile.is_zipfile(path):
        arrays = read_arrays(path)
    else:
        arrays, _ = flatten_arrays(safe_load(path))  # e.g. string ids are skipped
    splits = group_splits(arrays, str(path))
    if splits is None:
        raise ValueError(
            f"{path}: expected the splits train, valid and test (keys like 'train/vision'), "
            f"found keys {sorted(arrays)[:10]}"
        )
    return splits


def _guess(dims: dict[str, int]) -> str:
    matches = [f.name for f in AFFECT_DATASETS.values() if f.dims == dims]
    return f" (the feature sizes match {' or '.join(matches)})" if matches else ""


def load_affect(
    name: str,
    path: str | os.PathLike[str],
    *,
    standardize: bool = True,
    hidden: int = 64,
    output_dim: int = 32,
) -> TaskData:
    """Load ``name`` (``mosi``, ``mosei``, ``mustard`` or ``urfunny``) from ``path``.

    ``standardize`` scales each feature with training-split statistics (padding stays zero);
    ``hidden``/``output_dim`` size the GRU encoders.
    """
    if name not in AFFECT_DATASETS:
        raise ValueError(f"unknown affect dataset {name!r}; known: {', '.join(AFFECT_DATASETS)}")
    spec = AFFECT_DATASETS[name]
    source = str(path)
    splits = read_affect(path)
    pairs = {}
    replaced: dict[str, int] = {}
    for split, content in splits.items():
        found = {m: np.shape(content[m])[-1] for m in MODALITIES if np.ndim(content.get(m))}
        for key in (*MODALITIES, LABELS):
            if key not in content:
                raise ValueError(
                    f"{source}: split {split!r} has no {key!r} array (keys: {sorted(content)})"
                )
        inputs = {}
        for m in MODALITIES:
            x = np.asarray(content[m])
            if x.ndim != 3 or x.shape[2] != spec.dims[m]:
                raise ValueError(
                    f"{source}: split {split!r}, modality {m!r}: expected shape (N, T, "
                    f"{spec.dims[m]}) for {name}, got {x.shape}" + _guess(found)
                )
            if x.dtype.kind not in "biuf":
                raise ValueError(
                    f"{source}: split {split!r}, modality {m!r}: expected numbers, "
                    f"got dtype {x.dtype}"
                )
            bad = ~np.isfinite(x)
            if bad.any():
                x = np.where(bad, 0, x)
                replaced[m] = replaced.get(m, 0) + int(bad.sum())
            inputs[m] = x
        labels = _labels(content[LABELS], len(inputs["text"]), spec, f"{source}: split {split!r}")
        pairs[split] = (inputs, labels)
    task = from_splits(
        pairs,
        task=spec.task,
        encoders={
            m: {
                "type": "sequence_gru",
                "input_dim": spec.dims[m],
                "hidden": hidden,
                "output_dim": output_dim,
            }
            for m in MODALITIES
        },
        standardize=standardize,
        name=name,
        metrics="sentiment" if spec.task == "regression" else "default",
        info={"path": source, "nonfinite_replaced": replaced},
        source=source,
    )
    if spec.class_names is not None:
        task.class_names = list(spec.class_names)
    # saved with the run, so that predict converts new raw rows and labels the same way
    task.preprocessor = replace(
        task.fitted_preprocessor(),
        nonfinite_zero=MODALITIES,
        labels_above_zero=spec.task == "classification",
    )
    return task


def _labels(labels: np.ndarray, n: int, spec: AffectFormat, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf" or labels.size != n or labels.ndim == 0:
        raise ValueError(
            f"{where}: expected one numeric label per sample ({n}), got labels of shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    labels = labels.reshape(n).astype(np.float64)
    if not np.isfinite(labels).all():
        raise ValueError(f"{where}: labels contain NaN or infinite values")
    if spec.task == "classification":
        return (labels > 0).astype(np.int64)
    if np.abs(labels).max(initial=0.0) > 3:
        raise ValueError(
            f"{where}: {spec.name} sentiment labels must lie in [-3, 3], found "
            f"{labels.min():.3g} .. {labels.max():.3g}"
        )
    return labels
