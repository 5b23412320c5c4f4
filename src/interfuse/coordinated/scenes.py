"""Small RGB scenes with captions and full ground truth: boxes, attributes, word referents.

A scene is a ``(3, size, size)`` image (default 32×32, values in [0, 1]) with one or two objects
on a dark, noisy background. Every object is a *shape* × *colour* × *size* at a position; the
generator knows every object's box and, for every caption word, which object it describes.

* One object: it sits anywhere; captions name its size, colour, shape and a coarse position
  ("a small red circle in the top left").
* Two objects: one in each half of the image, side by side or one above the other, so their
  boxes never overlap; the two differ in shape *and* colour, so every shape or colour word of a
  caption refers to exactly one object. Captions name both and their relation
  ("a small red circle left of a large blue square").

Each scene gets :data:`N_PHRASINGS` captions, one per template, so there are several phrasings
of the same content. Captions are lists of lower-case words; ``referents[i][k][j]`` is the index
of the object that word ``j`` of caption ``k`` of scene ``i`` describes (its size, colour or
shape), or ``-1`` for every other word (articles, relations, positions).

Zero-shot classes are the (shape, colour) pairs of single-object scenes;
:func:`zero_shot_split` picks a seeded set of *unseen* pairs such that every shape and every
colour still occurs among the seen pairs. Everything is vectorised numpy and fully determined by
the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "COLOURS",
    "N_PHRASINGS",
    "SHAPES",
    "SIZES",
    "Scenes",
    "class_name",
    "make_scenes",
    "pointing_hits",
    "zero_shot_split",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.15),
    "purple": (0.65, 0.20, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: dict[str, float] = {"small": 3.5, "large": 6.0}
"""Size word → half-extent of the object in pixels (for a 32-pixel image; scaled with size)."""
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
N_PHRASINGS = 3

WORD_KIND_SIZE, WORD_KIND_COLOUR, WORD_KIND_SHAPE, WORD_KIND_OTHER = 0, 1, 2, 3


def class_name(shape: int, colour: int) -> str:
    """The zero-shot class of a (shape, colour) pair, e.g. ``"red circle"``."""
    return f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"


@dataclass(frozen=True)
class Scenes:
    """A batch of generated scenes and their ground truth (``N`` scenes, at most 2 objects).

    ``images`` ``(N, 3, S, S)`` float32 in [0, 1]; ``n_objects`` ``(N,)``; ``shape``, ``colour``,
    ``size`` ``(N, 2)`` int (entries of absent second objects are ``-1``); ``boxes`` ``(N, 2, 4)``
    float ``(x0, y0, x1, y1)`` in pixels (x to the right, y down; NaN for absent objects);
    ``captions[i][k]`` the words of phrasing ``k`` of scene ``i``; ``referents[i][k]`` the object
    index per word (``-1``: no object); ``word_kinds[i][k]`` the kind per word (0 size,
    1 colour, 2 shape, 3 other).
    """

    images: np.ndarray
    n_objects: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    boxes: np.ndarray
    captions: tuple[tuple[tuple[str, ...], ...], ...]
    referents: tuple[tuple[tuple[int, ...], ...], ...]
    word_kinds: tuple[tuple[tuple[int, ...], ...], ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """Zero-shot class per scene, ``shape * len(COLOURS) + colour`` of the first object."""
        return self.shape[:, 0] * len(COLOURS) + self.colour[:, 0]

    def caption_text(self, i: int, k: int) -> str:
        return " ".join(self.captions[i][k])

    def texts(self) -> list[str]:
        """All captions as strings, scene-major: scene ``i`` phrasing ``k`` at ``i*P + k``."""
        return [" ".join(c) for scene in self.captions for c in scene]


def zero_shot_split(seed: int, n_unseen: int = 10, min_seen: int = 2) -> np.ndarray:
    """Seeded boolean mask ``(n_shapes * n_colours,)``, True for *unseen* (shape, colour) pairs.

    Every shape keeps at least ``min_seen`` seen colours and every colour at least ``min_seen``
    seen shapes, so all attribute words occur in training; only combinations are new.
    """
    n_shapes, n_colours = len(SHAPES), len(COLOURS)
    most = n_shapes * n_colours - max(n_shapes, n_colours) * min_seen
    if not 0 < n_unseen <= most:
        raise ValueError(f"n_unseen must be in 1..{most}, got {n_unseen}")
    rng = np.random.default_rng([seed, 7919])
    for _ in range(10_000):
        unseen = np.zeros(n_shapes * n_colours, dtype=bool)
        unseen[rng.choice(unseen.size, n_unseen, replace=False)] = True
        seen = ~unseen.reshape(n_shapes, n_colours)
        if seen.sum(axis=1).min() >= min_seen and seen.sum(axis=0).min() >= min_seen:
            return unseen
    raise RuntimeError("no zero-shot split found")  # pragma: no cover


def _object_masks(
    shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks ``(N, K, S, S)`` of objects given per-object arrays ``(N, K)``."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = (coords[None, None, None, :] - cx[..., None, None]) / r[..., None, None]
    dy = (coords[None, None, :, None] - cy[..., None, None]) / r[..., None, None]
    ax, ay = np.abs(dx), np.abs(dy)
    masks = np.stack(
        [
            dx**2 + dy**2 <= 1.0,  # circle
            np.maximum(ax, ay) <= 0.85,  # square (about a circle's area)
            (dy >= -1.0) & (dy <= 0.8) & (ax <= (dy + 1.0) / 1.8),  # triangle, apex up
            ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0)),  # cross
            ax + ay <= 1.0,  # diamond
        ]
    )  # (n_shapes, N, K, S, S)
    index = np.clip(shape, 0, None)[None, ..., None, None]
    chosen = np.take_along_axis(masks, np.broadcast_to(index, (1, *masks.shape[1:])), 0)[0]
    return chosen & (shape >= 0)[..., None, None]


def _position_words(cx: float, cy: float, size: int) -> tuple[str, ...]:
    third = size / 3
    v = "top" if cy < third else ("bottom" if cy > 2 * third else "middle")
    h = "left" if cx < third else ("right" if cx > 2 * third else "centre")
    if (v, h) == ("middle", "centre"):
        return ("in", "the", "centre")
    return ("in", "the", v, h)


_RELATION = {  # layout → (A rel B, B rel A, "and a B <phrase>")
    "horizontal": (("left", "of"), ("right", "of"), ("to", "its", "right")),
    "vertical": (("above",), ("below",), ("below", "it")),
}


def _describe(size: int, colour: int, shape: int, obj: int) -> tuple[list[str], list[int]]:
    words = [SIZE_NAMES[size], COLOUR_NAMES[colour], SHAPES[shape]]
    return words, [obj, obj, obj]


def _captions(
    n_obj: int,
    shape: Sequence[int],
    colour: Sequence[int],
    size: Sequence[int],
    layout: str,
    position: tuple[str, ...],
) -> list[tuple[list[str], list[int]]]:
    a_words, a_ref = _describe(size[0], colour[0], shape[0], 0)
    if n_obj == 1:
        pos, pos_ref = list(position), [-1] * len(position)
        return [
            (["a", *a_words, *pos], [-1, *a_ref, *pos_ref]),
            (["there", "is", "a", *a_words, *pos], [-1, -1, -1, *a_ref, *pos_ref]),
            (
                [*pos, "a", a_words[1], a_words[2], "of", a_words[0], "size"],
                [*pos_ref, -1, 0, 0, -1, 0, -1],
            ),
        ]
    b_words, b_ref = _describe(size[1], colour[1], shape[1], 1)
    ab, ba, after = _RELATION[layout]
    return [
        (["a", *a_words, *ab, "a", *b_words], [-1, *a_ref, *[-1] * len(ab), -1, *b_ref]),
        (["a", *b_words, *ba, "a", *a_words], [-1, *b_ref, *[-1] * len(ba), -1, *a_ref]),
        (
            ["a", *a_words, "and", "a", *b_words, *after],
            [-1, *a_ref, -1, -1, *b_ref, *[-1] * len(after)],
        ),
    ]


def _kind(word: str) -> int:
    if word in SIZES:
        return WORD_KIND_SIZE
    if word in COLOURS:
        return WORD_KIND_COLOUR
    if word in SHAPES:
        return WORD_KIND_SHAPE
    return WORD_KIND_OTHER


def make_scenes(
    n: int,
    seed: int,
    *,
    image_size: int = 32,
    p_two: float = 0.6,
    allowed_pairs: np.ndarray | None = None,
    noise: float = 0.05,
    stream: int = 0,
) -> Scenes:
    """Generate ``n`` scenes, deterministically from ``seed``.

    ``p_two`` is the probability of a two-object scene. ``allowed_pairs`` (boolean mask over
    the ``len(SHAPES) * len(COLOURS)`` (shape, colour) classes) restricts the first object of
    every scene to those classes (used with ``p_two=0`` for zero-shot train/test sets).
    ``noise`` is the standard deviation of the Gaussian pixel noise. ``stream`` selects an
    independent sequence for the same seed (train and test sets of one seed use different ones).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= p_two <= 1.0:
        raise ValueError(f"p_two must be in [0, 1], got {p_two}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    n_shapes, n_colours = len(SHAPES), len(COLOURS)
    rng = np.random.default_rng([seed, stream, 104_729])
    scale = image_size / 32.0

    two = rng.random(n) < p_two
    n_objects = 1 + two.astype(np.int64)
    if allowed_pairs is None:
        first = rng.integers(0, n_shapes * n_colours, n)
    else:
        allowed = np.flatnonzero(np.asarray(allowed_pairs, dtype=bool))
        if allowed.size == 0:
            raise ValueError("allowed_pairs selects no class")
        first = allowed[rng.integers(0, allowed.size, n)]
    shape = np.stack([first // n_colours, (first // n_colours + rng.integers(1, n_shapes, n))])
    shape[1] %= n_shapes
    colour = np.stack([first % n_colours, first % n_colours + rng.integers(1, n_colours, n)])
    colour[1] %= n_colours
    size = rng.integers(0, len(SIZES), (2, n))
    shape, colour, size = shape.T.copy(), colour.T.copy(), size.T.copy()
    for arr in (shape, colour, size):
        arr[~two, 1] = -1
    radius = np.asarray(list(SIZES.values()), dtype=np.float32)[np.clip(size, 0, None)] * scale

    # Positions: one object anywhere; two objects in opposite halves (horizontal or vertical).
    vertical = rng.random(n) < 0.5
    margin = 1.0 * scale
    u = rng.random((n, 2, 2)).astype(np.float32)
    lo_full = radius + margin
    hi_full = image_size - radius - margin
    half = image_size / 2
    # Along the split axis: object 0 in [r, half - r], object 1 in [half + r, S - r].
    lo_split = np.stack([radius[:, 0] + margin, half + radius[:, 1] + margin * 0.5], axis=1)
    hi_split = np.stack([half - radius[:, 0] - margin * 0.5, image_size - radius[:, 1] - margin])
    hi_split = hi_split.T
    along = lo_split + u[..., 0] * (hi_split - lo_split)
    across = lo_full + u[..., 1] * (hi_full - lo_full)
    single_x = lo_full[:, 0] + u[:, 0, 0] * (hi_full[:, 0] - lo_full[:, 0])
    single_y = lo_full[:, 0] + u[:, 0, 1] * (hi_full[:, 0] - lo_full[:, 0])
    cx = np.where(vertical[:, None], across, along)
    cy = np.where(vertical[:, None], along, across)
    cx[~two, 0], cy[~two, 0] = single_x[~two], single_y[~two]
    cx[~two, 1], cy[~two, 1] = np.nan, np.nan
    boxes = np.stack([cx - radius, cy - radius, cx + radius, cy + radius], axis=-1)

    # Render: background, objects painted in order, pixel noise.
    masks = _object_masks(
        shape, np.nan_to_num(cx), np.nan_to_num(cy), radius, image_size
    )  # (N, 2, S, S)
    palette = np.asarray(list(COLOURS.values()), dtype=np.float32)
    rgb = palette[np.clip(colour, 0, None)] + rng.normal(0, 0.04, (n, 2, 3)).astype(np.float32)
    images = np.broadcast_to(
        (rng.random(n).astype(np.float32) * 0.15)[:, None, None, None],
        (n, 3, image_size, image_size),
    ).copy()
    for k in range(2):
        m = masks[:, k][:, None]  # (N, 1, S, S)
        images = np.where(m, rgb[:, k, :, None, None], images)
    images += rng.normal(0, noise, images.shape).astype(np.float32)
    images = np.clip(images, 0.0, 1.0).astype(np.float32)

    captions, referents, kinds = [], [], []
    for i in range(n):
        k = int(n_objects[i])
        position = _position_words(float(cx[i, 0]), float(cy[i, 0]), image_size)
        phrasings = _captions(
            k, shape[i], colour[i], size[i], "vertical" if vertical[i] else "horizontal", position
        )
        captions.append(tuple(tuple(w) for w, _ in phrasings))
        referents.append(tuple(tuple(r) for _, r in phrasings))
        kinds.append(tuple(tuple(_kind(x) for x in w) for w, _ in phrasings))
    boxes = np.where(two[:, None, None] | (np.arange(2) == 0)[None, :, None], boxes, np.nan)
    return Scenes(
        images=images,
        n_objects=n_objects,
        shape=shape,
        colour=colour,
        size=size,
        boxes=boxes.astype(np.float32),
        captions=tuple(captions),
        referents=tuple(referents),
        word_kinds=tuple(kinds),
    )


def pointing_hits(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each point ``(x, y)`` ``(M, 2)`` lies in its box ``(M, 4)`` (edges included)."""
    x, y = points[:, 0], points[:, 1]
    return (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
