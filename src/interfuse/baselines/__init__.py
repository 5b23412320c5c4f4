"""Fusion baselines (docs/training.md §8): early and late fusion, TFN and LMF, trained like ours.

None of them has a built-in ``relevance()``; explain them post hoc with :mod:`interfuse.explain`
(modality ablation, Shapley/Möbius values over modalities, EMAP). Two more baselines are
configurations of :class:`interfuse.MultimodalModel`: MNL without interactions (model ``mnl``)
and our model without IterBN/vBN (degree inflation; ``iterbn=False, vbn=False``).

Each file registers its model with :func:`interfuse.models.register_model`; a new baseline is
one new file here plus its import below.
"""

from .early import EarlyFusion
from .late import LateFusion
from .lmf import LowRankFusion
from .tfn import TensorFusion, tensor_fusion

__all__ = ["EarlyFusion", "LateFusion", "LowRankFusion", "TensorFusion", "tensor_fusion"]
