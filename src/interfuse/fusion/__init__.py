"""Fusion core: vector-wise batch norm, IterBN interactions of any order, and the MNL head."""

from .interactions import InteractionFactors, IterBN, outer_products
from .mnl import (
    MNLFusion,
    Relevance,
    block_regularizer,
    group_norm_regularizer,
    optimal_beta,
    relevance_from_norms,
)
from .norm import BatchCentering, VectorBatchNorm, set_sync_stats

__all__ = [
    "BatchCentering",
    "InteractionFactors",
    "IterBN",
    "MNLFusion",
    "Relevance",
    "VectorBatchNorm",
    "block_regularizer",
    "group_norm_regularizer",
    "optimal_beta",
    "outer_products",
    "relevance_from_norms",
    "set_sync_stats",
]
