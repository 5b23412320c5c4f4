"""Fusion baselines (SPEC §6): early and late fusion, TFN and LMF, trained like our model.

None of them has a built-in ``relevance()``; explain them post hoc with :mod:`interfuse.explain`
(modality ablation, Shapley/Möbius values over modalities, EMAP). The remaining baselines of the
SPEC are configurations of :class:`interfuse.MultimodalModel`: MNL without interactions
(``interactions="none"``) and our model without IterBN/vBN (degree inflation).
"""

from .early import EarlyFusion
from .late import LateFusion
from .lmf import LowRankFusion
from .tfn import TensorFusion, tensor_fusion

__all__ = ["EarlyFusion", "LateFusion", "LowRankFusion", "TensorFusion", "tensor_fusion"]
