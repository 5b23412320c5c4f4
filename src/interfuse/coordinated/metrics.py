"""Metrics of the coordinated tasks: recall@K, per-class accuracy, harmonic mean, BLEU, pointing.

BLEU (Papineni et al., *BLEU: a Method for Automatic Evaluation of Machine Translation*, ACL
2002) is computed by ``torchmetrics`` at corpus level: clipped n-gram precisions up to n = 4,
geometric mean, brevity penalty, several references per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torchmetrics.text import BLEUScore

__all__ = [
    "bleu",
    "cell_centres",
    "harmonic_mean",
    "per_class_accuracy",
    "recall_at_k",
    "text_positives",
]


def recall_at_k(
    similarity: np.ndarray, positives: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Fraction of queries (rows) with a positive candidate among their ``k`` best-scored.

    ``similarity`` ``(queries, candidates)``; ``positives`` a boolean matrix of the same shape
    with at least one True per row. Ties count against the query: the rank of a query's best
    positive is the number of negatives scoring at least as high (a constant score gives no
    hit at k smaller than the number of negatives + 1). NaN scores are refused (they compare
    false with everything, so they would rank a positive first).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if similarity.shape != positives.shape or similarity.ndim != 2:
        raise ValueError(f"shapes differ: {similarity.shape} vs {positives.shape}")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    if np.isnan(similarity).any():
        raise ValueError(
            f"similarity has {int(np.isnan(similarity).sum())} NaN scores (a diverged model?)"
        )
    best = np.where(positives, similarity, -np.inf).max(axis=1, keepdims=True)
    rank = ((similarity >= best) & ~positives).sum(axis=1)  # 0 = a positive is first
    return {k: float((rank < k).mean()) for k in ks}


def text_positives(query_texts: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
    """``positives[i, j]``: candidate text ``j`` equals one of query ``i``'s reference texts.

    Identical strings cannot be told apart by any text model, so a caption that is word for word
    one of the scene's own captions counts as a correct match wherever it came from.
    """
    index: dict[str, list[int]] = {}
    for j, text in enumerate(candidates):
        index.setdefault(text, []).append(j)
    out = np.zeros((len(query_texts), len(candidates)), dtype=bool)
    for i, refs in enumerate(query_texts):
        for text in refs:
            out[i, index.get(text, [])] = True
    return out


def per_class_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over the classes present in ``target`` of the accuracy within that class."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or target.size == 0:
        raise ValueError("pred and target must be non-empty and of one shape")
    classes = np.unique(target)
    return float(np.mean([(pred[target == c] == c).mean() for c in classes]))


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``, 0 when both are 0 (the GZSL summary of seen and unseen accuracy)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n_gram: int = 4) -> float:
    """Corpus BLEU-``n_gram`` of ``candidates`` against their reference lists (torchmetrics)."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError("one non-empty reference list per candidate expected")
    metric = BLEUScore(n_gram=n_gram)
    return float(metric(list(candidates), [list(r) for r in references]))


def cell_centres(image_size: int = 32, grid: int = 8) -> np.ndarray:
    """Centre ``(x, y)`` in pixels of each cell of a ``grid × grid`` map, row-major ``(g², 2)``."""
    step = image_size / grid
    centres = (np.arange(grid) + 0.5) * step
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)
