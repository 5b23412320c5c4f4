"""interfuse: interpretable multimodal deep learning.

Every modality and every interaction between modalities gets its own block in the final layer of
an MNL (multiple-norm-learning) head; lp-norm weights β over the blocks, learned through their
closed-form group-norm regulariser, are the relevance scores. IterBN keeps interaction blocks from
re-encoding lower-order signal. See Varshneya et al., *Interpretable Tensor Fusion*, IJCAI 2024.
"""

from . import baselines  # registers the baseline models
from .encoders import ENCODERS, MLP, SequenceCNN, SequenceGRU, register_encoder
from .fusion import (
    BatchCentering,
    InteractionFactors,
    IterBN,
    MNLFusion,
    Relevance,
    VectorBatchNorm,
    block_regularizer,
    group_norm_regularizer,
    optimal_beta,
)
from .inference import Prediction, predict
from .model import FusionOutput, MultimodalModel
from .models import MODELS, ModelSpec, build_model, register_model
from .results import RunResult
from .run import Run, RunPrediction, load_run
from .terms import resolve_interactions, term_name

__version__ = "0.1.0"

__all__ = [
    "ENCODERS",
    "MODELS",
    "ModelSpec",
    "Run",
    "RunPrediction",
    "RunResult",
    "SequenceGRU",
    "baselines",
    "build_model",
    "load_run",
    "register_encoder",
    "register_model",
    "BatchCentering",
    "FusionOutput",
    "MLP",
    "SequenceCNN",
    "InteractionFactors",
    "IterBN",
    "MNLFusion",
    "MultimodalModel",
    "Prediction",
    "Relevance",
    "VectorBatchNorm",
    "__version__",
    "block_regularizer",
    "group_norm_regularizer",
    "optimal_beta",
    "predict",
    "resolve_interactions",
    "term_name",
]
