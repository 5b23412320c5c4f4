"""Terms: which modalities (and which interactions between them) a model has a block for.

A *term* is a non-empty tuple of modality names in the model's declaration order: a
unimodal term ``("text",)`` or an interaction term ``("video", "text")``. Humans and files see
its *name*, the modality names joined by ``*`` (``"video*text"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Union

from torch import nn

Term = tuple[str, ...]
InteractionSpec = Union[str, int, Iterable[Union[str, Sequence[str]]], None]  # noqa: UP007 (runtime alias, Python 3.10)

TERM_SEPARATOR = "*"
RESERVED_MODALITY_NAMES = frozenset(dir(nn.ModuleDict())) | {""}
"""Names that cannot be modality names: attributes of nn.ModuleDict (e.g. "keys", "to")."""


def term_name(term: Sequence[str]) -> str:
    """``("video", "text")`` → ``"video*text"``."""
    return TERM_SEPARATOR.join(term)


def validate_modality_names(names: Iterable[str]) -> tuple[str, ...]:
    """Return the names as a tuple, or raise ``ValueError`` naming the offending one."""
    names = tuple(names)
    if not names:
        raise ValueError("at least one modality is required")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"modality names must be non-empty strings, got {name!r}")
        if TERM_SEPARATOR in name or "." in name:
            raise ValueError(
                f"modality name {name!r} may not contain '{TERM_SEPARATOR}' or '.' "
                f"('{TERM_SEPARATOR}' joins modality names in interaction term names)"
            )
        if name in RESERVED_MODALITY_NAMES:
            raise ValueError(
                f"modality name {name!r} is reserved (it is an nn.ModuleDict attribute)"
            )
        if name in seen:
            raise ValueError(f"modality {name!r} is declared twice")
        seen.add(name)
    return names


def canonical_term(term: Iterable[str], modalities: Sequence[str]) -> Term:
    """Order a term's modalities as declared; reject unknown or repeated modalities."""
    parts = term.split(TERM_SEPARATOR) if isinstance(term, str) else list(term)
    if not any(parts):
        raise ValueError("empty term: a term needs at least one modality")
    position = {m: i for i, m in enumerate(modalities)}
    for m in parts:
        if m not in position:
            raise ValueError(
                f"term {term_name(parts)!r} names unknown modality {m!r}; "
                f"known modalities: {list(modalities)}"
            )
    if len(set(parts)) != len(parts):
        raise ValueError(f"term {term_name(parts)!r} repeats a modality")
    return tuple(sorted(parts, key=position.__getitem__))


def resolve_interactions(spec: InteractionSpec, modalities: Sequence[str]) -> list[Term]:
    """Turn an interaction specification into canonical interaction terms (order ≥ 2).

    ``spec`` is ``"none"``/``None``, ``"pairs"``, ``"all"``, an integer maximal order (1 means none,
    2 means pairs, …), or an explicit list of terms given as tuples of modality names or as
    ``"a*b"`` strings. Terms come back sorted by order, then by declaration order.
    """
    modalities = tuple(modalities)
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return []
    if isinstance(spec, bool):
        raise TypeError("interactions must be 'none', 'pairs', 'all', an int or a list of terms")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"maximal interaction order must be >= 1, got {spec}")
        return _all_terms(modalities, 2, min(spec, len(modalities)))
    if isinstance(spec, str):
        if spec == "pairs":
            return _all_terms(modalities, 2, 2)
        if spec == "all":
            return _all_terms(modalities, 2, len(modalities))
        if TERM_SEPARATOR in spec:  # a single term such as "a*b", or "a*b,c*d" (as on the CLI)
            return resolve_interactions(
                [t.strip() for t in spec.split(",") if t.strip()], modalities
            )
        raise ValueError(
            f"unknown interaction specification {spec!r}; use 'none', 'pairs', 'all', a maximal "
            f"order, or a list of terms such as ['a*b', ('a', 'c')]"
        )
    terms: list[Term] = []
    for raw in spec:
        term = canonical_term(raw, modalities)
        if len(term) < 2:
            raise ValueError(
                f"interaction term {term_name(term)!r} has a single modality; unimodal terms are "
                f"always present, interactions need at least two modalities"
            )
        if term in terms:
            raise ValueError(f"interaction term {term_name(term)!r} is listed twice")
        terms.append(term)
    position = {m: i for i, m in enumerate(modalities)}
    return sorted(terms, key=lambda t: (len(t), [position[m] for m in t]))


def _all_terms(modalities: Sequence[str], lowest: int, highest: int) -> list[Term]:
    return [
        tuple(c) for k in range(lowest, highest + 1) for c in itertools.combinations(modalities, k)
    ]


def nonempty_subsets(term: Term) -> list[Term]:
    """All non-empty sub-terms of ``term`` (order preserved), smallest first."""
    return [tuple(c) for k in range(1, len(term) + 1) for c in itertools.combinations(term, k)]
