"""Coordinated representations, co-learning, alignment and example-based translation.

The second pillar of interfuse, next to joint representations and fusion: separate image and
text encoders that meet in one space (coordinated representations), used for

* zero-shot classification of unseen (shape, colour) pairs with DeViSE,
* cross-modal retrieval in a symmetric-InfoNCE space,
* word-to-region grounding (alignment) learnt from (image, caption) pairs,
* example-based captioning (translation) scored with BLEU,
* co-learning on mfeat: a weak view helped by a strong one on unlabelled pairs.

Data comes from a seeded scene generator with full ground truth
(:mod:`interfuse.coordinated.scenes`) and from mfeat; text from a pretrained sentence encoder
shipped as a package, or a small bag-of-words model (:mod:`interfuse.coordinated.text`).
"""

from .metrics import bleu, harmonic_mean, per_class_accuracy, recall_at_k, text_positives
from .models import (
    DeViSE,
    DualEncoder,
    GroundingModel,
    SceneCNN,
    hinge_rank_loss,
    info_nce,
    zero_shot_predict,
)
from .results import (
    SCHEMA_VERSION,
    CaptionResult,
    ColearnResult,
    GroundingResult,
    RetrievalResult,
    ZeroShotResult,
    load_result,
)
from .scenes import COLOURS, SHAPES, SIZES, Scenes, make_scenes, zero_shot_split
from .tasks import (
    CaptionConfig,
    ColearnConfig,
    GroundingConfig,
    RetrievalConfig,
    ZeroShotConfig,
    run_caption,
    run_colearn,
    run_grounding,
    run_retrieval,
    run_zeroshot,
)
from .text import BagOfWords, SentenceEncoder, Vocabulary, minilm_available, tokenize

__all__ = [
    "COLOURS",
    "SCHEMA_VERSION",
    "SHAPES",
    "SIZES",
    "BagOfWords",
    "CaptionConfig",
    "CaptionResult",
    "ColearnConfig",
    "ColearnResult",
    "DeViSE",
    "DualEncoder",
    "GroundingConfig",
    "GroundingModel",
    "GroundingResult",
    "RetrievalConfig",
    "RetrievalResult",
    "SceneCNN",
    "Scenes",
    "SentenceEncoder",
    "Vocabulary",
    "ZeroShotConfig",
    "ZeroShotResult",
    "bleu",
    "harmonic_mean",
    "hinge_rank_loss",
    "info_nce",
    "load_result",
    "make_scenes",
    "minilm_available",
    "per_class_accuracy",
    "recall_at_k",
    "run_caption",
    "run_colearn",
    "run_grounding",
    "run_retrieval",
    "run_zeroshot",
    "text_positives",
    "tokenize",
    "zero_shot_predict",
    "zero_shot_split",
]
