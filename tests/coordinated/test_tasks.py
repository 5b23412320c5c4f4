"""Task-level validation of the coordinated runs (checked before any data or training)."""

import dataclasses

import pytest
import torch

from interfuse.coordinated.scenes import make_scenes
from interfuse.coordinated.tasks import (
    TRAIN_STREAM,
    CaptionConfig,
    ColearnConfig,
    GroundingConfig,
    RetrievalConfig,
    ZeroShotConfig,
    _train_space,
    run_caption,
    run_colearn,
    run_grounding,
    run_retrieval,
    run_zeroshot,
)
from interfuse.data.mfeat import mfeat_files


@pytest.mark.parametrize(
    ("run", "config"),
    [
        (run_zeroshot, ZeroShotConfig(text="bow", batch_size=1)),
        (run_retrieval, RetrievalConfig(batch_size=1)),
        (run_caption, CaptionConfig(n_train=1)),
        (run_grounding, GroundingConfig(batch_size=1)),
    ],
)
def test_batches_of_one_are_refused_rather_than_silently_skipped(run, config):
    # _fit skips one-sample batches, so these settings used to report an untrained model
    with pytest.raises(ValueError, match=r"must be >= 2"):
        run(config)


def test_colearn_refuses_repeated_label_fractions():
    with pytest.raises(ValueError, match="label fractions must differ"):
        run_colearn(ColearnConfig(fractions=(0.1, 0.1), data_path="no/such/folder"))


def test_colearn_refuses_a_test_fraction_that_leaves_a_class_untrained():
    try:
        mfeat_files()
    except FileNotFoundError:
        pytest.skip("mfeat data not installed")
    # 0.998 of 200 digits per class rounds to all 200: numpy's "need at least one array to
    # concatenate" used to be the only message
    with pytest.raises(ValueError, match="test fraction 0.998 leaves no training sample"):
        run_colearn(ColearnConfig(test_fraction=0.998, epochs=1))


@pytest.mark.parametrize(
    ("run", "config", "message"),
    [
        (run_zeroshot, ZeroShotConfig(text="bow", margin=float("nan")), "margin must be > 0"),
        (run_retrieval, RetrievalConfig(lr=float("nan")), "lr must be > 0"),
        (run_grounding, GroundingConfig(equivariance=float("nan")), "equivariance must be"),
        (run_grounding, GroundingConfig(equivariance=float("inf")), "equivariance must be"),
    ],
)
def test_nan_settings_are_refused(run, config, message):
    # NaN passed every `<= 0` / `< 0` check: a NaN margin or learning rate trained a model of
    # NaN weights, and a NaN equivariance weight silently switched the term off
    tiny = {"n_train": 4, "n_test": 2, "epochs": 1}
    with pytest.raises(ValueError, match=message):
        run(dataclasses.replace(config, **tiny))


def test_retrieval_text_inputs_keep_every_word_of_a_caption_longer_than_the_training_ones():
    """Test captions are padded to their own length, not cut to the longest training caption."""
    train = make_scenes(4, 0, stream=TRAIN_STREAM)
    space = _train_space(train, RetrievalConfig(n_train=4, epochs=1, batch_size=2, dim=8))
    longest = max(len(c) for scene in train.captions for c in scene)
    words = [w for scene in train.captions for c in scene for w in c]
    long_caption = " ".join((words * (2 * longest))[: 2 * longest])
    ids = space.texts_to_input([long_caption])
    assert ids.shape == (1, 2 * longest)
    assert bool((ids > 1).all())  # every word kept and known (1 = unknown, 0 = padding)
    # the width is padding only: the embedding of a caption does not depend on it
    short = space.texts_to_input([" ".join(train.captions[0][0])])
    padded = torch.cat([short, short.new_zeros(1, 5)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(space.model.embed_texts(short), space.model.embed_texts(padded))
