"""A dataset folder read lazily: data larger than memory, one ``.npy`` per modality and split.

Layout (format ``interfuse-lazy``, version 1)::

    DATASET/manifest.json          what is where (strictly validated, see below)
    DATASET/<split>/<modality>.npy      (N, *shape) raw features, opened with mmap_mode="r"
    DATASET/<split>/<modality>.mask.npy (N,) bool, True = present (modalities missing somewhere)
    DATASET/<split>/targets.npy         (N,) class indices / real targets, or (N, K) 0/1 labels

for the splits ``train``, ``val`` and ``test``. The manifest gives the format name and version,
the task, class names, each modality's per-sample shape, dtype and encoder, each split's size and
masked modalities, the training split's standardisation statistics (or ``null``: use the values
as they are) and the SHA-256 of every file (the data's fingerprint, so no file is read to
fingerprint it). Nothing is ever unpickled (``allow_pickle=False``); every array's header is
checked against the manifest before any data is read, and a problem is one line naming the file.

Reading: the training split stays on disk (:class:`LazyData`): a batch is gathered from the
memory maps with sorted indices (one sequential sweep per modality), standardised, and put back
in the sampler's order. The maps are opened for random access (no read-ahead), and the pages
touched are handed back to the kernel after every 32 rows copied (a fault maps its whole
neighbourhood), so the resident memory stays bounded however large the file. In distributed training
every rank gathers only the samples of its own batches. Validation and test splits are read into
memory (they are evaluated whole, on rank 0).

Writing (:class:`LazyWriter`, used by ``interfuse convert`` and the scale benchmark): chunks of
samples are appended to each file; in the same single pass the writer hashes every file and
accumulates the training split's per-feature moments (Chan et al.'s pairwise update of count,
mean and sum of squared deviations, in float64), so the statistics of any amount of data cost one
streaming pass. The folder is written under a temporary name beside ``DEST`` and renamed into
place when complete: an interrupted conversion leaves no partial dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .arrays import load_npy, mask_problem
from .batching import Batch, ModalitySplit, TensorData
from .preprocess import Preprocessor, Scaler, _padding_mask
from .task import TASKS, TaskData

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "LazyData",
    "LazyWriter",
    "Manifest",
    "RunningMoments",
    "check_replaceable",
    "convert_task",
    "load_lazy",
    "read_manifest",
    "streaming_scaler",
]

FORMAT = "interfuse-lazy"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
GATHER_ROWS = 32
"""Rows copied from a memory map before the pages they touched are released: a page fault maps
its whole neighbourhood (fault-around, large page-cache folios: ~100 KiB measured), so a batch
gathered in one go would map most of a file into the resident memory for a moment."""
TARGETS = "targets"
MASK = ".mask"
_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
_KEYS = {
    "format",
    "version",
    "task",
    "num_classes",
    "class_names",
    "metrics",
    "modalities",
    "targets",
    "splits",
    "statistics",
    "files",
}


# -- streaming moments -------------------------------------------------------------------


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations ``M2`` of rows, merged chunk by chunk.

    Merging a chunk with ``n_b`` rows, mean ``μ_b`` and ``M2_b`` into ``(n_a, μ_a, M2_a)``:
    ``δ = μ_b − μ_a``, ``n = n_a + n_b``, ``μ = μ_a + δ·n_b/n``,
    ``M2 = M2_a + M2_b + δ²·n_a·n_b/n`` (Chan, Golub & LeVeque), all in float64; the population
    standard deviation is ``sqrt(M2 / n)``, as :meth:`Scaler.fit` computes it in memory.
    ``mean`` and ``M2`` are kept in units of ``scale`` (per column, a power of two above half the
    largest magnitude seen; exact), so that the squares of values near 1e300 do not overflow.
    """

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    scale: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        """Merge ``rows`` of shape ``(n, width)``."""
        n_b = len(rows)
        if n_b == 0:
            return
        rows = rows.astype(np.float64, copy=False)
        scale = np.ldexp(1.0, np.frexp(np.abs(rows).max(axis=0))[1] - 1)
        if self.scale is not None:
            scale = np.maximum(scale, self.scale)
        rows = rows / scale
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None or self.scale is None:
            self.count, self.mean, self.m2, self.scale = n_b, mean_b, m2_b, scale
            return
        ratio = self.scale / scale
        mean_a, m2_a = self.mean * ratio, self.m2 * ratio**2
        n = self.count + n_b
        delta = mean_b - mean_a
        self.mean = mean_a + delta * (n_b / n)
        self.m2 = m2_a + m2_b + delta**2 * (self.count * n_b / n)
        self.count, self.scale = n, scale

    def scaler(self, width: tuple[int, ...], sequence: bool) -> Scaler:
        """The :class:`Scaler` of the rows seen (mean 0 / std 1 when there were none)."""
        if self.count == 0 or self.mean is None or self.m2 is None or self.scale is None:
            return Scaler(np.zeros(width), np.ones(width), sequence)
        std = np.sqrt(self.m2 / self.count) * self.scale
        return Scaler(self.mean * self.scale, np.where(std > 1e-12, std, 1.0), sequence)


def streaming_scaler(
    array: np.ndarray, present: np.ndarray | None = None, chunk: int = 65536
) -> Scaler:
    """:meth:`Scaler.fit` of ``array`` (``(N, ...)``, e.g. a memory map) in one pass of
    ``chunk`` samples, releasing each chunk's pages of a memory map once read."""
    moments = RunningMoments()
    mapping = getattr(array, "_mmap", None)
    for first in range(0, len(array), chunk):
        part = slice(first, first + chunk)
        rows = np.array(array[part])  # a copy: the mapped pages can go
        if isinstance(mapping, mmap.mmap):
            mapping.madvise(mmap.MADV_DONTNEED)
        moments.update(_scaler_rows(rows, None if present is None else present[part]))
    sequence = array.ndim == 3
    width = (array.shape[-1],) if sequence else (int(np.prod(array.shape[1:])),)
    return moments.scaler(width, sequence)


def _scaler_rows(x: np.ndarray, present: np.ndarray | None) -> np.ndarray:
    """The rows :meth:`Scaler.fit` uses: present samples; in sequences, non-padding steps."""
    if present is not None:
        x = x[present]
    mask = _padding_mask(x)
    return x.reshape(len(x), int(np.prod(x.shape[1:]))) if mask is None else x[mask]


# -- manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The validated content of ``manifest.json`` (see the module docstring)."""

    task: str
    num_classes: int | None
    class_names: list[str] | None
    metrics: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    encoders: dict[str, dict[str, Any]]
    target_shape: tuple[int, ...]
    target_dtype: str
    sizes: dict[str, int]
    masks: dict[str, list[str]]
    statistics: dict[str, Scaler] | None
    files: dict[str, str]

    @property
    def modalities(self) -> list[str]:
        return list(self.shapes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "task": self.task,
                "num_classes": self.num_classes,
                "class_names": self.class_names,
                "metrics": self.metrics,
                "modalities": {
                    m: {
                        "shape": list(self.shapes[m]),
                        "dtype": self.dtypes[m],
                        "encoder": self.encoders[m],
                    }
                    for m in self.shapes
                },
                "targets": {"shape": list(self.target_shape), "dtype": self.target_dtype},
                "splits": {s: {"n": self.sizes[s], "masks": self.masks[s]} for s in SPLITS},
                "statistics": None
                if self.statistics is None
                else {
                    m: {
                        "mean": s.mean.reshape(-1).tolist(),
                        "std": s.std.reshape(-1).tolist(),
                        "sequence": s.sequence,
                    }
                    for m, s in self.statistics.items()
                },
                "files": self.files,
            },
            indent=1,
        )


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _get(values: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in values:
        raise _fail(path, f"missing entry {key!r}")
    value = values[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise _fail(path, f"entry {key!r} has the wrong type ({type(value).__name__})")
    return value


def _shape(value: Any, what: str, path: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value
    ):
        raise _fail(path, f"{what}: shape must be a list of positive integers, got {value!r}")
    return tuple(value)


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read and strictly validate ``folder/manifest.json`` (errors name the file and entry)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no manifest; is {folder} a dataset folder written by interfuse convert?"
        )
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _fail(path, f"not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise _fail(path, "the manifest must be a JSON object")
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise _fail(path, f"unknown entries {unknown}")
    if values.get("format") != FORMAT:
        raise _fail(path, f"format must be {FORMAT!r}, got {values.get('format')!r}")
    if values.get("version") != VERSION:
        raise _fail(
            path,
            f"format version {values.get('version')!r} is not supported (this reads {VERSION})",
        )
    task = _get(values, "task", str, path)
    if task not in TASKS:
        raise _fail(path, f"task must be one of {', '.join(TASKS)}, got {task!r}")
    num_classes = values.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise _fail(path, f"num_classes must be a positive integer or null, got {num_classes!r}")
    class_names = values.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names)
    ):
        raise _fail(path, "class_names must be a list of strings or null")
    metrics = _get(values, "metrics", str, path)
    modalities = _get(values, "modalities", dict, path)
    if not modalities:
        raise _fail(path, "no modalities")
    shapes, dtypes, encoders = {}, {}, {}
    for m, spec in modalities.items():
        if not isinstance(spec, dict) or set(spec) != {"shape", "dtype", "encoder"}:
            raise _fail(path, f"modality {m!r} needs exactly the entries shape, dtype, encoder")
        shapes[m] = _shape(spec["shape"], f"modality {m!r}", path)
        if spec["dtype"] not in _DTYPES - {"bool"}:
            raise _fail(path, f"modality {m!r}: dtype {spec['dtype']!r} is not a number type")
        dtypes[m] = spec["dtype"]
        if not isinstance(spec["encoder"], dict) or "type" not in spec["encoder"]:
            raise _fail(path, f"modality {m!r}: encoder must be an object with a 'type'")
        encoders[m] = spec["encoder"]
    targets = _get(values, "targets", dict, path)
    if set(targets) != {"shape", "dtype"} or targets["dtype"] not in _DTYPES:
        raise _fail(path, "targets needs exactly shape and a numeric dtype")
    target_shape = (
        tuple(targets["shape"])
        if targets["shape"] == []
        else _shape(targets["shape"], "targets", path)
    )
    splits = _get(values, "splits", dict, path)
    if set(splits) != set(SPLITS):
        raise _fail(path, f"splits must be exactly {', '.join(SPLITS)}, got {sorted(splits)}")
    sizes, masks = {}, {}
    for s in SPLITS:
        entry = splits[s]
        if not isinstance(entry, dict) or set(entry) != {"n", "masks"}:
            raise _fail(path, f"split {s!r} needs exactly the entries n and masks")
        n = entry["n"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _fail(path, f"split {s!r}: n must be a positive integer, got {n!r}")
        if not isinstance(entry["masks"], list) or not set(entry["masks"]) <= set(shapes):
            raise _fail(path, f"split {s!r}: masks must list modalities of the manifest")
        sizes[s], masks[s] = n, list(entry["masks"])
    statistics = None
    stats = values.get("statistics", "absent")
    if stats == "absent":
        raise _fail(path, "missing entry 'statistics' (null when the values are used as given)")
    if stats is not None:
        if not isinstance(stats, dict) or set(stats) != set(shapes):
            raise _fail(path, "statistics must give every modality (or be null)")
        statistics = {}
        for m, st in stats.items():
            if not isinstance(st, dict) or set(st) != {"mean", "std", "sequence"}:
                raise _fail(path, f"statistics of {m!r} need exactly mean, std and sequence")
            if st["sequence"] is not (len(shapes[m]) == 2):
                raise _fail(
                    path,
                    f"statistics of {m!r}: sequence must be {str(len(shapes[m]) == 2).lower()} "
                    f"for samples of shape {shapes[m]}",
                )
            width = (shapes[m][-1],) if st["sequence"] else shapes[m]
            mean = np.asarray(st["mean"], dtype=np.float64)
            std = np.asarray(st["std"], dtype=np.float64)
            if mean.size != int(np.prod(width)) or std.size != mean.size:
                raise _fail(path, f"statistics of {m!r} do not match its shape {shapes[m]}")
            if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
                raise _fail(path, f"statistics of {m!r} must be finite with std > 0")
            statistics[m] = Scaler(mean.reshape(-1), std.reshape(-1), bool(st["sequence"]))
    files = _get(values, "files", dict, path)
    return Manifest(
        task=task,
        num_classes=num_classes,
        class_names=class_names,
        metrics=metrics,
        shapes=shapes,
        dtypes=dtypes,
        encoders=encoders,
        target_shape=target_shape,
        target_dtype=targets["dtype"],
        sizes=sizes,
        masks=masks,
        statistics=statistics,
        files={str(k): str(v) for k, v in files.items()},
    )


def _expected_files(manifest: Manifest) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{relative path: (shape, dtype)}`` of every array the manifest describes."""
    expected = {}
    for s in SPLITS:
        n = manifest.sizes[s]
        for m in manifest.modalities:
            expected[f"{s}/{m}.npy"] = ((n, *manifest.shapes[m]), manifest.dtypes[m])
        for m in manifest.masks[s]:
            expected[f"{s}/{m}{MASK}.npy"] = ((n,), "bool")
        expected[f"{s}/{TARGETS}.npy"] = ((n, *manifest.target_shape), manifest.target_dtype)
    return expected


def _header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and where the data starts from an ``.npy`` header, reading
    nothing else."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                return (*np.lib.format.read_array_header_1_0(f), f.tell())
            if version == (2, 0):
                return (*np.lib.format.read_array_header_2_0(f), f.tell())
            raise ValueError(f"unsupported .npy version {version}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (listed by the manifest)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy file ({error})") from None


def _check_arrays(folder: Path, manifest: Manifest) -> None:
    """Every file's header against the manifest, before any data is read."""
    for relative, (shape, dtype) in _expected_files(manifest).items():
        path = folder / relative
        found_shape, fortran, found_dtype, start = _header(path)
        if found_dtype.hasobject:
            raise ValueError(f"{path}: holds Python objects (needs pickle); refused")
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        if tuple(found_shape) != shape:
            raise ValueError(f"{path}: shape {tuple(found_shape)}, the manifest says {shape}")
        if found_dtype != np.dtype(dtype):
            raise ValueError(f"{path}: dtype {found_dtype}, the manifest says {dtype}")
        needed = start + math.prod(shape) * found_dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise ValueError(
                f"{path}: truncated ({size:,} bytes, its header needs {needed:,}); copy or "
                f"convert the dataset again"
            )
        if relative not in manifest.files:
            raise ValueError(f"{folder / MANIFEST}: no SHA-256 listed for {relative}")


def _open(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


# -- reading -----------------------------------------------------------------------------


class LazyData(ModalitySplit):
    """A split on disk: the same batches as :class:`TensorData`, gathered from memory maps.

    ``inputs`` are the raw memory-mapped arrays (read only for their shapes); indexing with a 1-D
    index tensor returns a standardised :data:`Batch`. ``targets`` and ``masks`` are small and
    held in memory.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        targets: Tensor,
        masks: Mapping[str, Tensor],
        scalers: Mapping[str, Scaler],
        content_digest: str = "",
    ) -> None:
        self.content_digest = content_digest
        """What :meth:`TaskData.fingerprint` hashes for this split (the manifest's digest)."""
        self.inputs = dict(arrays)
        self.targets = targets
        self.masks = {m: k for m, k in masks.items() if not bool(k.all())}
        self.scalers = dict(scalers)
        for mapping in self._mappings():
            mapping.madvise(mmap.MADV_RANDOM)  # a batch touches scattered rows: no read-ahead

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: Tensor) -> Batch:
        positions = np.asarray(index, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        ascending = positions[order]
        inputs = {}
        for m, array in self.inputs.items():
            raw = _gather(array, ascending)  # one ascending sweep through the file
            x = self.scalers[m].apply(raw) if m in self.scalers else raw.astype(np.float32)
            x = torch.from_numpy(np.ascontiguousarray(x[inverse]))
            if m in self.masks:
                x[~self.masks[m][index]] = 0.0  # missing rows: finite, ignored
            inputs[m] = x
        return inputs, self.targets[index], {m: k[index] for m, k in self.masks.items()}

    def _mappings(self) -> list[mmap.mmap]:
        """The ``mmap`` objects under the memory-mapped arrays (none for in-memory arrays)."""
        found = [getattr(array, "_mmap", None) for array in self.inputs.values()]
        return [m for m in found if isinstance(m, mmap.mmap) and hasattr(m, "madvise")]

    def release(self) -> None:
        """Hand the mapped pages back to the kernel: they leave this process's resident memory
        and stay in the page cache (a read-only file mapping loses nothing)."""
        for mapping in self._mappings():
            mapping.madvise(mmap.MADV_DONTNEED)

    def materialise(self) -> TensorData:
        """The whole split in memory (for the small validation and test splits)."""
        inputs, targets, masks = self[torch.arange(len(self))]
        return TensorData(inputs, targets, masks)


def _gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` for ascending ``rows``, :data:`GATHER_ROWS` at a time, handing the pages
    of each group back to the kernel once copied (for memory maps; plain arrays are indexed)."""
    mapping = getattr(array, "_mmap", None)
    if not isinstance(mapping, mmap.mmap) or len(rows) == 0:
        return np.asarray(array[rows])
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    # where the data starts inside the mapping (numpy maps from an allocation-granularity boundary)
    start = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    row_bytes = int(array.strides[0])
    for first in range(0, len(rows), GATHER_ROWS):
        group = rows[first : first + GATHER_ROWS]
        out[first : first + len(group)] = array[group]
        low = (start + int(group[0]) * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        high = min(len(mapping), start + (int(group[-1]) + 1) * row_bytes)
        mapping.madvise(mmap.MADV_DONTNEED, low, high - low)
    return out


def load_lazy(path: str | os.PathLike[str], seed: int = 0) -> TaskData:
    """The :class:`TaskData` of a dataset folder: the training split lazily read, validation and
    test in memory; standardised with the manifest's statistics. ``seed`` is unused (the splits
    are fixed by the folder)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a dataset folder")
    manifest = read_manifest(folder)
    _check_arrays(folder, manifest)
    scalers = dict(manifest.statistics or {})
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    splits = {}
    for s in SPLITS:
        arrays = {m: _open(folder / s / f"{m}.npy") for m in manifest.modalities}
        targets = torch.from_numpy(load_npy(folder / s / f"{TARGETS}.npy"))
        if manifest.task == "multilabel" or targets.is_floating_point():
            targets = targets.float()
        else:
            targets = targets.long()
        masks = {
            m: torch.from_numpy(load_npy(folder / s / f"{m}{MASK}.npy")) for m in manifest.masks[s]
        }
        data = LazyData(arrays, targets, masks, scalers, f"{s}:{digest}")
        splits[s] = data if s == "train" else data.materialise()
    classes = None
    if manifest.task != "regression":
        names = manifest.class_names or [str(c) for c in range(manifest.num_classes or 0)]
        classes = tuple(names)
    preprocessor = Preprocessor(
        task=manifest.task,
        modalities=tuple(manifest.modalities),
        # a sequence (T, d) takes any length T, as Preprocessor.fit records it
        sample_shapes={
            m: (-1, s[1]) if len(s) == 2 else s
            for m, s in ((m, manifest.shapes[m]) for m in manifest.modalities)
        },
        scalers=scalers,
        classes=classes,
    )
    return TaskData(
        name="lazy",
        task=manifest.task,  # type: ignore[arg-type]
        train=splits["train"],  # type: ignore[arg-type]
        val=splits["val"],
        test=splits["test"],
        encoders=manifest.encoders,
        num_classes=manifest.num_classes,
        metrics=manifest.metrics,
        class_names=manifest.class_names,
        preprocessor=preprocessor,
        info={"path": str(folder), "split_sizes": manifest.sizes, "format": FORMAT},
        source={"sha256": digest},
    )


# -- writing -----------------------------------------------------------------------------


@dataclass
class _Array:
    """One ``.npy`` being appended to with plain writes (no mapping: written pages never become
    this process's resident memory)."""

    file: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    filled: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    @classmethod
    def create(cls, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> _Array:
        header = io.BytesIO()
        descr = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(header, {**descr, "shape": shape})
        file = path.open("wb")
        file.write(header.getvalue())
        return cls(file, shape, dtype, digest=hashlib.sha256(header.getvalue()))


class LazyWriter:
    """Writes a dataset folder chunk by chunk (hashes and training statistics in the same pass).

    ``with LazyWriter(dest, ...) as writer: writer.append("train", inputs, targets, masks)`` …;
    on a clean exit the manifest is written and the temporary folder renamed to ``dest``.
    ``standardize``: accumulate the training split's statistics into the manifest (otherwise the
    values are used as given). ``target_dtype``: by default int64 (class indices, 0/1 labels),
    float32 for regression.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        *,
        task: str,
        sizes: Mapping[str, int],
        shapes: Mapping[str, Sequence[int]],
        encoders: Mapping[str, dict[str, Any]],
        target_shape: Sequence[int] = (),
        target_dtype: str | None = None,
        dtypes: Mapping[str, str] | None = None,
        masks: Mapping[str, Sequence[str]] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        metrics: str = "default",
        standardize: bool = True,
        overwrite: bool = False,
    ) -> None:
        for m in shapes:
            if m == TARGETS or m.endswith(MASK) or "/" in m or "\\" in m:
                raise ValueError(
                    f"modality name {m!r} cannot name a file of its own in a dataset folder "
                    f"(not {TARGETS!r}, ending in {MASK!r} or with a slash); rename the modality"
                )
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite:
            raise FileExistsError(f"{self.dest} already exists; choose another destination")
        if self.dest.exists():
            check_replaceable(self.dest)
        self.tmp = self.dest.parent / f".{self.dest.name}.{uuid.uuid4().hex[:12]}.tmp"
        self.overwrite = overwrite
        dtypes = dict(dtypes or {m: "float32" for m in shapes})
        self.manifest = Manifest(
            task=task,
            num_classes=num_classes,
            class_names=list(class_names) if class_names is not None else None,
            metrics=metrics,
            shapes={m: tuple(int(d) for d in s) for m, s in shapes.items()},
            dtypes=dtypes,
            encoders={m: dict(encoders[m]) for m in shapes},
            target_shape=tuple(target_shape),
            target_dtype=target_dtype or ("float32" if task == "regression" else "int64"),
            sizes=dict(sizes),
            masks={s: list((masks or {}).get(s, [])) for s in SPLITS},
            statistics=None,
            files={},
        )
        self.standardize = standardize
        self.moments = {m: RunningMoments() for m in shapes}
        self.arrays: dict[str, _Array] = {}

    def __enter__(self) -> LazyWriter:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        try:
            for relative, (shape, dtype) in _expected_files(self.manifest).items():
                path = self.tmp / relative
                path.parent.mkdir(exist_ok=True)
                self.arrays[relative] = _Array.create(path, shape, np.dtype(dtype))
        except BaseException as error:  # no __exit__ after a failed __enter__: clean up here
            self.__exit__(type(error))
            raise
        return self

    def append(
        self,
        split: str,
        inputs: Mapping[str, np.ndarray],
        targets: np.ndarray,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append the next ``len(targets)`` samples of ``split`` (raw values, missing rows any
        finite value; ``masks``: True = present, for the modalities the manifest masks)."""
        n = len(targets)
        masks = dict(masks or {})
        declared = self.manifest.masks.get(split, [])
        undeclared = sorted(set(masks) - set(declared))
        if undeclared:
            raise ValueError(
                f"split {split!r}: masks given for {undeclared}, which the writer does not mask "
                f"in this split (declared: {declared}); pass masks={{{split!r}: [...]}} to "
                f"LazyWriter"
            )
        chunk: dict[str, np.ndarray] = {f"{split}/{TARGETS}.npy": np.asarray(targets)}
        for m in self.manifest.modalities:
            chunk[f"{split}/{m}.npy"] = np.asarray(inputs[m])
        for m in declared:
            if m not in masks:
                raise ValueError(f"split {split!r}: no mask given for modality {m!r}")
            mask = np.asarray(masks[m])
            if (problem := mask_problem(mask)) is not None:
                raise ValueError(
                    f"split {split!r}: the mask of modality {m!r} must hold 0/1 or bools (True "
                    f"= present), got {problem}"
                )
            chunk[f"{split}/{m}{MASK}.npy"] = mask.astype(bool)
        for relative, values in chunk.items():
            target = self.arrays[relative]
            if len(values) != n:
                raise ValueError(f"{relative}: {len(values)} rows in a chunk of {n} samples")
            end = target.filled + n
            if end > target.shape[0]:
                raise ValueError(f"{relative}: more than the {target.shape[0]} samples declared")
            block = np.ascontiguousarray(values, dtype=target.dtype)
            if block.shape[1:] != target.shape[1:]:
                raise ValueError(
                    f"{relative}: samples of shape {block.shape[1:]}, expected {target.shape[1:]}"
                )
            data = block.tobytes()
            target.file.write(data)
            target.digest.update(data)
            target.filled = end
            chunk[relative] = block  # the statistics are those of the values as stored
        if split == "train" and self.standardize:
            for m in self.manifest.modalities:
                mask = f"{split}/{m}{MASK}.npy"
                present = chunk[mask] if m in self.manifest.masks[split] else None
                rows = _scaler_rows(chunk[f"{split}/{m}.npy"], present)
                self.moments[m].update(rows)

    def __exit__(self, kind: type | None, *rest: Any) -> None:
        for target in self.arrays.values():
            target.file.close()
        if kind is not None:
            self.arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        short = [r for r, a in self.arrays.items() if a.filled != a.shape[0]]
        if short:
            self.arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ValueError(f"{self.dest}: fewer samples written than declared in {short[0]}")
        files = {}
        for relative, target in self.arrays.items():
            with open(self.tmp / relative, "rb+") as f:
                os.fsync(f.fileno())
            files[relative] = target.digest.hexdigest()
        self.arrays.clear()
        statistics = None
        if self.standardize:
            statistics = {}
            for m, shape in self.manifest.shapes.items():
                sequence = len(shape) == 2
                width = (shape[-1],) if sequence else (int(np.prod(shape)),)
                statistics[m] = self.moments[m].scaler(width, sequence)
        manifest = replace(self.manifest, statistics=statistics, files=files)
        text = manifest.to_json() + "\n"
        with (self.tmp / MANIFEST).open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if self.dest.exists() and self.overwrite:
            old = self.dest.parent / f".{self.dest.name}.{uuid.uuid4().hex[:12]}.old"
            self.dest.rename(old)
            self.tmp.rename(self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.dest)


def check_replaceable(dest: Path) -> None:
    """Overwriting deletes ``dest``: only a dataset folder (with its manifest), never a folder of
    the user's own files."""
    if not (dest / MANIFEST).is_file():
        raise ValueError(
            f"{dest} is not a dataset folder (no {MANIFEST}); overwriting only replaces a folder "
            f"written by interfuse convert (convert_task, LazyWriter); choose another destination"
        )


def convert_task(
    task: TaskData,
    dest: str | os.PathLike[str],
    chunk: int = 65536,
    standardize: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a :class:`TaskData` loaded with ``standardize=False`` (raw values) as a dataset
    folder, ``chunk`` samples at a time; with ``standardize`` the training statistics are
    accumulated while writing (and applied when the folder is read)."""
    first = task.train
    masks = {s: sorted(getattr(task, s).masks) for s in SPLITS}
    targets = first.targets
    writer = LazyWriter(
        dest,
        task=task.task,
        sizes={s: len(getattr(task, s)) for s in SPLITS},
        shapes={m: tuple(x.shape[1:]) for m, x in first.inputs.items()},
        encoders=task.encoders,
        target_shape=tuple(targets.shape[1:]),
        target_dtype=str(targets.numpy().dtype),
        dtypes={m: str(x.numpy().dtype) for m, x in first.inputs.items()},
        masks=masks,
        num_classes=task.num_classes,
        class_names=task.class_names,
        metrics=task.metrics,
        standardize=standardize,
        overwrite=overwrite,
    )
    with writer:
        for s in SPLITS:
            data = getattr(task, s)
            for start in range(0, len(data), chunk):
                part = slice(start, start + chunk)
                writer.append(
                    s,
                    {m: x[part].numpy() for m, x in data.inputs.items()},
                    data.targets[part].numpy(),
                    {m: k[part].numpy() for m, k in data.masks.items()},
                )
    return writer.dest
