"""Resource budgets: refuse work that cannot fit in memory *before* allocating it.

Pure arithmetic, no torch: :func:`available_memory` reads what this process may still
allocate (``MemAvailable``, the cgroup limit, ``RLIMIT_AS``); :func:`fusion_memory` estimates
what an MNL fusion model with interaction terms needs to train (parameters, buffers, optimiser
state and the per-batch activations of every interaction product, from the number of
modalities M, the interaction orders, the rank r and the batch size B); :func:`check_budget`
compares the two and raises :class:`ResourceBudgetError` with a message saying what to lower.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_TERMS",
    "MemoryEstimate",
    "ResourceBudgetError",
    "available_memory",
    "check_budget",
    "count_terms",
    "fusion_memory",
    "format_bytes",
]

MAX_TERMS = 100_000
"""Most interaction terms a model may have (each is a module; 2^M grows fast)."""

_FLOAT = 4  # bytes of a float32
_TRAINING_COPIES = 4  # a parameter, its gradient and AdamW's two moments
_ACTIVATION_COPIES = 4  # a product, its Wick correction, VBN output and their gradients


class ResourceBudgetError(ValueError):
    """The requested model or data would not fit in memory; nothing was allocated.

    ``exit_code`` 4 on the command line (as a ``MemoryError``).
    """

    exit_code = 4


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            return max(0, int(limit) - int(f.read().strip()))
    return None


def _address_space_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    return max(0, soft - used)


def available_memory() -> int:
    """Bytes this process may still allocate: the least of free RAM, the cgroup's room and
    the address-space limit (``RLIMIT_AS``); unknown → a generous 64 GiB."""
    limits = [
        v
        for v in (_meminfo_available(), _cgroup_available(), _address_space_available())
        if v is not None
    ]
    return min(limits) if limits else 64 << 30


def count_terms(spec: object, num_modalities: int) -> dict[int, int] | None:
    """``{order: number of interaction terms}`` of an interaction specification, counted
    without enumerating them; ``None`` for a specification this cannot read (it is then
    validated, and its terms enumerated, by :func:`interfuse.terms.resolve_interactions`)."""
    m = num_modalities
    if spec is None or spec == "none":
        return {}
    if isinstance(spec, bool):
        return None
    highest: int | None = None
    if spec == "pairs":
        highest = 2
    elif spec == "all":
        highest = m
    elif isinstance(spec, int):
        highest = min(spec, m)
    elif isinstance(spec, str) and spec.isdigit():
        highest = min(int(spec), m)
    if highest is not None:
        return {k: math.comb(m, k) for k in range(2, highest + 1)}
    items: Iterable[object] = spec.split(",") if isinstance(spec, str) else spec  # type: ignore[assignment]
    counts: dict[int, int] = {}
    try:
        for item in items:
            order = len(item.split("*")) if isinstance(item, str) else len(item)  # type: ignore[arg-type]
            counts[order] = counts.get(order, 0) + 1
    except TypeError:
        return None
    return counts


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes to train one model: ``parameters`` (with gradients and optimiser state),
    ``buffers`` (running statistics) and ``activations`` (one batch, forward and backward)."""

    parameters: int
    buffers: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.buffers + self.activations


def _subterm_sizes(
    terms: Mapping[int, int] | Sequence[Sequence[str]], num_modalities: int, rank: int
) -> int:
    """Σ r^|S| over every distinct non-empty sub-term S of the terms (IterBN's moments)."""
    if isinstance(terms, Mapping):  # all terms up to the highest order: every subset of M
        highest = max(terms, default=1)
        return sum(math.comb(num_modalities, j) * rank**j for j in range(1, highest + 1))
    return sum((1 + rank) ** len(t) - 1 for t in terms)  # an upper bound for explicit lists


def fusion_memory(
    term_orders: Mapping[int, int],
    num_modalities: int,
    rank: int,
    batch_size: int,
    num_outputs: int,
    embedding_dims: Sequence[int],
    explicit_terms: Sequence[Sequence[str]] | None = None,
) -> MemoryEstimate:
    """Training memory of an MNL fusion model (encoders not included).

    Interaction term S of order k has a block of r^k coordinates: a head weight of
    ``num_outputs × r^k``, vector batch norm statistics, and per sample its tensor product and
    Wick correction. IterBN keeps a running mean of every sub-term's product.
    """
    blocks = sum(count * rank**order for order, count in term_orders.items()) + sum(embedding_dims)
    factors = sum(embedding_dims) * rank if term_orders else 0
    parameters = (num_outputs + 2) * blocks + factors + num_outputs
    subterms = (
        _subterm_sizes(
            explicit_terms if explicit_terms is not None else term_orders, num_modalities, rank
        )
        if term_orders
        else 0
    )
    buffers = 2 * blocks + subterms
    activations = batch_size * (2 * subterms + 2 * blocks) * _ACTIVATION_COPIES // 2
    return MemoryEstimate(
        parameters=parameters * _FLOAT * _TRAINING_COPIES,
        buffers=buffers * _FLOAT,
        activations=activations * _FLOAT,
    )


def check_budget(
    estimate: MemoryEstimate, what: str, lower: str, available: int | None = None
) -> None:
    """Raise :class:`ResourceBudgetError` when ``estimate`` exceeds the available memory.

    ``what`` names the work (``"training the model"``); ``lower`` says what to lower
    (``"--rank, --interactions or --batch-size"``).
    """
    room = available_memory() if available is None else available
    if estimate.total <= room:
        return
    raise ResourceBudgetError(
        f"{what} needs about {format_bytes(estimate.total)} (parameters and optimiser state "
        f"{format_bytes(estimate.parameters)}, running statistics "
        f"{format_bytes(estimate.buffers)}, "
        f"activations per batch {format_bytes(estimate.activations)}) but only "
        f"{format_bytes(room)} is available; lower {lower}"
    )
