"""Models and losses of the coordinated pillar: DeViSE, a dual encoder, word-to-region grounding.

Losses (formulas from the papers, written here from their equations):

* :func:`hinge_rank_loss` — DeViSE (Frome et al., *DeViSE: A Deep Visual-Semantic Embedding
  Model*, NeurIPS 2013): ``Σ_{j≠y} max(0, margin − t_y·M v + t_j·M v)`` with unit-norm label
  embeddings ``t`` and the image's projected features ``M v``.
* :func:`info_nce` — symmetric InfoNCE (Oord et al., *Representation Learning with Contrastive
  Predictive Coding*, 2018; in its symmetric image–text form, Radford et al., *CLIP*, ICML 2021):
  mean of the cross-entropies of the similarity matrix's rows and columns, the matching pair on
  the diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DeViSE",
    "DualEncoder",
    "GroundingModel",
    "SceneCNN",
    "hinge_rank_loss",
    "info_nce",
    "zero_shot_predict",
]

CELL = 4
"""Side of a grounding cell in pixels (an image of side 32 has 8×8 cells)."""


def hinge_rank_loss(scores: Tensor, targets: Tensor, margin: float = 0.1) -> Tensor:
    """DeViSE hinge rank loss, averaged over the batch.

    ``scores`` ``(B, C)``: ``t_j · M v`` for every label ``j``; ``targets`` ``(B,)``: the true
    label ``y``. Per sample: ``Σ_{j≠y} max(0, margin − scores[y] + scores[j])``.
    """
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores (B, C) and targets (B,) expected, got {scores.shape}")
    true = scores.gather(1, targets.unsqueeze(1))
    hinge = (margin - true + scores).clamp(min=0.0)
    hinge = hinge.masked_fill(F.one_hot(targets, scores.shape[1]).bool(), 0.0)
    return hinge.sum(1).mean()


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` ``(B, d)`` (both unit norm).

    ``logits = logit_scale · a bᵀ``; the loss is the mean of the cross-entropy of each row
    against its diagonal entry and of each column against its diagonal entry.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"paired (B, d) embeddings expected, got {a.shape} and {b.shape}")
    logits = logit_scale * a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def zero_shot_predict(scores: Tensor, candidates: Tensor) -> Tensor:
    """The best-scored class among ``candidates`` (class ids) for each row of ``scores (B, C)``.

    With DeViSE scores ``t_j · M v`` and the unseen classes as candidates this is zero-shot
    prediction (the nearest unseen label embedding by dot product); with all classes, GZSL.
    """
    if candidates.numel() == 0:
        raise ValueError("no candidate classes")
    return candidates[scores[:, candidates].argmax(1)]


class SceneCNN(nn.Module):
    """Small CNN for ``(B, 3, 32, 32)`` scenes.

    :meth:`feature_map` gives ``(B, channels, 8, 8)`` local features: three 3×3 convolutions
    with batch norm, the first two followed by 2×2 max pooling, on the image with two coordinate
    channels appended (so features can encode position). :meth:`forward` gives a
    ``(B, output_dim)`` vector from the globally max-pooled features (what is there) and the
    map average-pooled to 4×4 (where it is), which relations and position words need.
    """

    def __init__(self, channels: int = 32, output_dim: int = 128, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        if channels < 2 or output_dim < 1:
            raise ValueError("SceneCNN: channels >= 2 and output_dim >= 1 required")
        self.image_size = image_size
        self.channels = channels
        self.output_dim = output_dim
        half = channels // 2

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(5, half), nn.MaxPool2d(2),
            *block(half, channels), nn.MaxPool2d(2),
            *block(channels, channels),
        )  # fmt: skip
        self.where = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(channels * 17, output_dim)
        grid = torch.linspace(-1, 1, image_size)
        yy, xx = torch.meshgrid(grid, grid, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy]).unsqueeze(0), persistent=False)

    def feature_map(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"SceneCNN expects (batch, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        return self.body(torch.cat([x, coords], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        fmap = self.feature_map(x)
        return self.head(torch.cat([fmap.amax(dim=(2, 3)), self.where(fmap)], dim=1))


class DeViSE(nn.Module):
    """Image encoder + linear map ``M`` into a fixed text-embedding space (Frome et al. 2013).

    ``label_embeddings`` ``(C, d)`` are the (unit-norm) text embeddings of every class name;
    ``forward`` returns the scores ``t_j · M v`` for all classes, of which training uses the
    seen ones with :func:`hinge_rank_loss`, and zero-shot prediction the unseen ones.
    """

    def __init__(self, label_embeddings: Tensor, image_dim: int = 128, channels: int = 32):
        super().__init__()
        if label_embeddings.dim() != 2:
            raise ValueError("label_embeddings must be (classes, dim)")
        self.encoder = SceneCNN(channels=channels, output_dim=image_dim)
        self.map = nn.Linear(image_dim, label_embeddings.shape[1], bias=False)
        self.register_buffer("labels", F.normalize(label_embeddings.float(), dim=1))

    def embed(self, x: Tensor) -> Tensor:
        """``M v``: the image in the text space ``(B, d)``."""
        return self.map(torch.relu(self.encoder(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x) @ self.labels.T


class DualEncoder(nn.Module):
    """Image tower and text tower into one unit-norm space, trained with :func:`info_nce`.

    ``text`` is any module mapping a text batch to ``(B, d_text)`` (a :class:`BagOfWords` on
    word indices, or an MLP on precomputed sentence embeddings); both towers end in a linear
    projection to ``dim``. The logit scale is learnt (initialised to 1/0.07, as in CLIP, and
    capped at 100).
    """

    def __init__(self, text: nn.Module, text_dim: int, dim: int = 64, channels: int = 32):
        super().__init__()
        self.image = SceneCNN(channels=channels, output_dim=128)
        self.image_project = nn.Sequential(nn.ReLU(), nn.Linear(128, dim))
        self.text = text
        self.text_project = nn.Sequential(nn.ReLU(), nn.Linear(text_dim, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def logit_scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def embed_images(self, x: Tensor) -> Tensor:
        return F.normalize(self.image_project(self.image(x)), dim=-1)

    def embed_texts(self, t: Tensor) -> Tensor:
        return F.normalize(self.text_project(self.text(t)), dim=-1)

    def loss(self, x: Tensor, t: Tensor) -> Tensor:
        return info_nce(self.embed_images(x), self.embed_texts(t), self.logit_scale)


class GroundingModel(nn.Module):
    """Word-to-region attention over the 8×8 cells of a small local CNN, learnt from pairs.

    Each vocabulary word ``w`` has a learnt query ``q_w``; each cell ``c`` (4×4 pixels) a key
    ``k_c = normalize(W [g_c; l_c])`` mixing two paths: a context CNN ``g`` whose receptive field
    (18 pixels) covers one object but not the image (it can recognise a shape), and a local path
    ``l`` (one 4×4 convolution with stride 4) that sees only the cell's own pixels, so a cell on
    the object and its neighbour, which share most of their context, still get different keys.
    Queries and keys are unit norm. The attention of word ``w`` is
    ``a_w = softmax_c(s · q_w·k_c)``; the word's match to the image is ``Σ_c a_w,c q_w·k_c`` and
    the caption–image score is the mean of its words' matches (padding excluded). Trained only
    from (image, caption) pairs, with a symmetric InfoNCE over the batch's caption–image scores
    plus a word-presence term and a rotation-equivariance term on the attention (see
    :meth:`loss`, :meth:`equivariance_loss`): no word is ever told where its object is.
    After the attention-based alignment of Karpathy & Fei-Fei (*Deep Visual-Semantic
    Alignments*, CVPR 2015) and Lee et al. (*Stacked Cross Attention*, ECCV 2018), reduced to its
    core. Word matches depend on the word only, so they are computed once per vocabulary word.
    """

    def __init__(
        self, vocab_size: int, dim: int = 64, channels: int = 32, sharpness: float = 10.0
    ) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1 or channels < 2:
            raise ValueError("GroundingModel: vocab_size >= 2, dim >= 1, channels >= 2 required")
        half = channels // 2
        self.context = nn.Sequential(
            nn.Conv2d(5, half, 3, padding=1), nn.BatchNorm2d(half), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(half, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        )  # fmt: skip
        # Receptive field exactly one cell: the key can tell the cell on the object from its
        # neighbours, which the 18-pixel context path alone cannot (measured: BENCHMARKS.md §6).
        self.local = nn.Sequential(
            nn.Conv2d(3, half, CELL, stride=CELL), nn.BatchNorm2d(half), nn.ReLU()
        )
        self.mix = nn.Conv2d(channels + half, dim, 1)
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.sharpness = sharpness
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.presence_scale = nn.Parameter(torch.tensor(10.0))
        self.presence_bias = nn.Parameter(torch.zeros(vocab_size))

    def cells(self, x: Tensor) -> Tensor:
        """Unit-norm cell keys ``(B, cells, dim)`` (cells row-major over the 8×8 grid)."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % CELL or x.shape[3] % CELL:
            raise ValueError(f"GroundingModel expects (batch, 3, H, W) images, got {x.shape}")
        grid_y = torch.linspace(-1, 1, x.shape[2], device=x.device)
        grid_x = torch.linspace(-1, 1, x.shape[3], device=x.device)
        yy, xx = torch.meshgrid(grid_y, grid_x, indexing="ij")
        coords = torch.stack([xx, yy]).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        context = self.context(torch.cat([x, coords], dim=1))
        keys = self.mix(torch.cat([context, self.local(x)], dim=1))
        return F.normalize(keys.flatten(2).transpose(1, 2), dim=-1)

    def vocabulary_similarity(self, x: Tensor) -> Tensor:
        """``q_w · k_c`` for every image, cell and vocabulary word ``(B, cells, vocab)``."""
        return self.cells(x) @ F.normalize(self.words.weight, dim=-1).T

    def attention(self, x: Tensor, ids: Tensor) -> Tensor:
        """Attention of each word of caption ``i`` over the cells of image ``i``: ``(B, T, C)``."""
        att = torch.softmax(self.sharpness * self.vocabulary_similarity(x), dim=1)
        return att.gather(2, ids.unsqueeze(1).expand(-1, att.shape[1], -1)).transpose(1, 2)

    def word_matches(self, x: Tensor) -> Tensor:
        """Attention-pooled match ``Σ_c a_w,c q_w·k_c`` of every vocabulary word ``(B, vocab)``."""
        sim = self.vocabulary_similarity(x)  # (B, C, V)
        return (torch.softmax(self.sharpness * sim, dim=1) * sim).sum(1)

    @staticmethod
    def word_counts(ids: Tensor, vocab_size: int) -> Tensor:
        """Bag of words ``(B, vocab)`` of padded index rows (padding index 0 not counted)."""
        counts = torch.zeros(ids.shape[0], vocab_size, device=ids.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
        counts[:, 0] = 0.0
        return counts

    def scores(self, x: Tensor, ids: Tensor) -> Tensor:
        """Caption–image scores ``(B_img, B_txt)`` for every image against every caption."""
        counts = self.word_counts(ids, self.words.num_embeddings)
        counts = counts / counts.sum(1, keepdim=True).clamp(min=1.0)
        return self.word_matches(x) @ counts.T

    def equivariance_loss(self, sim: Tensor, sim_rotated: Tensor, words: Tensor) -> Tensor:
        """Disagreement of the attention maps of an image and of the image rotated by 180°.

        ``sim`` and ``sim_rotated`` ``(B, cells, vocab)`` are :meth:`vocabulary_similarity` of
        ``x`` and of ``x`` rotated by 180°; ``words`` ``(B, vocab)`` weighs the words compared
        (the caption's words). Where an object is does not depend on how the image is turned,
        so the attention of the rotated image, rotated back, should equal the attention of the
        image: the loss is the symmetric KL divergence between the two, ``½(KL(a‖b) + KL(b‖a))``,
        averaged over the weighted words. A model whose attention sits one cell *beside* its
        object (which the contrastive objective alone does not penalise) fails this, because
        the rotation turns "one cell above" into "one cell below": the only offset both agree
        on is zero. After the equivariance regulariser of Wang et al. (*Self-supervised
        Equivariant Attention Mechanism for Weakly Supervised Semantic Segmentation*, CVPR
        2020), here for word-to-region attention.
        """
        side = math.isqrt(sim.shape[1])
        if side * side != sim.shape[1] or sim_rotated.shape != sim.shape:
            raise ValueError(f"square cell grids of equal shape expected, got {sim.shape}")
        back = sim_rotated.unflatten(1, (side, side)).flip(1, 2).flatten(1, 2)
        log_a = torch.log_softmax(self.sharpness * sim, dim=1)
        log_b = torch.log_softmax(self.sharpness * back, dim=1)
        kl = ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(1)  # (B, V): KL(a‖b) + KL(b‖a)
        return 0.5 * (kl * words).sum() / words.sum().clamp(min=1.0)

    def loss(self, x: Tensor, ids: Tensor, equivariance: float = 0.0) -> Tensor:
        """Symmetric InfoNCE over caption–image scores plus a word-presence term.

        The word-presence term is multiple-instance learning from the same pairs: image ``i``
        contains word ``w`` iff its caption does; the logit ``s·match(i, w) + b_w`` is scored
        by binary cross-entropy against that, over the whole vocabulary. Where the word is in
        the image is never given. With ``equivariance > 0`` the batch is also seen rotated by
        180° and ``equivariance ×`` :meth:`equivariance_loss` over the caption's words is added
        (the rotated images enter no other term: their captions' position words would be wrong).
        """
        if equivariance < 0:
            raise ValueError(f"equivariance must be >= 0, got {equivariance}")
        if equivariance > 0:
            both = self.vocabulary_similarity(torch.cat([x, x.flip(2, 3)]))
            sim, sim_rotated = both[: x.shape[0]], both[x.shape[0] :]
        else:
            sim = self.vocabulary_similarity(x)
        matches = (torch.softmax(self.sharpness * sim, dim=1) * sim).sum(1)  # (B, V)
        counts = self.word_counts(ids, matches.shape[1])
        scores = matches @ (counts / counts.sum(1, keepdim=True).clamp(min=1.0)).T
        logits = self.log_scale.clamp(max=math.log(100.0)).exp() * scores
        target = torch.arange(x.shape[0], device=x.device)
        contrastive = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        present = (counts > 0).float()[:, 1:]
        word_logits = self.presence_scale * matches[:, 1:] + self.presence_bias[1:]
        presence = F.binary_cross_entropy_with_logits(word_logits, present)
        if equivariance > 0:
            words = (counts > 0).float()
            return (
                contrastive
                + presence
                + equivariance * self.equivariance_loss(sim, sim_rotated, words)
            )
        return contrastive + presence
