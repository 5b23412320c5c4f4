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
call is made.

What a pickle may *build* is capped as well (:class:`PickleLimits`, by default a quarter of the
memory available): ``bytes(N)``/``bytearray(N)``, ``numpy.ndarray(shape)`` and container
constructors are checked before they allocate; a file larger than the budget is refused before
it is read; and after loading, the size the content would expand to (shared references counted
once per use, as ``numpy.asarray`` and ``.npz`` conversion would copy them: the "memo
amplification" of a few bytes of pickle into gigabytes) and its nesting depth are checked before
anything converts it. A refusal is a :class:`PickleBudgetError` naming the file and the limit.

:func:`convert_pickle` writes the content as an ``.npz`` archive (read with
``allow_pickle=False``) so a trusted pickle only needs to be parsed once.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..budget import available_memory, format_bytes
from ..io import atomic_write_bytes

__all__ = [
    "ALLOWED_GLOBALS",
    "PickleBudgetError",
    "PickleLimits",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "convert_pickle",
    "entry_name",
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


class PickleBudgetError(ValueError):
    """The pickle would build more than :class:`PickleLimits` allow; refused before allocating.

    ``exit_code`` 4 on the command line (not enough memory).
    """

    exit_code = 4


@dataclass(frozen=True)
class PickleLimits:
    """Caps on what one pickle may build.

    ``max_bytes`` and ``max_elements``: the content after expanding shared references (Python
    objects counted once per use); ``max_allocation``: any single object built from a size
    alone (``bytes(N)``, ``bytearray(N)``, ``numpy.ndarray(shape)``), which data pickles never
    need beyond their own size; ``max_depth``: nesting of containers.
    """

    max_bytes: int
    max_elements: int
    max_allocation: int = 1 << 20
    max_depth: int = 64

    @classmethod
    def default(cls, file_size: int = 0) -> PickleLimits:
        """For a file of ``file_size`` bytes: content up to 64× its size (at least 64 MiB) but
        at most a quarter of the available memory; single allocations up to its size (at least
        1 MiB); elements up to 8 per byte of file (at least 2^20)."""
        memory = max(64 << 20, available_memory() // 4)
        return cls(
            max_bytes=min(memory, max(64 << 20, 64 * file_size)),
            max_elements=min(memory // 64, max(1 << 20, 8 * file_size)),
            max_allocation=min(memory, max(1 << 20, file_size)),
        )


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

    def __init__(
        self, file: Any, source: str = "<pickle>", limits: PickleLimits | None = None
    ) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.limits = limits or PickleLimits.default()

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
        return _capped(getattr(importlib.import_module(module), name), name, self)

    def refuse(self, what: str) -> PickleBudgetError:
        return PickleBudgetError(
            f"{self.source}: refusing to build {what} from a size alone (limit "
            f"{format_bytes(self.limits.max_allocation)}, {self.limits.max_elements:,} "
            f"elements); the file may be malicious"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent references are not allowed")


def _capped(function: Any, name: str, owner: RestrictedUnpickler) -> Any:
    """``function`` with its allocation checked first: sizes of ``bytes``/``bytearray``,
    array shapes, and the lengths of iterables copied into containers."""
    limits = owner.limits
    if name in ("bytes", "bytearray"):

        def build_bytes(*args: Any) -> Any:
            if args and isinstance(args[0], int) and args[0] > limits.max_allocation:
                raise owner.refuse(f"{name}({args[0]})")
            if args and not isinstance(args[0], (int, str, bytes, bytearray)):
                _check_length(args[0], name, owner)
            return function(*args)

        return build_bytes
    if name == "ndarray":
        return _CappedNdarray(owner)
    if name == "_reconstruct":

        def build_array(*args: Any) -> Any:
            args = tuple(np.ndarray if isinstance(a, _CappedNdarray) else a for a in args)
            shape = args[1] if len(args) > 1 else 0
            _check_shape(shape, args[2] if len(args) > 2 else "b", name, owner)
            return function(*args)

        return build_array
    if name in ("list", "tuple", "set", "frozenset", "dict", "OrderedDict"):

        def build_container(*args: Any) -> Any:
            if args:
                _check_length(args[0], name, owner)
            return function(*args)

        return build_container
    if name == "dtype":

        def build_dtype(*args: Any) -> Any:
            result = function(*args)
            if result.itemsize > limits.max_allocation:
                raise owner.refuse(f"a dtype of {result.itemsize} bytes per element")
            return result

        return build_dtype
    return function


class _CappedNdarray:
    """Stands for ``numpy.ndarray`` in a pickle: calling it checks the size first; passed to
    ``_reconstruct`` (numpy's own pickles) it is replaced by the real class."""

    def __init__(self, owner: RestrictedUnpickler) -> None:
        self.owner = owner

    def __call__(self, shape: Any = 0, dtype: Any = float, *args: Any, **kwargs: Any) -> Any:
        _check_shape(shape, dtype, "ndarray", self.owner)
        if args or kwargs:  # a buffer argument would view memory the pickle does not own
            raise UnsafePickleError(f"{self.owner.source}: numpy.ndarray(shape, dtype) only")
        return np.ndarray(shape, dtype)


def _check_length(value: Any, name: str, owner: RestrictedUnpickler) -> None:
    try:
        n = len(value)
    except TypeError:
        raise UnsafePickleError(
            f"{owner.source}: {name}() of a {type(value).__name__} is not allowed in a data pickle"
        ) from None
    if n > owner.limits.max_elements:
        raise owner.refuse(f"{name}() of {n:,} elements")
    if isinstance(value, (bytes, bytearray, str)) and n > owner.limits.max_allocation:
        raise owner.refuse(f"{name}() of {n:,} characters")


def _check_shape(shape: Any, dtype: Any, name: str, owner: RestrictedUnpickler) -> None:
    dims = (shape,) if isinstance(shape, int) else shape
    try:
        dims = tuple(int(d) for d in dims)
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError, OverflowError):
        return  # numpy itself refuses malformed shapes and dtypes without allocating
    if any(d < 0 for d in dims):
        return
    size = math.prod(dims) * max(itemsize, 1)
    if size > owner.limits.max_allocation:
        raise owner.refuse(f"an array of shape {dims} ({format_bytes(size)})")


def content_size(obj: Any, limits: PickleLimits, source: str) -> tuple[int, int]:
    """``(elements, bytes)`` of ``obj`` with shared references counted once per use (as a copy
    would expand them), computed over distinct objects only; refuses beyond ``limits`` or
    deeper than ``limits.max_depth`` without recursing."""
    sizes: dict[int, tuple[int, int, int]] = {}  # id → (elements, bytes, depth)
    keep_alive = []
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if key in sizes and not expanded:
            continue
        children = _children(node)
        if not expanded and children:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            sizes.setdefault(key, (0, 0, -1))  # in progress (a cycle reads it as empty)
            keep_alive.append(node)
            continue
        elements, nbytes, depth = 1, _own_bytes(node), 0
        for child in children:
            e, b, d = sizes.get(id(child), (1, 0, 0))
            elements += e
            nbytes += b
            depth = max(depth, d + 1)
        if depth > limits.max_depth:
            raise PickleBudgetError(
                f"{source}: content nested deeper than {limits.max_depth} levels (the file may "
                f"be malicious or not a data file)"
            )
        if elements > limits.max_elements or nbytes > limits.max_bytes:
            raise PickleBudgetError(
                f"{source}: its content expands to {elements:,} elements, "
                f"{format_bytes(nbytes)} (shared references repeated), over the limit of "
                f"{limits.max_elements:,} elements and {format_bytes(limits.max_bytes)} (the "
                f"file may be malicious, or too large for this machine's memory)"
            )
        sizes[key] = (elements, nbytes, depth)
        keep_alive.append(node)
    return sizes[id(obj)][:2]


def _children(node: Any) -> list[Any]:
    if isinstance(node, Mapping):
        return [*node.keys(), *node.values()]
    if isinstance(node, (list, tuple, set, frozenset)):
        return list(node)
    if isinstance(node, np.ndarray) and node.dtype.hasobject:
        return list(node.ravel())
    return []


def _own_bytes(node: Any) -> int:
    if isinstance(node, np.ndarray):
        return int(node.nbytes)
    if isinstance(node, (bytes, bytearray, str)):
        return len(node)
    return 8


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def safe_loads(data: bytes, source: str = "<bytes>", limits: PickleLimits | None = None) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` within ``limits``."""
    limits = limits or PickleLimits.default(len(data))
    _check_file_size(len(data), source, limits)
    return _load(io.BytesIO(data), source, limits)


def safe_load(path: str | os.PathLike[str], limits: PickleLimits | None = None) -> Any:
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler` within ``limits``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    size = path.stat().st_size
    limits = limits or PickleLimits.default(size)
    _check_file_size(size, str(path), limits)
    with path.open("rb") as file:
        return _load(file, str(path), limits)


def _check_file_size(size: int, source: str, limits: PickleLimits) -> None:
    if size > limits.max_bytes:
        raise PickleBudgetError(
            f"{source}: {format_bytes(size)} is more than this machine can load safely "
            f"({format_bytes(limits.max_bytes)}; at most a quarter of the available memory)"
        )


def _load(file: Any, source: str, limits: PickleLimits) -> Any:
    try:
        content = RestrictedUnpickler(file, source, limits).load()
    except (UnsafePickleError, PickleBudgetError):
        raise
    except MemoryError:
        raise PickleBudgetError(
            f"{source}: ran out of memory while reading (the file may be malicious, or too "
            f"large for this machine)"
        ) from None
    except RecursionError:
        raise PickleBudgetError(f"{source}: content nested too deeply") from None
    except Exception as error:  # malformed input fails in many ways; name the file
        raise ValueError(
            f"{source}: not a readable data pickle ({type(error).__name__}: {error})"
        ) from None
    content_size(content, limits, source)
    return content


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


_PLAIN_PART = re.compile(r"^[^\x00-\x1f\x7f/\\:*?\"<>| ][^\x00-\x1f\x7f/\\:*?\"<>|]*$")


def entry_name(key: str) -> str:
    """A safe archive entry name for ``key``: ``/``-separated plain names (no empty part, no
    ``.`` or ``..``, so no leading ``/``; no backslash, colon, control or wildcard character,
    no leading space; at most 200 characters); anything else raises ``ValueError``."""
    parts = str(key).split("/")
    if len(str(key)) > 200 or not all(_PLAIN_PART.match(p) and p not in (".", "..") for p in parts):
        raise ValueError(
            f"refusing the key {str(key)[:80]!r}: an archive entry name must be plain "
            f"'/'-separated names (no '..' or '.', absolute paths, backslashes, colons, "
            f"wildcards or control characters)"
        )
    return "/".join(parts)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (as ``np.savez`` writes it) of ``arrays``, refusing object arrays.

    Written entry by entry so any key is allowed (``np.savez`` reserves some keyword names).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{entry_name(key)}.npy", "w", force_zip64=True) as entry:
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
    for key in arrays:
        try:
            entry_name(key)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    atomic_write_bytes(target, npz_bytes(arrays))
    written = {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}
    return written, skipped
