"""Text encoders (bag of words, cached MiniLM) and the typed results' JSON round trip."""

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from interfuse.coordinated.results import (
    SCHEMA_VERSION,
    ColearnResult,
    RetrievalResult,
    ZeroShotResult,
    load_result,
)
from interfuse.coordinated.text import (
    BagOfWords,
    SentenceEncoder,
    Vocabulary,
    minilm_available,
    tokenize,
)


def test_tokenize_and_vocabulary():
    assert tokenize("A red, Circle!") == ["a", "red", "circle"]
    vocab = Vocabulary.from_texts(["a red circle", "a blue square"])
    ids = vocab.encode(["a red circle", "a green thing"], length=4)
    assert ids.shape == (2, 4)
    assert ids[0, 3] == Vocabulary.PAD and ids[1, 1] == Vocabulary.UNK


def test_bag_of_words_bigrams_tell_word_order_apart():
    vocab = Vocabulary.from_texts(["red circle blue square"])
    torch.manual_seed(0)
    bow = BagOfWords(len(vocab), dim=8, output_dim=4)
    a, b = vocab.encode(["red circle blue square", "blue circle red square"])
    out = bow(torch.stack([a, b]))
    assert out.shape == (2, 4) and not torch.allclose(out[0], out[1])
    plain = BagOfWords(len(vocab), dim=8, output_dim=4, bigram_buckets=0)
    same = plain(torch.stack([a, b]))
    assert torch.allclose(same[0], same[1])
    padded = vocab.encode(["red circle"], length=6)
    assert torch.allclose(bow(padded), bow(vocab.encode(["red circle"])))


@pytest.mark.skipif(not minilm_available(), reason="the [text] extra is not installed")
def test_minilm_embeddings_are_cached(tmp_path, monkeypatch):
    encoder = SentenceEncoder(cache_dir=tmp_path)
    texts = ["a red circle", "a blue square", "a red circle"]
    emb = encoder.encode(texts)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
    assert float(emb[0] @ emb[1]) < 0.99
    assert len(list(tmp_path.glob("minilm-*.npy"))) == 1
    fresh = SentenceEncoder(cache_dir=tmp_path)
    monkeypatch.setattr(fresh, "_load", lambda: pytest.fail("cache not used"))
    np.testing.assert_array_equal(fresh.encode(texts), emb)
    assert fresh.key(texts) != fresh.key(texts[:2])


@pytest.mark.skipif(not minilm_available(), reason="the [text] extra is not installed")
@pytest.mark.parametrize("kind", ["huge header", "npz", "float64", "garbage"])
def test_a_corrupt_or_crafted_embedding_cache_is_computed_again(tmp_path, monkeypatch, kind):
    """A cache file was read with np.load unchecked: a tiny file whose header claims a huge
    array made it allocate that much, and a corrupt one failed every later run until deleted."""
    encoder = SentenceEncoder(cache_dir=tmp_path)
    texts = ["a red circle", "a blue square"]
    path = tmp_path / f"minilm-{encoder.key(texts)}.npy"
    if kind == "huge header":  # a valid .npy header declaring (2, 384 · 10^9) floats
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": "<f4", "fortran_order": False, "shape": (2, 384 * 10**9)}
        )
        path.write_bytes(buffer.getvalue() + b"\0" * 64)
    elif kind == "npz":
        np.savez(tmp_path / "x.npz", a=np.zeros((2, 384), np.float32))
        (tmp_path / "x.npz").rename(path)
    elif kind == "float64":
        np.save(path, np.zeros((2, 384)))
    else:
        path.write_bytes(b"not an array")
    fake = np.full((2, 384), 1 / np.sqrt(384), dtype=np.float32)

    class Model:
        def encode(self, unique, **options):
            return fake[: len(unique)]

    monkeypatch.setattr(encoder, "_load", Model)
    np.testing.assert_array_equal(encoder.encode(texts), fake)
    np.testing.assert_array_equal(np.load(path), fake)  # the bad file was replaced


def _zeroshot():
    return ZeroShotResult(
        seed=1, settings={"epochs": 2, "text": "bow"}, text_encoder="bow",
        seen_classes=("red circle",), unseen_classes=("blue square", "red square"),
        n_train=10, n_test_unseen=5, n_test_seen=5, zsl_top1=0.5, zsl_chance=0.5,
        gzsl_seen=0.4, gzsl_unseen=0.2, gzsl_harmonic=0.2667, gzsl_chance=1 / 3,
        classifier_seen=0.9, classifier_gzsl_harmonic=0.0, per_class_unseen={"blue square": 1.0},
    )  # fmt: skip


def test_results_round_trip_and_schema(tmp_path):
    result = _zeroshot()
    assert ZeroShotResult.from_json(result.to_json()) == result
    path = result.save(tmp_path / "results.json")
    assert load_result(path) == result
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["task"] == "zeroshot"
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        ZeroShotResult.from_dict(data)
    data["schema_version"] = SCHEMA_VERSION
    with pytest.raises(ValueError, match="expected a 'retrieval' result"):
        RetrievalResult.from_dict(data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.seed = 2  # type: ignore[misc]
    colearn = ColearnResult(
        seed=0, settings={}, weak_view="morph", strong_view="pixel", n_train=10, n_test=5,
        fractions=(0.05, 0.1), n_labelled=(1, 2), weak_alone=(0.5, 0.6), weak_helped=(0.6, 0.7),
        strong_alone=(0.9, 0.9), weak_all_labels=0.7, chance=0.1,
    )  # fmt: skip
    assert ColearnResult.from_json(colearn.to_json()) == colearn
    assert colearn.metrics()["weak_helped@5%"] == 0.6
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_result(tmp_path / "bad.json")
    # brackets nested beyond the parser's stack: RecursionError, an internal error (exit 70)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.json: not valid JSON"):
        load_result(tmp_path / "deep.json")


def test_colearn_metrics_keep_every_label_fraction():
    # 0.1 and 0.104 both used to be tagged "10%", so the 0.1 numbers vanished from summaries
    colearn = ColearnResult(
        seed=0, settings={}, weak_view="morph", strong_view="pixel", n_train=10, n_test=5,
        fractions=(0.05, 0.1, 0.104), n_labelled=(1, 2, 3), weak_alone=(0.5, 0.6, 0.61),
        weak_helped=(0.6, 0.7, 0.71), strong_alone=(0.8, 0.9, 0.91), weak_all_labels=0.7,
        chance=0.1,
    )  # fmt: skip
    metrics = colearn.metrics()
    assert metrics["weak_helped@5%"] == 0.6
    assert metrics["weak_helped@10%"] == 0.7 and metrics["weak_helped@10.4%"] == 0.71
    assert len(metrics) == 2 + 3 * 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 99}, "schema version 99"),
        ({"chance": None}, "chance"),
        ({"fractions": 0.05}, "fractions"),
        ({"weak_alone": ["0.5", "0.6"]}, "weak_alone"),
        ({"chance": "0.1"}, "chance"),
        ({"weak_helped": [0.6]}, "one entry per label fraction"),
    ],
)
def test_a_damaged_result_is_one_line_naming_the_file(tmp_path, change, message):
    # mistyped fields used to load, then fail in `summarize` as an internal TypeError/IndexError
    colearn = ColearnResult(
        seed=0, settings={}, weak_view="morph", strong_view="pixel", n_train=10, n_test=5,
        fractions=(0.05, 0.1), n_labelled=(1, 2), weak_alone=(0.5, 0.6), weak_helped=(0.6, 0.7),
        strong_alone=(0.9, 0.9), weak_all_labels=0.7, chance=0.1,
    )  # fmt: skip
    data = {**colearn.to_dict(), **change}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        load_result(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_summary_uses_the_sample_std_and_says_n_a_for_one_run():
    """``coordinated summarize`` showed the population std ("± 0.000" for one run) where
    ``train --seeds`` shows the sample std (n − 1) and n/a for one run."""
    from interfuse.coordinated.render import summary_table

    one = summary_table([_zeroshot()])
    assert "| zsl_top1 | 0.500 ± n/a |" in one
    two = summary_table([_zeroshot(), dataclasses.replace(_zeroshot(), seed=2, zsl_top1=0.7)])
    assert "| zsl_top1 | 0.600 ± 0.141 |" in two  # sqrt(0.02): n − 1, not 0.100 (n)
