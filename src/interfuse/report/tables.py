"""The one markdown table renderer, and the number formatting every report shares."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["by_share", "code", "finite_or", "fmt", "is_number", "markdown_table"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A GitHub-markdown table. ``align`` has one letter per column, ``l`` or ``r`` (numbers);
    by default the first column is left-aligned and the others right-aligned. ``|`` in a cell is
    escaped and newlines become spaces."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} letters for {len(header)} columns")
    rules = ["---:" if a == "r" else "---" for a in align]
    lines = [list(header), rules, *rows]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines) + "\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """Backticks keep the ``*`` in ``a*b*c`` from being read as emphasis."""
    return f"`{text}`"


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt(x: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``—`` for None, ``n/a`` for NaN."""
    if x is None:
        return "—"
    if is_number(x):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def finite_or(x: object, default: float) -> float:
    return float(x) if is_number(x) and math.isfinite(x) else default


def by_share(shares: Mapping[str, float]) -> list[str]:
    """Terms sorted by share, largest first (ties keep their order)."""
    return sorted(shares, key=lambda t: -finite_or(shares[t], -math.inf))
