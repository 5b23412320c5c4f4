"""Rank statistics and fidelity of relevance values to a ground truth (pure functions)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from .terms import TERM_SEPARATOR


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for < 2 items or a constant side.

    Computed by :func:`scipy.stats.spearmanr`; a constant side (no ranking to compare) gives NaN
    without scipy's warning.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)


TIE_TOLERANCE = 0.01
"""In rank agreement, values within this fraction of a method's largest absolute value of 0
count as tied at 0 (their order is noise, not a ranking)."""


def tied_near_zero(values: Sequence[float], tolerance: float = TIE_TOLERANCE) -> list[float]:
    """``values`` with every entry whose magnitude is below ``tolerance × max |value|`` set to 0,
    so that near-zero values tie instead of being ranked by noise. NaN stays NaN (it is not
    small) and plays no part in the scale."""
    scale = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    return [0.0 if abs(v) < tolerance * scale else v for v in values]


def interaction_share(shares: Mapping[str, float]) -> float:
    """Total share on interaction terms (names containing ``*``)."""
    return float(sum(v for t, v in shares.items() if TERM_SEPARATOR in t))


def fidelity(shares: Mapping[str, float], truth_shares: Mapping[str, float]) -> dict[str, float]:
    """How well relevance shares match known ground-truth shares.

    - ``spearman``: rank correlation (average ranks for ties) over the model's unimodal
      terms; NaN for fewer than two such terms or when either side is constant.
    - ``l1``: Σ |share − truth| over all terms of either side (a missing entry is 0).
    - ``leakage``: total share on terms whose ground-truth share is 0 (or missing).
    - ``interaction_share``: total share on interaction terms (names containing ``*``).
    """
    terms = list(shares) + [t for t in truth_shares if t not in shares]
    share = {t: float(shares.get(t, 0.0)) for t in terms}
    truth = {t: float(truth_shares.get(t, 0.0)) for t in terms}
    unimodal = [t for t in shares if TERM_SEPARATOR not in t]
    return {
        "spearman": spearman([share[t] for t in unimodal], [truth[t] for t in unimodal]),
        "l1": float(sum(abs(share[t] - truth[t]) for t in terms)),
        "leakage": float(sum(share[t] for t in terms if truth[t] == 0.0)),
        "interaction_share": interaction_share(share),
    }
