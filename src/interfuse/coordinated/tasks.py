"""The five coordinated tasks: seeded runs that return a typed result and figure data.

Each ``run_*`` function takes a frozen config, trains small models with a plain seeded torch
loop (AdamW, fixed epochs, no model selection, so nothing is tuned on the test scenes) and
returns ``(result, figure_data)``. Train and test scenes come from independent streams of the
scene generator for the same seed. Rendering lives in :mod:`interfuse.coordinated.render`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interfuse.data.mfeat import VIEWS, mfeat_arrays
from interfuse.encoders import MLP

from .metrics import (
    bleu,
    cell_centres,
    harmonic_mean,
    per_class_accuracy,
    recall_at_k,
    text_positives,
)
from .models import (
    DeViSE,
    DualEncoder,
    GroundingModel,
    SceneCNN,
    hinge_rank_loss,
    zero_shot_predict,
)
from .results import (
    CaptionResult,
    ColearnResult,
    GroundingResult,
    RetrievalResult,
    ZeroShotResult,
    fraction_tag,
)
from .scenes import (
    COLOURS,
    SHAPES,
    WORD_KIND_COLOUR,
    WORD_KIND_OTHER,
    WORD_KIND_SHAPE,
    Scenes,
    class_name,
    make_scenes,
    pointing_hits,
    zero_shot_split,
)
from .text import BagOfWords, SentenceEncoder, Vocabulary

__all__ = [
    "CaptionConfig",
    "ColearnConfig",
    "GroundingConfig",
    "RetrievalConfig",
    "ZeroShotConfig",
    "label_embeddings",
    "run_caption",
    "run_colearn",
    "run_grounding",
    "run_retrieval",
    "run_zeroshot",
]

TEXT_ENCODERS = ("minilm", "bow")
LABEL_TEMPLATES = ("a {c} {s}", "a photo of a {c} {s}", "a {c} {s} shape")
TRAIN_STREAM, TEST_STREAM, SEEN_TEST_STREAM = 1, 2, 3


# --------------------------------------------------------------------------- helpers


def _settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in ("seed", "cache_dir")}


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None or not value > 0:  # `not >` also refuses NaN
            raise ValueError(f"{name.replace('_', '-')} must be > 0, got {value}")


def _check_batches(n_train: int, batch_size: int) -> None:
    """:func:`_fit` skips batches of one sample (no contrastive pair, no batch-norm statistics),
    so fewer than two would leave the model untrained while its numbers are reported."""
    for name, value in (("n-train", n_train), ("batch-size", batch_size)):
        if value < 2:
            raise ValueError(f"{name} must be >= 2 (training needs batches of 2), got {value}")


def _check_text(text: str) -> None:
    if text not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {text!r}; choose one of {', '.join(TEXT_ENCODERS)}")


def _fit(
    model: nn.Module,
    step_loss: Callable[[Tensor], Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
) -> list[float]:
    """Plain seeded mini-batch training; ``step_loss(indices)`` returns the batch loss."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=epochs * max(1, -(-n // batch_size)), pct_start=0.15
    )
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:
                continue
            loss = step_loss(idx)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
            batches += 1
        history.append(total / max(batches, 1))
    model.eval()
    return history


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 512) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def _images(scenes: Scenes) -> Tensor:
    return torch.from_numpy(scenes.images)


# --------------------------------------------------------------------------- zero-shot


@dataclass(frozen=True)
class ZeroShotConfig:
    """DeViSE zero-shot settings. ``text``: ``minilm`` (pretrained) or ``bow`` (random BoW)."""

    seed: int = 0
    n_train: int = 3000
    n_test: int = 1000
    n_unseen: int = 10
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    margin: float = 0.1
    text: str = "minilm"
    cache_dir: str | None = None


def label_embeddings(
    text: str, seed: int = 0, cache_dir: str | None = None, dim: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Unit-norm text embeddings ``(n_shapes * n_colours, d)`` of every (shape, colour) class.

    ``minilm``: the mean of all-MiniLM-L6-v2 embeddings of :data:`LABEL_TEMPLATES` filled with
    the class name; ``bow``: the seeded untrained :class:`BagOfWords` (mean of random word
    vectors) of "a {colour} {shape}".
    """
    _check_text(text)
    names = [class_name(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    parts = [n.split(" ") for n in names]
    if text == "minilm":
        encoder = SentenceEncoder(cache_dir=cache_dir)
        texts = [t.format(c=c, s=s) for c, s in parts for t in LABEL_TEMPLATES]
        emb = encoder.encode(texts).reshape(len(names), len(LABEL_TEMPLATES), -1).mean(1)
    else:
        vocab = Vocabulary.from_texts(f"a {c} {s}" for c, s in parts)
        torch.manual_seed(seed)
        bow = BagOfWords(len(vocab), dim=dim, output_dim=dim, bigram_buckets=0)
        with torch.no_grad():
            emb = bow.pooled(vocab.encode([f"a {c} {s}" for c, s in parts])).numpy()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), names


def run_zeroshot(config: ZeroShotConfig) -> tuple[ZeroShotResult, dict[str, Any]]:
    """DeViSE (Frome et al. 2013) on (shape, colour) classes, unseen pairs held out entirely."""
    _check_positive(
        n_train=config.n_train, n_test=config.n_test, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, margin=config.margin,
    )  # fmt: skip
    _check_batches(config.n_train, config.batch_size)
    _check_text(config.text)
    start = time.perf_counter()
    unseen_mask = zero_shot_split(config.seed, config.n_unseen)
    seen_ids, unseen_ids = np.flatnonzero(~unseen_mask), np.flatnonzero(unseen_mask)
    train = make_scenes(
        config.n_train, config.seed, p_two=0.0, allowed_pairs=~unseen_mask, stream=TRAIN_STREAM
    )
    test_u = make_scenes(
        config.n_test, config.seed, p_two=0.0, allowed_pairs=unseen_mask, stream=TEST_STREAM
    )
    test_s = make_scenes(
        config.n_test, config.seed, p_two=0.0, allowed_pairs=~unseen_mask, stream=SEEN_TEST_STREAM
    )
    emb, names = label_embeddings(config.text, config.seed, config.cache_dir)

    x_train = _images(train)
    remap = np.full(len(names), -1)
    remap[seen_ids] = np.arange(seen_ids.size)
    y_train = torch.from_numpy(remap[train.labels])
    seen_cols = torch.from_numpy(seen_ids)
    fit = {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr}

    torch.manual_seed(config.seed)
    devise = DeViSE(torch.from_numpy(emb))
    _fit(
        devise,
        lambda i: hinge_rank_loss(devise(x_train[i])[:, seen_cols], y_train[i], config.margin),
        len(train), seed=config.seed, **fit,
    )  # fmt: skip
    scores_u = _batched(devise, _images(test_u))
    scores_s = _batched(devise, _images(test_s))
    every = torch.arange(len(names))
    zsl_pred = zero_shot_predict(scores_u, torch.from_numpy(unseen_ids)).numpy()
    zsl = per_class_accuracy(zsl_pred, test_u.labels)
    g_unseen = per_class_accuracy(zero_shot_predict(scores_u, every).numpy(), test_u.labels)
    g_seen = per_class_accuracy(zero_shot_predict(scores_s, every).numpy(), test_s.labels)
    per_class = {
        names[c]: float((zsl_pred[test_u.labels == c] == c).mean())
        for c in unseen_ids
        if (test_u.labels == c).any()
    }

    # Conventional baseline: the same CNN with a softmax over the seen classes.
    torch.manual_seed(config.seed)
    classifier = nn.Sequential(SceneCNN(), nn.ReLU(), nn.Linear(128, seen_ids.size))
    _fit(
        classifier,
        lambda i: F.cross_entropy(classifier(x_train[i]), y_train[i]),
        len(train), seed=config.seed, **fit,
    )  # fmt: skip
    clf_pred = seen_ids[_batched(classifier, _images(test_s)).argmax(1).numpy()]
    clf_seen = per_class_accuracy(clf_pred, test_s.labels)

    result = ZeroShotResult(
        seed=config.seed,
        settings=_settings(config),
        text_encoder=config.text,
        seen_classes=tuple(names[c] for c in seen_ids),
        unseen_classes=tuple(names[c] for c in unseen_ids),
        n_train=len(train),
        n_test_unseen=len(test_u),
        n_test_seen=len(test_s),
        zsl_top1=zsl,
        zsl_chance=1.0 / unseen_ids.size,
        gzsl_seen=g_seen,
        gzsl_unseen=g_unseen,
        gzsl_harmonic=harmonic_mean(g_seen, g_unseen),
        gzsl_chance=1.0 / len(names),
        classifier_seen=clf_seen,
        classifier_gzsl_harmonic=harmonic_mean(clf_seen, 0.0),
        per_class_unseen=per_class,
        seconds=time.perf_counter() - start,
    )
    shown = np.arange(min(16, len(test_u)))
    figure = {
        "images": test_u.images[shown],
        "true": [names[c] for c in test_u.labels[shown]],
        "pred": [names[c] for c in zsl_pred[shown]],
    }
    return result, figure


# --------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class RetrievalConfig:
    """Dual-encoder settings. ``text``: ``bow`` (learnt, with bigrams) or ``minilm`` (frozen
    all-MiniLM-L6-v2 sentence embeddings with a learnt projection)."""

    seed: int = 0
    n_train: int = 4000
    n_test: int = 200
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    dim: int = 64
    text: str = "bow"
    cache_dir: str | None = None


@dataclass
class _Space:
    """A trained dual encoder and how to turn caption strings into its text-tower inputs."""

    model: DualEncoder
    texts_to_input: Callable[[list[str]], Tensor]
    history: list[float] = field(default_factory=list)

    def embed_texts(self, texts: list[str]) -> Tensor:
        return _batched(self.model.embed_texts, self.texts_to_input(texts))

    def embed_images(self, images: np.ndarray) -> Tensor:
        return _batched(self.model.embed_images, torch.from_numpy(images))


def _train_space(train: Scenes, config: RetrievalConfig) -> _Space:
    texts = train.texts()  # scene-major, N_PHRASINGS per scene
    per_scene = len(train.captions[0])
    if config.text == "bow":
        vocab = Vocabulary.from_texts(texts)

        def to_input(batch: list[str]) -> Tensor:
            # padded to the batch's longest text: the model pools over words, so the width
            # changes nothing, and a text longer than every training caption keeps all its words
            return vocab.encode(batch)

        torch.manual_seed(config.seed)
        text_module: nn.Module = BagOfWords(len(vocab), dim=64, output_dim=128)
    else:
        encoder = SentenceEncoder(cache_dir=config.cache_dir)

        def to_input(batch: list[str]) -> Tensor:
            return torch.from_numpy(encoder.encode(batch))

        torch.manual_seed(config.seed)
        text_module = nn.Sequential(nn.Linear(encoder.dim, 256), nn.ReLU(), nn.Linear(256, 128))
    model = DualEncoder(text_module, text_dim=128, dim=config.dim)
    all_text = to_input(texts)
    images = _images(train)
    pick = torch.Generator().manual_seed(config.seed + 1)

    def step(idx: Tensor) -> Tensor:
        k = torch.randint(0, per_scene, (idx.numel(),), generator=pick)
        return model.loss(images[idx], all_text[idx * per_scene + k])

    history = _fit(
        model, step, len(train), epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, seed=config.seed,
    )  # fmt: skip
    return _Space(model, to_input, history)


def _check_space(config: RetrievalConfig) -> None:
    _check_positive(
        n_train=config.n_train, n_test=config.n_test, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, dim=config.dim,
    )  # fmt: skip
    _check_batches(config.n_train, config.batch_size)
    _check_text(config.text)


def run_retrieval(config: RetrievalConfig) -> tuple[RetrievalResult, dict[str, Any]]:
    """Image↔caption retrieval on held-out scenes in a symmetric-InfoNCE space."""
    _check_space(config)
    start = time.perf_counter()
    train = make_scenes(config.n_train, config.seed, stream=TRAIN_STREAM)
    test = make_scenes(config.n_test, config.seed, stream=TEST_STREAM)
    space = _train_space(train, config)
    texts = test.texts()
    refs = [[" ".join(c) for c in scene] for scene in test.captions]
    img = space.embed_images(test.images)
    txt = space.embed_texts(texts)
    sim = (img @ txt.T).numpy()
    pos = text_positives(refs, texts)
    i2t = recall_at_k(sim, pos)
    t2i = recall_at_k(sim.T, pos.T)
    result = RetrievalResult(
        seed=config.seed,
        settings=_settings(config),
        text_encoder=config.text,
        n_train=len(train),
        n_test_images=len(test),
        n_test_captions=len(texts),
        i2t_r1=i2t[1], i2t_r5=i2t[5], i2t_r10=i2t[10],
        t2i_r1=t2i[1], t2i_r5=t2i[5], t2i_r10=t2i[10],
        i2t_r1_chance=float(pos.sum(1).mean() / len(texts)),
        t2i_r1_chance=float(pos.sum(0).mean() / len(test)),
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    shown = np.arange(min(8, len(test)))
    top = np.argsort(-sim[shown], axis=1)[:, :3]
    figure = {
        "images": test.images[shown],
        "retrieved": [[texts[j] for j in row] for row in top],
        "correct": [[bool(pos[i, j]) for j in row] for i, row in zip(shown, top)],
    }
    return result, figure


# --------------------------------------------------------------------------- captioning


@dataclass(frozen=True)
class CaptionConfig(RetrievalConfig):
    """Example-based captioning: the retrieval space's settings plus nothing else."""


def run_caption(config: CaptionConfig) -> tuple[CaptionResult, dict[str, Any]]:
    """Caption each held-out image with its nearest training caption; BLEU vs random captions."""
    _check_space(config)
    start = time.perf_counter()
    train = make_scenes(config.n_train, config.seed, stream=TRAIN_STREAM)
    test = make_scenes(config.n_test, config.seed, stream=TEST_STREAM)
    space = _train_space(train, config)
    pool = sorted(set(train.texts()))
    img = space.embed_images(test.images)
    txt = space.embed_texts(pool)
    chosen = [pool[j] for j in (img @ txt.T).argmax(1).tolist()]
    rng = np.random.default_rng([config.seed, 5])
    random_caps = [pool[j] for j in rng.integers(0, len(pool), len(test))]
    refs = [[" ".join(c) for c in scene] for scene in test.captions]
    result = CaptionResult(
        seed=config.seed,
        settings=_settings(config),
        text_encoder=config.text,
        n_train=len(train),
        n_test=len(test),
        bleu4=bleu(chosen, refs, 4),
        bleu1=bleu(chosen, refs, 1),
        random_bleu4=bleu(random_caps, refs, 4),
        random_bleu1=bleu(random_caps, refs, 1),
        exact_match=float(np.mean([c in r for c, r in zip(chosen, refs)])),
        examples=tuple((refs[i][0], chosen[i], random_caps[i]) for i in range(min(8, len(test)))),
        seconds=time.perf_counter() - start,
    )
    shown = np.arange(min(8, len(test)))
    figure = {
        "images": test.images[shown],
        "captions": [chosen[i] for i in shown],
        "references": [refs[i][0] for i in shown],
    }
    return result, figure


# --------------------------------------------------------------------------- grounding


@dataclass(frozen=True)
class GroundingConfig:
    """Word-to-region attention settings."""

    seed: int = 0
    n_train: int = 3000
    n_test: int = 300
    epochs: int = 20
    batch_size: int = 96
    lr: float = 3e-3
    dim: int = 64
    equivariance: float = 0.1


def run_grounding(config: GroundingConfig) -> tuple[GroundingResult, dict[str, Any]]:
    """Train word-to-region attention from (image, caption) pairs; score pointing accuracy."""
    _check_positive(
        n_train=config.n_train, n_test=config.n_test, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, dim=config.dim,
    )  # fmt: skip
    _check_batches(config.n_train, config.batch_size)
    if not 0 <= config.equivariance < float("inf"):
        raise ValueError(f"equivariance must be a finite number >= 0, got {config.equivariance}")
    start = time.perf_counter()
    train = make_scenes(config.n_train, config.seed, stream=TRAIN_STREAM)
    test = make_scenes(config.n_test, config.seed, stream=TEST_STREAM)
    vocab = Vocabulary.from_texts(train.texts())
    per_scene = len(train.captions[0])
    # each call pads to its own longest caption (the model reads words, not positions past the
    # caption's end): test captions never set a training setting
    ids = vocab.encode([c for scene in train.captions for c in scene])
    images = _images(train)
    torch.manual_seed(config.seed)
    model = GroundingModel(len(vocab), dim=config.dim)
    pick = torch.Generator().manual_seed(config.seed + 1)

    def step(idx: Tensor) -> Tensor:
        k = torch.randint(0, per_scene, (idx.numel(),), generator=pick)
        return model.loss(images[idx], ids[idx * per_scene + k], config.equivariance)

    _fit(
        model, step, len(train), epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, seed=config.seed,
    )  # fmt: skip

    # Pointing: the most attended cell of each object word, over every phrasing of every scene.
    centres = cell_centres(train.images.shape[-1], 8)
    test_images = _images(test)
    hits = {WORD_KIND_SHAPE: [], WORD_KIND_COLOUR: [], "all": []}
    rand = {WORD_KIND_SHAPE: [], "all": []}
    centre = {WORD_KIND_SHAPE: [], "all": []}
    image_centre = np.full((1, 2), train.images.shape[-1] / 2.0)
    maps = []
    with torch.no_grad():
        for k in range(per_scene):
            t_ids = vocab.encode([scene[k] for scene in test.captions])
            att = torch.cat(
                [
                    model.attention(test_images[i : i + 256], t_ids[i : i + 256])
                    for i in range(0, len(test), 256)
                ]
            ).numpy()  # (N, T, cells)
            if k == 0:
                maps = att
            for i in range(len(test)):
                for j, (ref, kind) in enumerate(zip(test.referents[i][k], test.word_kinds[i][k])):
                    if ref < 0 or kind == WORD_KIND_OTHER:
                        continue
                    box = test.boxes[i, ref][None]
                    hit = bool(pointing_hits(centres[att[i, j].argmax()][None], box)[0])
                    in_box = pointing_hits(centres, np.repeat(box, len(centres), 0))
                    at_centre = bool(pointing_hits(image_centre, box)[0])
                    for key in ("all", kind):
                        if key in hits:
                            hits[key].append(hit)
                        if key in rand:
                            rand[key].append(float(in_box.mean()))
                            centre[key].append(at_centre)
        sims = torch.cat(
            [
                model.scores(test_images[i : i + 100], vocab.encode(
                    [scene[0] for scene in test.captions]))
                for i in range(0, len(test), 100)
            ]
        ).numpy()  # fmt: skip
    refs = [[" ".join(c) for c in scene] for scene in test.captions]
    texts0 = [r[0] for r in refs]
    r1 = recall_at_k(sims, text_positives(refs, texts0), ks=(1,))[1]
    result = GroundingResult(
        seed=config.seed,
        settings=_settings(config),
        n_train=len(train),
        n_test_words=len(hits["all"]),
        pointing_shape=float(np.mean(hits[WORD_KIND_SHAPE])),
        pointing_colour=float(np.mean(hits[WORD_KIND_COLOUR])),
        pointing_all=float(np.mean(hits["all"])),
        random_baseline=float(np.mean(rand["all"])),
        centre_baseline=float(np.mean(centre["all"])),
        random_baseline_shape=float(np.mean(rand[WORD_KIND_SHAPE])),
        centre_baseline_shape=float(np.mean(centre[WORD_KIND_SHAPE])),
        retrieval_i2t_r1=r1,
        seconds=time.perf_counter() - start,
    )
    shown = np.arange(min(4, len(test)))
    figure = {
        "images": test.images[shown],
        "words": [list(test.captions[i][0]) for i in shown],
        "kinds": [list(test.word_kinds[i][0]) for i in shown],
        "maps": [maps[i, : len(test.captions[i][0])].reshape(-1, 8, 8) for i in shown],
        "boxes": test.boxes[shown],
        "referents": [list(test.referents[i][0]) for i in shown],
    }
    return result, figure


# --------------------------------------------------------------------------- co-learning


@dataclass(frozen=True)
class ColearnConfig:
    """mfeat co-learning settings: the weak view is evaluated alone at test time."""

    seed: int = 0
    weak: str = "morph"
    strong: str = "karhunen"
    fractions: tuple[float, ...] = (0.05, 0.10)
    test_fraction: float = 0.3
    epochs: int = 300
    lr: float = 1e-2
    hidden: int = 64
    distill_weight: float = 1.0
    data_path: str | None = None


def _stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified random subset: ``fraction`` of each class, at least one each."""
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, round(fraction * members.size))
        chosen.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(chosen))


def _train_mlp(
    x: Tensor, loss_fn: Callable[[Tensor], Tensor], classes: int, config: ColearnConfig, seed: int
) -> MLP:
    torch.manual_seed(seed)
    model = MLP(x.shape[1], hidden=(config.hidden,), output_dim=classes, dropout=0.1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-3)
    model.train()
    for _ in range(config.epochs):
        loss = loss_fn(model(x))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def _accuracy(model: nn.Module, x: Tensor, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1).numpy() == y).mean())


def run_colearn(config: ColearnConfig) -> tuple[ColearnResult, dict[str, Any]]:
    """Weak mfeat view with few labels: alone vs helped by a strong view's soft labels.

    *Helped* = cross-view distillation on the unlabelled training pairs: a classifier on the
    strong view is fitted to the labelled samples, and its predicted class probabilities on
    every unlabelled training sample become soft targets for the weak view's classifier (a
    one-directional form of co-training, Blum & Mitchell, COLT 1998; cross-modal supervision
    transfer, Gupta et al., CVPR 2016). At test time only the weak view is used.
    """
    for name in (config.weak, config.strong):
        if name not in VIEWS:
            raise ValueError(f"unknown mfeat view {name!r}; known: {', '.join(VIEWS)}")
    if config.weak == config.strong:
        raise ValueError("weak and strong views must differ")
    if not config.fractions or not all(0 < f < 1 for f in config.fractions):
        raise ValueError(f"label fractions must be in (0, 1), got {config.fractions}")
    if len({fraction_tag(f) for f in config.fractions}) < len(config.fractions):
        raise ValueError(f"label fractions must differ, got {config.fractions}")
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {config.test_fraction}")
    _check_positive(epochs=config.epochs, lr=config.lr, hidden=config.hidden)
    start = time.perf_counter()
    views, labels = mfeat_arrays(config.data_path)
    rng = np.random.default_rng([config.seed, 11])
    test_idx = _stratified(labels, config.test_fraction, rng)
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    empty = np.setdiff1d(np.unique(labels), labels[train_idx])
    if empty.size:
        raise ValueError(
            f"test fraction {config.test_fraction} leaves no training sample of class "
            f"{', '.join(map(str, empty))}; lower it"
        )

    def standardise(view: str) -> tuple[Tensor, Tensor]:
        x = views[view]
        mean, std = x[train_idx].mean(0), x[train_idx].std(0) + 1e-8
        z = ((x - mean) / std).astype(np.float32)
        return torch.from_numpy(z[train_idx]), torch.from_numpy(z[test_idx])

    weak_tr, weak_te = standardise(config.weak)
    strong_tr, strong_te = standardise(config.strong)
    y_tr, y_te = labels[train_idx], labels[test_idx]
    classes = int(labels.max()) + 1
    y_tr_t = torch.from_numpy(y_tr)

    def supervised(idx: np.ndarray) -> Callable[[Tensor], Tensor]:
        ti = torch.from_numpy(idx)
        return lambda logits: F.cross_entropy(logits[ti], y_tr_t[ti])

    full = _train_mlp(weak_tr, supervised(np.arange(y_tr.size)), classes, config, config.seed)
    weak_alone, weak_helped, strong_alone, n_labelled = [], [], [], []
    for f in config.fractions:
        lab = _stratified(y_tr, f, np.random.default_rng([config.seed, 13, round(f * 1e6)]))
        unl = torch.from_numpy(np.setdiff1d(np.arange(y_tr.size), lab))
        n_labelled.append(int(lab.size))
        weak = _train_mlp(weak_tr, supervised(lab), classes, config, config.seed)
        strong = _train_mlp(strong_tr, supervised(lab), classes, config, config.seed)
        with torch.no_grad():
            soft = torch.softmax(strong(strong_tr), dim=1)[unl]
        base = supervised(lab)

        def helped_loss(
            logits: Tensor,
            soft: Tensor = soft,
            unl: Tensor = unl,
            base: Callable[[Tensor], Tensor] = base,
        ) -> Tensor:
            distil = -(soft * F.log_softmax(logits[unl], dim=1)).sum(1).mean()
            return base(logits) + config.distill_weight * distil

        helped = _train_mlp(weak_tr, helped_loss, classes, config, config.seed)
        weak_alone.append(_accuracy(weak, weak_te, y_te))
        weak_helped.append(_accuracy(helped, weak_te, y_te))
        strong_alone.append(_accuracy(strong, strong_te, y_te))
    result = ColearnResult(
        seed=config.seed,
        settings=_settings(config),
        weak_view=config.weak,
        strong_view=config.strong,
        n_train=int(train_idx.size),
        n_test=int(test_idx.size),
        fractions=tuple(float(f) for f in config.fractions),
        n_labelled=tuple(n_labelled),
        weak_alone=tuple(weak_alone),
        weak_helped=tuple(weak_helped),
        strong_alone=tuple(strong_alone),
        weak_all_labels=_accuracy(full, weak_te, y_te),
        chance=1.0 / classes,
        seconds=time.perf_counter() - start,
    )
    return result, {}
