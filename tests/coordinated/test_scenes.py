"""The scene generator: determinism, boxes, attributes and word referents."""

import numpy as np
import pytest

from interfuse.coordinated.scenes import (
    COLOURS,
    SHAPES,
    SIZES,
    WORD_KIND_COLOUR,
    WORD_KIND_SHAPE,
    WORD_KIND_SIZE,
    make_scenes,
    pointing_hits,
    zero_shot_split,
)

COLOUR_NAMES = list(COLOURS)
SIZE_NAMES = list(SIZES)


def test_same_seed_same_scenes_and_other_stream_differs():
    a, b = make_scenes(40, 3), make_scenes(40, 3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.captions == b.captions and a.referents == b.referents
    c = make_scenes(40, 3, stream=1)
    assert not np.array_equal(a.images, c.images)


def test_objects_lie_in_their_boxes_and_boxes_do_not_overlap():
    s = make_scenes(200, 0, noise=0.0)
    size = s.images.shape[-1]
    centre = np.arange(size) + 0.5
    for i in range(len(s)):
        palette = np.array([COLOURS[COLOUR_NAMES[c]] for c in s.colour[i, : s.n_objects[i]]])
        pixels = s.images[i].transpose(1, 2, 0)  # (S, S, 3)
        for k in range(s.n_objects[i]):
            close = np.abs(pixels - palette[k]).max(-1) < 0.2  # object colour (jitter 0.04)
            ys, xs = np.nonzero(close)
            assert ys.size > 0
            x0, y0, x1, y1 = s.boxes[i, k]
            assert (centre[xs] >= x0).all() and (centre[xs] <= x1).all()
            assert (centre[ys] >= y0).all() and (centre[ys] <= y1).all()
        if s.n_objects[i] == 2:
            a, b = s.boxes[i]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert s.shape[i, 0] != s.shape[i, 1] and s.colour[i, 0] != s.colour[i, 1]
        else:
            assert np.isnan(s.boxes[i, 1]).all() and s.shape[i, 1] == -1


def test_every_attribute_word_names_its_referent():
    s = make_scenes(100, 1)
    assert {1, 2} == set(s.n_objects.tolist())
    for i in range(len(s)):
        assert len(s.captions[i]) == 3
        seen = set()
        for words, refs, kinds in zip(s.captions[i], s.referents[i], s.word_kinds[i]):
            assert len(words) == len(refs) == len(kinds)
            for w, r, k in zip(words, refs, kinds):
                if k == WORD_KIND_SHAPE:
                    assert w == SHAPES[s.shape[i, r]]
                elif k == WORD_KIND_COLOUR:
                    assert w == COLOUR_NAMES[s.colour[i, r]]
                elif k == WORD_KIND_SIZE:
                    assert w == SIZE_NAMES[s.size[i, r]]
                else:
                    assert r == -1
                if r >= 0:
                    seen.add(r)
        assert seen == set(range(s.n_objects[i]))  # every object is described


def test_relation_words_follow_the_boxes():
    s = make_scenes(100, 2, p_two=1.0)
    for i in range(len(s)):
        words, refs = s.captions[i][0], s.referents[i][0]
        first = refs[1]  # "a <size> <colour> <shape> <relation> ..."
        a, b = s.boxes[i, first], s.boxes[i, 1 - first]
        if words[4] == "left":
            assert a[2] <= b[0]
        elif words[4] == "above":
            assert a[3] <= b[1]
        else:
            raise AssertionError(words)


def test_zero_shot_split_keeps_every_shape_and_colour_seen():
    for seed in range(5):
        unseen = zero_shot_split(seed, n_unseen=10).reshape(len(SHAPES), len(COLOURS))
        assert unseen.sum() == 10
        assert ((~unseen).sum(1) >= 2).all() and ((~unseen).sum(0) >= 2).all()
    s = make_scenes(300, 0, p_two=0.0, allowed_pairs=zero_shot_split(0))
    assert zero_shot_split(0)[s.labels].all() and (s.n_objects == 1).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        make_scenes(0, 0)
    with pytest.raises(ValueError, match="p_two"):
        make_scenes(5, 0, p_two=2.0)
    # the bound in the message follows min_seen (it used to say 1..18 whatever min_seen was)
    with pytest.raises(ValueError, match=r"n_unseen must be in 1\.\.12, got 13"):
        zero_shot_split(0, 13, min_seen=3)
    with pytest.raises(ValueError, match=r"n_unseen must be in 1\.\.18, got 19"):
        zero_shot_split(0, 19)


def test_pointing_hits():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4]], dtype=float)
    np.testing.assert_array_equal(pointing_hits(np.array([[2, 4], [5, 1]]), boxes), [True, False])
