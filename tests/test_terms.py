"""Interaction specifications resolve to canonical terms; bad ones fail with clear messages."""

import pytest

from interfuse.terms import resolve_interactions, term_name, validate_modality_names

MODS = ("video", "audio", "text")


def names(terms):
    return [term_name(t) for t in terms]


def test_named_specifications():
    assert resolve_interactions("none", MODS) == []
    assert resolve_interactions(None, MODS) == []
    assert names(resolve_interactions("pairs", MODS)) == ["video*audio", "video*text", "audio*text"]
    assert names(resolve_interactions("all", MODS))[-1] == "video*audio*text"
    assert len(resolve_interactions("all", MODS)) == 4
    assert resolve_interactions(1, MODS) == []
    assert resolve_interactions(2, MODS) == resolve_interactions("pairs", MODS)
    assert resolve_interactions(9, MODS) == resolve_interactions("all", MODS)


def test_explicit_terms_are_canonicalised_and_sorted():
    terms = resolve_interactions(["text*video*audio", ("text", "video")], MODS)
    assert terms == [("video", "text"), ("video", "audio", "text")]
    assert resolve_interactions("text*audio,video*text", MODS) == [
        ("video", "text"),
        ("audio", "text"),
    ]
    # a trailing comma or spaces, as the command line accepts them
    assert resolve_interactions("text*audio, video*text,", MODS) == [
        ("video", "text"),
        ("audio", "text"),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["video*smell"], "unknown modality 'smell'"),
        ([("video", "text"), ("text", "video")], "listed twice"),
        (["video"], "single modality"),
        (["video*video"], "repeats a modality"),
        ([""], "empty term"),
        ("triples", "unknown interaction specification"),
        (0, "must be >= 1"),
    ],
)
def test_bad_specifications(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_interactions(spec, MODS)


@pytest.mark.parametrize(
    ("modalities", "message"),
    [
        ([], "at least one modality"),
        (["a*b"], "may not contain"),
        (["a.b"], "may not contain"),
        (["text", "text"], "declared twice"),
        (["keys"], "reserved"),
        ([""], "non-empty"),
    ],
)
def test_bad_modality_names(modalities, message):
    with pytest.raises(ValueError, match=message):
        validate_modality_names(modalities)
