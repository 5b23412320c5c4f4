from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from interfuse.data import (
    GroundTruth,
    SyntheticData,
    load_synthetic,
    make_motif_data,
    make_synthetic,
    make_xor_data,
    save_synthetic,
)

N_BIG = 20_000
MOTIF_PROBS = (0.9, 0.6, 0.3, 0.0)


def encode(motif: str) -> np.ndarray:
    return np.array(["ACGT".index(c) for c in motif], dtype=np.uint8)


def contains(codes: np.ndarray, motif: str) -> np.ndarray:
    """Per row: does the sequence contain ``motif`` anywhere?"""
    windows = sliding_window_view(codes, len(motif), axis=1)  # (N, L - k + 1, k)
    return (windows == encode(motif)).all(axis=2).any(axis=1)


def has_motif(data: SyntheticData, modality: str, k: int) -> np.ndarray:
    return contains(data.codes[modality], data.motifs[k])


def shows_class_motif(data: SyntheticData, modality: str, own: bool = True) -> np.ndarray:
    """Does each sequence contain the motif of its own (or the other) class?"""
    y = data.labels if own else 1 - data.labels
    return np.where(y == 1, has_motif(data, modality, 1), has_motif(data, modality, 0))


def token(data: SyntheticData, modality: str) -> np.ndarray:
    """Which motif (0 or 1) a sequence carries; ties (chance occurrences) read as 0."""
    return (has_motif(data, modality, 1) & ~has_motif(data, modality, 0)).astype(np.int64)


def oracle_accuracy(data: SyntheticData) -> float:
    """Read the class motifs; without one, use the XOR pair, else guess 0."""
    truth = data.ground_truth
    votes = np.zeros(len(data))
    for m in truth.modalities:
        if truth.probs[m] > 0:
            votes += has_motif(data, m, 1) * 1.0 - has_motif(data, m, 0)
    fallback = np.zeros(len(data), dtype=np.int64)
    if truth.xor_pair is not None:
        fallback = token(data, truth.xor_pair[0]) ^ token(data, truth.xor_pair[1])
    prediction = np.where(votes > 0, 1, np.where(votes < 0, 0, fallback))
    return float(np.mean(prediction == data.labels))


def binomial_tol(p: float, n: int) -> float:
    return 4 * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def motif_data() -> SyntheticData:
    return make_motif_data(MOTIF_PROBS, n=N_BIG, seed=11)


@pytest.fixture(scope="module")
def mixed_data() -> SyntheticData:
    return make_synthetic(
        [0.5, 0.3, 0.0, 0.0, 0.0], xor_pair=(2, 3), xor_prob=0.6, n=N_BIG, seed=12
    )


# -- generation ----------------------------------------------------------------


def test_same_seed_same_data_different_seed_differs():
    a, b, c = (make_synthetic([0.5, 0.0], xor_pair=None, n=50, seed=s) for s in (3, 3, 4))
    assert a.motifs == b.motifs
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.codes[m], b.codes[m]) for m in a.modalities)
    assert a.ground_truth == b.ground_truth
    assert not np.array_equal(a.codes["m0"], c.codes["m0"])


def test_global_rng_untouched():
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    make_xor_data(n=10)
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_other_modalities_unchanged_when_one_prob_changes():
    a = make_motif_data([0.5, 0.2], n=100, seed=1)
    b = make_motif_data([0.5, 0.9], n=100, seed=1)
    assert np.array_equal(a.codes["m0"], b.codes["m0"])
    assert np.array_equal(a.labels, b.labels)


def test_shapes_dtypes_and_one_hot():
    data = make_synthetic([0.5, 0.1, 0.0], n=30, length=40, motif_length=5, seed=0)
    assert len(data) == 30
    assert data.modalities == ("m0", "m1", "m2")
    assert data.labels.dtype == np.int64 and data.labels.shape == (30,)
    assert set(np.unique(data.labels)) <= {0, 1}
    assert all(len(m) == 5 and set(m) <= set("ACGT") for m in data.motifs)
    assert data.motifs[0] != data.motifs[1]
    one_hot = data.one_hot()
    for m in data.modalities:
        assert data.codes[m].dtype == np.uint8 and data.codes[m].shape == (30, 40)
        assert data.codes[m].max() <= 3
        assert one_hot[m].dtype == np.float32 and one_hot[m].shape == (30, 4, 40)
        assert np.array_equal(one_hot[m].sum(axis=1), np.ones((30, 40)))
        assert np.array_equal(one_hot[m].argmax(axis=1), data.codes[m])
    assert data.one_hot(np.float64)["m0"].dtype == np.float64


def test_random_motifs_always_differ():
    for seed in range(30):
        a, b = make_motif_data([1.0], n=1, length=3, motif_length=1, seed=seed).motifs
        assert a != b


def test_user_motifs_are_inserted():
    data = make_motif_data([1.0, 1.0], n=200, length=30, motifs=("AAAAAA", "CCCGGG"), seed=0)
    assert data.motifs == ("AAAAAA", "CCCGGG")
    for m in data.modalities:
        assert shows_class_motif(data, m).all()


def test_insertion_rate(motif_data):
    for m, p in zip(motif_data.modalities, MOTIF_PROBS, strict=True):
        shown = shows_class_motif(motif_data, m)
        # chance occurrences of a 7-mer in 100 random letters add about 0.006
        assert abs(shown.mean() - p) < binomial_tol(p, N_BIG) + 0.01, m


def test_irrelevant_modality_is_independent_of_label(motif_data):
    y = motif_data.labels
    own = shows_class_motif(motif_data, "m3")
    other = shows_class_motif(motif_data, "m3", own=False)
    assert own.mean() < 0.02 and other.mean() < 0.02
    assert abs(own.mean() - other.mean()) < 4 * np.sqrt(0.02 / N_BIG) * np.sqrt(2)
    letters = motif_data.one_hot()["m3"].mean(axis=2)  # (N, 4) letter frequencies
    assert np.abs(letters[y == 0].mean(axis=0) - letters[y == 1].mean(axis=0)).max() < 0.005


def test_xor_label_is_a_xor_b():
    data = make_xor_data(n_modalities=3, pair=(0, 1), n=2000, seed=5)
    a, b = token(data, "m0"), token(data, "m1")
    assert np.mean(a ^ b == data.labels) > 0.99  # misses only from chance motif occurrences
    for t in (a, b):  # each member alone says nothing about the label
        assert abs(np.mean(t == data.labels) - 0.5) < binomial_tol(0.5, 2000)


def test_xor_prob_controls_agreement(mixed_data):
    a, b = token(mixed_data, "m2"), token(mixed_data, "m3")
    assert abs(np.mean(a ^ b == mixed_data.labels) - 0.8) < binomial_tol(0.8, N_BIG) + 0.01


@pytest.mark.parametrize("fixture", ["motif_data", "mixed_data"])
def test_oracle_reaches_bayes_accuracy(fixture, request):
    data = request.getfixturevalue(fixture)
    bayes = data.ground_truth.bayes_accuracy
    assert abs(oracle_accuracy(data) - bayes) < binomial_tol(bayes, N_BIG) + 0.01


# -- ground truth --------------------------------------------------------------


def test_motif_shares():
    truth = make_motif_data(MOTIF_PROBS, n=10).ground_truth
    shares = [truth.modality_shares[m] for m in truth.modalities]
    assert shares == pytest.approx([0.565, 0.302, 0.133, 0.0], abs=5e-4)
    assert truth.term_shares == truth.modality_shares
    assert truth.relevant_terms == ("m0", "m1", "m2")
    assert truth.bayes_accuracy == pytest.approx(1 - 0.5 * 0.1 * 0.4 * 0.7)
    assert truth.information["{}"] == 0.0
    assert truth.information["{m0,m1,m2,m3}"] == pytest.approx(1 - 0.1 * 0.4 * 0.7)


def test_xor_term_shares():
    truth = make_xor_data(n_modalities=3, pair=(1, 0), n=10).ground_truth
    assert truth.xor_pair == ("m0", "m1")
    assert truth.term_shares == {"m0": 0.0, "m1": 0.0, "m2": 0.0, "m0*m1": 1.0}
    assert truth.modality_shares == pytest.approx({"m0": 0.5, "m1": 0.5, "m2": 0.0})
    assert truth.relevant_terms == ("m0*m1",)
    assert truth.bayes_accuracy == 1.0
    assert truth.information["{m0}"] == truth.information["{m1}"] == 0.0
    assert truth.information["{m0,m1}"] == pytest.approx(1.0)


def test_mixed_shares(mixed_data):
    truth = mixed_data.ground_truth
    for shares in (truth.modality_shares, truth.term_shares):
        assert sum(shares.values()) == pytest.approx(1.0)
    assert all(truth.modality_shares[m] > 0 for m in ("m0", "m1", "m2", "m3"))
    assert truth.modality_shares["m4"] == 0.0
    assert truth.term_shares["m2"] == truth.term_shares["m3"] == truth.term_shares["m4"] == 0.0
    assert truth.term_shares["m0"] > truth.term_shares["m1"] > 0
    assert truth.term_shares["m2*m3"] > 0
    assert truth.relevant_terms == ("m0", "m1", "m2*m3")
    assert truth.bayes_accuracy == pytest.approx(0.65 + 0.35 * 0.8)


@pytest.mark.parametrize(
    "kwargs", [{"probs": [0.0, 0.0]}, {"probs": [0, 0, 0], "xor_pair": (0, 2), "xor_prob": 0.0}]
)
def test_no_signal_gives_zero_shares(kwargs):
    truth = make_synthetic(n=10, **kwargs).ground_truth
    assert set(truth.modality_shares.values()) == {0.0}
    assert set(truth.term_shares.values()) == {0.0}
    assert truth.relevant_terms == ()
    assert truth.bayes_accuracy == 0.5


def test_ground_truth_json_round_trip(mixed_data):
    truth = mixed_data.ground_truth
    assert GroundTruth.from_dict(json.loads(json.dumps(truth.to_dict()))) == truth


def test_information_omitted_for_many_modalities():
    assert (
        make_motif_data([0.1] * 11, n=5, length=10, motif_length=3).ground_truth.information is None
    )


# -- files ---------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    data = make_synthetic(
        [0.5, 0.0, 0.0], xor_pair=(1, 2), xor_prob=0.7, n=100, length=20, motif_length=4, seed=9
    )
    truth_file = save_synthetic(data, tmp_path / "toy.csv")
    assert truth_file == tmp_path / "toy.truth.json"
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv", "toy.truth.json"]
    lines = (tmp_path / "toy.csv").read_text().splitlines()
    assert lines[0] == "label,m0,m1,m2" and len(lines) == 101

    loaded = load_synthetic(str(tmp_path / "toy.csv"))
    assert loaded.modalities == data.modalities
    assert loaded.labels.dtype == np.int64 and np.array_equal(loaded.labels, data.labels)
    for m in data.modalities:
        assert loaded.codes[m].dtype == np.uint8 and np.array_equal(loaded.codes[m], data.codes[m])
    assert loaded.ground_truth == data.ground_truth
    assert loaded.motifs == data.motifs
    assert loaded.params == data.params


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "d.csv"
    save_synthetic(make_motif_data([0.5, 0.5], n=5, length=10, motif_length=3), path)
    return path


def test_a_truth_file_nested_beyond_the_parser_is_named(saved):
    """Deeply nested brackets raised RecursionError: exit 70, "a bug", not the file named."""
    truth = saved.with_name("d.truth.json")
    truth.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="d.truth.json: malformed ground-truth file"):
        load_synthetic(saved)


def rewrite_line(path, index, edit):
    lines = path.read_text().splitlines()
    lines[index] = edit(lines[index])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("index", "edit", "match"),
    [
        (0, lambda s: "label,x,y", "bad header"),
        (2, lambda s: s + "A", "line 3: 24 characters, expected 23"),
        (3, lambda s: s[:11] + "," + s[11] + s[13:], "line 4: sequences must all have length 10"),
        (4, lambda s: s[:-1] + "N", "line 5: character outside ACGT"),
        (5, lambda s: "2" + s[1:], "line 6: label must be 0 or 1"),
    ],
)
def test_load_rejects_malformed_csv(saved, index, edit, match):
    rewrite_line(saved, index, edit)
    with pytest.raises(ValueError, match=match) as err:
        load_synthetic(saved)
    assert str(saved) in str(err.value)


def test_load_rejects_a_truncated_csv(saved):
    """A CSV cut after a few rows (an interrupted copy) loaded as a smaller data set whose
    params still recorded the full n."""
    lines = saved.read_text().splitlines()
    saved.write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(ValueError, match=r"3 data rows, but d.truth.json records n = \d+"):
        load_synthetic(saved)


def test_load_missing_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.csv"):
        load_synthetic(tmp_path / "nope.csv")
    (tmp_path / "d.truth.json").unlink()
    with pytest.raises(FileNotFoundError, match="ground-truth file not found: .*d.truth.json"):
        load_synthetic(saved)


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probs": []}, "probs must not be empty"),
        ({"probs": [0.5, 1.5]}, r"probs\[1\] \(modality m1\) must be in \[0, 1\]"),
        ({"probs": [-0.1]}, r"modality m0"),
        ({"probs": [float("nan")]}, r"modality m0"),
        ({"probs": [0, 0], "xor_pair": (0, 2)}, "out of range"),
        ({"probs": [0, 0], "xor_pair": (-1, 0)}, "out of range"),
        ({"probs": [0, 0], "xor_pair": (1, 1)}, "two different modalities"),
        ({"probs": [0, 0], "xor_pair": (0, 1, 1)}, "two modality indices"),
        ({"probs": [0, 0.5], "xor_pair": (0, 1)}, r"m1 must have probs\[1\] = 0"),
        ({"probs": [0, 0], "xor_pair": (0, 1), "xor_prob": 1.2}, r"xor_prob must be in \[0, 1\]"),
        ({"probs": [0.5], "n": 0}, "n must be at least 1"),
        ({"probs": [0.5], "motif_length": 0}, "motif_length must be in"),
        ({"probs": [0.5], "length": 5}, r"motif_length must be in \[1, length=5\], got 7"),
        ({"probs": [0.5], "motifs": ("ACGU", "ACGT")}, "over ACGT"),
        ({"probs": [0.5], "motifs": ("", "")}, "non-empty"),
        ({"probs": [0.5], "motifs": ("ACG", "ACGT")}, "same length"),
        ({"probs": [0.5], "motifs": ("ACGT", "ACGT")}, "must differ"),
        ({"probs": [0.5], "motifs": ("ACGT",)}, "pair of strings"),
        (
            {"probs": [0.5], "motifs": ("ACGT", "TGCA"), "length": 3},
            "exceeds the sequence length 3",
        ),
        ({"probs": [0.5], "motifs": ("ACGT", "TGCA"), "motif_length": 5}, "contradicts"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


def test_motifs_as_long_as_the_sequence_fill_it():
    """The docstring allows motifs of length <= L: at L they fill every row from position 0."""
    data = make_synthetic([1.0], n=20, length=4, motifs=("ACGT", "TTGA"), seed=0)
    expected = np.stack([encode("ACGT"), encode("TTGA")])[data.labels]
    assert np.array_equal(data.codes["m0"], expected)


def test_ground_truth_is_frozen_and_data_sets_hash_by_identity():
    import dataclasses

    data = make_xor_data(n=10, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.ground_truth.xor_pair = None
    twin = make_xor_data(n=10, seed=0)
    assert len({data, twin, data}) == 2  # identity: no element-wise comparison of arrays


def test_random_letters_and_motifs_use_all_four_letters():
    data = make_synthetic([0.0], n=50, length=40, seed=0)  # no motif inserted
    counts = np.bincount(data.codes["m0"].ravel(), minlength=4)
    assert counts.min() > 0.2 * counts.sum()  # uniform over ACGT: each about a quarter
    letters = "".join(m for s in range(20) for m in make_synthetic([0.5], n=2, seed=s).motifs)
    assert set(letters) == set("ACGT")


def test_random_motifs_may_be_as_long_as_the_sequence():
    data = make_synthetic([1.0], n=10, length=5, motif_length=5, seed=0)
    assert [len(m) for m in data.motifs] == [5, 5]
    assert np.array_equal(data.codes["m0"], np.stack([encode(m) for m in data.motifs])[data.labels])


def test_xor_pair_index_out_of_range_first_position():
    with pytest.raises(ValueError, match="out of range"):
        make_synthetic([0, 0], xor_pair=(2, 0))


def test_params_record_the_seed_and_the_truth_file_its_format_version(tmp_path):
    data = make_synthetic([0.5], n=5, seed=9)
    assert data.params["seed"] == 9 and data.params["length"] == 100  # docs/data.md: L = 100
    assert make_synthetic([0.5], n=5, seed=None).params["seed"] is None
    meta = json.loads(save_synthetic(data, tmp_path / "d.csv").read_text())
    assert (meta["format"], meta["version"]) == ("interfuse.synthetic", 1)


def test_both_xor_tokens_are_fair_coins(mixed_data):
    # b = a xor y with probability q, else a fresh fair coin: either way P(b = 1) = 1/2
    for m in ("m2", "m3"):
        assert abs(token(mixed_data, m).mean() - 0.5) < binomial_tol(0.5, N_BIG) + 0.01, m


def test_information_of_the_xor_pair_is_one_minus_the_entropy_of_agreement():
    def entropy(p):
        return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))

    exact = make_xor_data(n_modalities=2, n=10).ground_truth.information
    assert exact["{m0,m1}"] == pytest.approx(1.0) and exact["{m0}"] == 0.0
    noisy = make_synthetic([0, 0], xor_pair=(0, 1), xor_prob=0.6, n=10).ground_truth.information
    assert noisy["{m0,m1}"] == pytest.approx(1.0 - entropy(0.8))
    # a coalition that also holds a motif modality: the pair adds its bits where no motif shows
    mixed = make_synthetic([0.5, 0, 0], xor_pair=(1, 2), xor_prob=0.6, n=10).ground_truth
    assert mixed.information["{m0,m1,m2}"] == pytest.approx(0.5 + 0.5 * (1.0 - entropy(0.8)))


def test_information_listed_up_to_ten_modalities():
    truth = make_motif_data([0.1] * 10, n=5, length=10, motif_length=3).ground_truth
    assert len(truth.information) == 2**10


def test_params_record_the_motif_length():
    assert make_synthetic([0.5], n=5).params["motif_length"] == 7  # the default
    assert make_synthetic([0.5], n=5, motifs=("AC", "GT")).params["motif_length"] == 2
