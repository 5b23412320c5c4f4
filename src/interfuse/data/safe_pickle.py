"""Read pickled numpy data without running code, and convert it once to ``.npz``.

A pickle can name any importable callable and have it called while loading (``os.system`` …),
so :func:`pickle.load` on a downloaded file runs whatever its author wanted. Here pickles are
read only by :class:`RestrictedUnpickler`, whose ``find_class`` resolves nothing but the globals
in :data:`ALLOWED_GLOBALS`:

* numpy's array and scalar reconstruction: ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy._core.multiarray._reconstruct``, ``numpy._core.multiarray.scalar`` and
  ``numpy._core.numeric._frombuffer`` (pickle protocol 5), each also under its numpy 1.x module
  ``numpy.core.*`` (numpy 2 renamed ``numpy.core`` to ``numpy._core``);
* plain containers and values: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``,
  ``bytes``, ``bytearray``, ``int``, ``float``, ``complex``, ``bool`` and
  ``collections.OrderedDict`` (Python 2 pickles name them under ``__builtin__``);
* ``_codecs.encode``, which protocol 0–2 pickles use to rebuild ``bytes``; it is replaced by a
  function that only performs the ``latin-1`` encoding those pickles use.

Everything else raises :class:`UnsafePickleError` naming the global and the file, before any
call is made. :func:`convert_pickle` writes the content as an ``.npz`` archive (read with
``allow_pickle=False``) so a trusted pickle only needs to be parsed once.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "convert_pickle",
    "flatten_arrays",
    "npz_bytes",
    "safe_load",
    "safe_loads",
]

_NUMPY_RECONSTRUCTION = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
}
_BUILTINS = {
    ("builtins", name)
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
    )
}
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    _NUMPY_RECONSTRUCTION | _BUILTINS | {("collections", "OrderedDict"), ("_codecs", "encode")}
)
"""``(module, name)`` pairs a pickle may reference; everything else is rejected."""

_PYTHON2_MODULES = {"__builtin__": "builtins"}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle references a global outside :data:`ALLOWED_GLOBALS`; nothing was run."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol 0–2 pickles store bytes as latin-1 text."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise UnsafePickleError("_codecs.encode is only allowed on strings")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy arrays and plain data).

    ``source`` names the file in error messages. Python 2 pickles are read with
    ``encoding="latin1"`` (numpy's recommendation for their byte strings).
    """

    def __init__(self, file: Any, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}'; only numpy arrays, "
                f"dicts, lists, tuples, strings and numbers may appear in a data pickle "
                f"(the file may be malicious or not a data file)"
            )
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module.startswith("numpy.core.") and _has_module("numpy._core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy >= 2
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent references are not allowed")


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return _load(io.BytesIO(data), source)


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    with path.open("rb") as file:
        return _load(file, str(path))


def _load(file: Any, source: str) -> Any:
    try:
        return RestrictedUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # malformed input fails in many ways; name the file
        raise ValueError(
            f"{source}: not a readable data pickle ({type(error).__name__}: {error})"
        ) from None


def flatten_arrays(obj: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Nested dicts of arrays → ``{"a/b": array}``; also returns ``{key: why skipped}``.

    Lists and tuples become arrays when numpy can stack them; object arrays become unicode
    arrays when they hold only strings (e.g. sample ids), otherwise they are skipped (an
    ``.npz`` read without pickle cannot hold Python objects).
    """
    arrays: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            sub_arrays, sub_skipped = flatten_arrays(value, name)
            arrays.update(sub_arrays)
            skipped.update(sub_skipped)
        return arrays, skipped
    key = prefix or "data"
    try:
        array = np.asarray(obj)
    except ValueError as error:  # ragged lists
        return {}, {key: f"cannot be stacked into one array ({error})"}
    if array.dtype.hasobject:
        items = [x.decode("latin-1") if isinstance(x, bytes) else x for x in array.ravel()]
        if array.dtype != object or not all(isinstance(x, str) for x in items):
            return {}, {key: "holds Python objects other than strings"}
        array = np.array(items, dtype=str).reshape(array.shape)
    arrays[key] = array
    return arrays, skipped


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (as ``np.savez`` writes it) of ``arrays``, refusing object arrays.

    Written entry by entry so any key is allowed (``np.savez`` reserves some keyword names).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def convert_pickle(
    source: str | os.PathLike[str], target: str | os.PathLike[str]
) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """Read a data pickle safely and write its arrays to ``target`` (``.npz``, atomically).

    Nested dict keys are joined with ``/`` (``data["train"]["vision"]`` → ``"train/vision"``).
    Returns ``({key: (shape, dtype)}, {skipped key: reason})``.
    """
    arrays, skipped = flatten_arrays(safe_load(source))
    if not arrays:
        raise ValueError(f"{source}: no arrays to convert")
    atomic_write_bytes(target, npz_bytes(arrays))
    written = {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}
    return written, skipped
