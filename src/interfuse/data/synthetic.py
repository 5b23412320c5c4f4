"""Synthetic multimodal DNA benchmark with known ground truth.

Every sample has one uniformly random DNA sequence (alphabet ``ACGT``, codes 0..3)
per modality ``m0, m1, …`` and a label ``y ~ Bernoulli(1/2)``. Two class motifs
(short words) carry the signal:

* a *motif modality* ``m`` contains, with probability ``p_m``, the motif of its
  sample's class at a uniformly random position (``p_m = 0``: irrelevant source);
* an optional *XOR pair* ``(i, j)``: modality ``i`` always contains motif number
  ``a ~ Bernoulli(1/2)``, modality ``j`` motif number ``b``, where ``b = a XOR y`` with
  probability ``q = xor_prob`` and ``b`` is uniform otherwise. Each member alone is
  independent of ``y``; together they predict it — a pure pairwise interaction.

Because the generating process is known, so are the information carried by each
set of modalities, their Shapley shares and the Bayes-optimal accuracy
(:class:`GroundTruth`), which makes the data a test bed for interpretability
methods.

The benchmark follows the DNA experiment in P. Mehta's slides "Multimodal Deep
Learning" and in S. Varshneya, A. Ledent, P. Liznerski, A. Balinskyy, P. Mehta,
W. Mustafa and M. Kloft, "Interpretable Tensor Fusion", IJCAI 2024.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from interfuse.games import coalition_values, shapley_values
from interfuse.io import atomic_write_bytes

__all__ = [
    "ALPHABET",
    "GroundTruth",
    "SyntheticData",
    "load_synthetic",
    "make_motif_data",
    "make_synthetic",
    "make_xor_data",
    "save_synthetic",
    "truth_path",
]

ALPHABET = "ACGT"
DEFAULT_MOTIF_LENGTH = 7
MAX_INFORMATION_MODALITIES = 10
"""``GroundTruth.information`` lists all ``2^M`` coalitions only up to this many modalities."""

_LETTERS = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)
_DECODE = np.full(256, 255, dtype=np.uint8)  # ASCII byte -> code, 255 = invalid
_DECODE[_LETTERS] = np.arange(4, dtype=np.uint8)
_SHARE_TOL = 1e-12


@dataclass(frozen=True)
class GroundTruth:
    """What the generating process implies about the modalities.

    ``xor_pair`` lists the pair's names in index order (the joint law of ``a, b, y``
    is symmetric in ``a`` and ``b``); its term is ``"mi*mj"``. ``information`` maps
    coalition names such as ``"{m0,m2}"`` (``"{}"`` for the empty one) to
    ``I(Y; X_S)`` in bits; it is ``None`` above ``MAX_INFORMATION_MODALITIES``
    modalities. ``modality_shares`` and ``term_shares`` are normalised Shapley
    values (see :func:`make_synthetic`); ``relevant_terms`` are the terms with a
    positive share (in the order of ``term_shares``).
    """

    modalities: tuple[str, ...]
    probs: dict[str, float]
    xor_pair: tuple[str, str] | None
    xor_prob: float
    modality_shares: dict[str, float]
    term_shares: dict[str, float]
    relevant_terms: tuple[str, ...]
    bayes_accuracy: float
    information: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (inverse of :meth:`from_dict`)."""
        return {
            "modalities": list(self.modalities),
            "probs": dict(self.probs),
            "xor_pair": None if self.xor_pair is None else list(self.xor_pair),
            "xor_prob": self.xor_prob,
            "modality_shares": dict(self.modality_shares),
            "term_shares": dict(self.term_shares),
            "relevant_terms": list(self.relevant_terms),
            "bayes_accuracy": self.bayes_accuracy,
            "information": None if self.information is None else dict(self.information),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GroundTruth:
        """Rebuild from :meth:`to_dict` output."""
        pair = d["xor_pair"]
        information = d.get("information")
        return cls(
            modalities=tuple(d["modalities"]),
            probs=_floats(d["probs"]),
            xor_pair=None if pair is None else (pair[0], pair[1]),
            xor_prob=float(d["xor_prob"]),
            modality_shares=_floats(d["modality_shares"]),
            term_shares=_floats(d["term_shares"]),
            relevant_terms=tuple(d["relevant_terms"]),
            bayes_accuracy=float(d["bayes_accuracy"]),
            information=None if information is None else _floats(information),
        )


def _floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in mapping.items()}


@dataclass(eq=False)
class SyntheticData:
    """A generated (or loaded) data set.

    ``codes[m]`` is a ``uint8`` array ``(N, L)`` with letters coded ``A,C,G,T = 0..3``;
    ``labels`` is ``int64`` ``(N,)``; ``motifs`` are the class-0 and class-1 motifs;
    ``params`` records the generator arguments.
    """

    codes: dict[str, NDArray[np.uint8]]
    labels: NDArray[np.int64]
    ground_truth: GroundTruth
    motifs: tuple[str, str]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.codes)

    def __len__(self) -> int:
        return len(self.labels)

    def one_hot(self, dtype: DTypeLike = np.float32) -> dict[str, NDArray]:
        """One-hot encodings, shape ``(N, 4, L)`` (channels ``A, C, G, T``)."""
        eye = np.eye(4, dtype=dtype)
        return {m: np.ascontiguousarray(eye[c].transpose(0, 2, 1)) for m, c in self.codes.items()}


# -- generation ----------------------------------------------------------------


def make_synthetic(
    probs: Sequence[float],
    *,
    xor_pair: tuple[int, int] | None = None,
    xor_prob: float = 1.0,
    n: int = 2000,
    length: int = 100,
    motif_length: int | None = None,
    motifs: tuple[str, str] | None = None,
    seed: int | None = 0,
) -> SyntheticData:
    """Generate the DNA benchmark (see the module docstring).

    Parameters
    ----------
    probs
        Motif insertion probability ``p_m`` of each modality ``m0, m1, …``.
    xor_pair, xor_prob
        Indices ``(i, j)`` of the XOR pair (both need ``p = 0``) and ``q``.
    n, length
        Number of samples and sequence length ``L``.
    motif_length, motifs
        Random motifs of ``motif_length`` letters (default 7), or two distinct
        user-given ``ACGT`` strings of equal length ``<= L``.
    seed
        Seed of the ``numpy.random.default_rng`` used for everything; each
        modality draws from its own child stream, so changing one modality's
        probability leaves the other modalities' random letters unchanged.

    Notes
    -----
    Ignoring chance occurrences of a motif in the random letters, a revealed motif
    gives the label exactly and the XOR pair gives ``P(y = a XOR b) = (1 + q)/2``.
    With ``P_S = 1 − Π_{m ∈ S} (1 − p_m)`` the information game is

        ``v(S) = I(Y; X_S) = P_S + [i, j ∈ S] (1 − P_S) (1 − H₂((1 + q)/2))`` bits,

    and the Bayes-optimal accuracy is ``P_N + (1 − P_N) max(1/2, [pair] (1 + q)/2)``.
    ``modality_shares`` are the Shapley values of ``v`` divided by ``v(N)``;
    ``term_shares`` are those of the game in which the XOR pair is a single player
    (term ``"mi*mj"``, its members get 0). If ``v(N) = 0`` all shares are 0.
    """
    probs = _check_probs(probs)
    names = tuple(f"m{i}" for i in range(len(probs)))
    pair = _check_xor_pair(xor_pair, probs)
    if not 0.0 <= xor_prob <= 1.0:
        raise ValueError(f"xor_prob must be in [0, 1], got {xor_prob}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")

    # independent child streams of default_rng(seed): motifs, labels, one per modality
    children = np.random.SeedSequence(seed).spawn(2 + len(names))
    motif_rng, label_rng, *rngs = (np.random.default_rng(c) for c in children)
    if motifs is None:
        k = DEFAULT_MOTIF_LENGTH if motif_length is None else motif_length
        if not 1 <= k <= length:
            raise ValueError(f"motif_length must be in [1, length={length}], got {k}")
        motif_codes = _random_motifs(motif_rng, k)
    else:
        motif_codes = _parse_motifs(motifs, length, motif_length)

    labels = label_rng.integers(0, 2, n, dtype=np.int64)
    codes = {
        m: rng.integers(0, 4, (n, length), dtype=np.uint8)
        for m, rng in zip(names, rngs, strict=True)
    }
    for m, p, rng in zip(names, probs, rngs, strict=True):
        if p > 0:
            _insert_motifs(codes[m], motif_codes, labels, rng.random(n) < p, rng)
    if pair is not None:
        i, j = pair
        everyone = np.ones(n, dtype=bool)
        a = rngs[i].integers(0, 2, n, dtype=np.int64)
        keep = rngs[j].random(n) < xor_prob
        b = np.where(keep, a ^ labels, rngs[j].integers(0, 2, n, dtype=np.int64))
        _insert_motifs(codes[names[i]], motif_codes, a, everyone, rngs[i])
        _insert_motifs(codes[names[j]], motif_codes, b, everyone, rngs[j])

    # (a, b, y) is symmetric in a and b, so the truth lists the pair in index order
    pair_names = None if pair is None else (names[min(pair)], names[max(pair)])
    params = {
        "probs": list(probs),
        "xor_pair": None if pair is None else list(pair),
        "xor_prob": float(xor_prob),
        "n": int(n),
        "length": int(length),
        "motif_length": int(motif_codes.shape[1]),
        "seed": None if seed is None else int(seed),
    }
    return SyntheticData(
        codes=codes,
        labels=labels,
        ground_truth=_ground_truth(
            dict(zip(names, probs, strict=True)), pair_names, float(xor_prob)
        ),
        motifs=(_decode_motif(motif_codes[0]), _decode_motif(motif_codes[1])),
        params=params,
    )


def make_motif_data(probs: Sequence[float], **kw: Any) -> SyntheticData:
    """Motif-only benchmark: modality ``mk`` shows the class motif with probability ``probs[k]``."""
    return make_synthetic(probs, xor_pair=None, **kw)


def make_xor_data(
    n_modalities: int = 3, pair: tuple[int, int] = (0, 1), **kw: Any
) -> SyntheticData:
    """Pure-interaction benchmark: only the XOR ``pair`` carries the label, the rest is noise."""
    return make_synthetic([0.0] * n_modalities, xor_pair=pair, **kw)


def _check_probs(probs: Sequence[float]) -> tuple[float, ...]:
    probs = tuple(float(p) for p in probs)
    if not probs:
        raise ValueError("probs must not be empty (one entry per modality)")
    for i, p in enumerate(probs):
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"probs[{i}] (modality m{i}) must be in [0, 1], got {p}")
    return probs


def _check_xor_pair(
    pair: tuple[int, int] | None, probs: tuple[float, ...]
) -> tuple[int, int] | None:
    if pair is None:
        return None
    if len(pair) != 2:
        raise ValueError(f"xor_pair must be two modality indices, got {pair}")
    i, j = (int(k) for k in pair)
    if not (0 <= i < len(probs) and 0 <= j < len(probs)):
        raise ValueError(f"xor_pair {pair} out of range for {len(probs)} modalities")
    if i == j:
        raise ValueError(f"xor_pair needs two different modalities, got {pair}")
    for k in (i, j):
        if probs[k] != 0:
            raise ValueError(f"XOR pair member m{k} must have probs[{k}] = 0, got {probs[k]}")
    return i, j


def _random_motifs(rng: np.random.Generator, k: int) -> NDArray[np.uint8]:
    """Two distinct random motifs of length ``k`` as a ``(2, k)`` code array."""
    while True:
        motifs = rng.integers(0, 4, (2, k), dtype=np.uint8)
        if not np.array_equal(motifs[0], motifs[1]):
            return motifs


def _parse_motifs(
    motifs: Sequence[str], length: int, motif_length: int | None
) -> NDArray[np.uint8]:
    if isinstance(motifs, str) or len(motifs) != 2:
        raise ValueError(f"motifs must be a pair of strings, got {motifs!r}")
    m0, m1 = motifs
    for m in motifs:
        if not isinstance(m, str) or not m or set(m) - set(ALPHABET):
            raise ValueError(f"motif {m!r} must be a non-empty string over {ALPHABET}")
    if len(m0) != len(m1):
        raise ValueError(f"motifs must have the same length, got {m0!r} and {m1!r}")
    if m0 == m1:
        raise ValueError(f"the two motifs must differ, got {m0!r} twice")
    if len(m0) > length:
        raise ValueError(f"motif length {len(m0)} exceeds the sequence length {length}")
    if motif_length is not None and motif_length != len(m0):
        raise ValueError(f"motif_length={motif_length} contradicts motifs of length {len(m0)}")
    return np.stack([_encode(m0), _encode(m1)])


def _insert_motifs(
    seqs: NDArray[np.uint8],
    motif_codes: NDArray[np.uint8],
    which: NDArray[np.int64],
    rows: NDArray[np.bool_],
    rng: np.random.Generator,
) -> None:
    """In place: overwrite a random window of each selected row with motif ``which[row]``."""
    n, length = seqs.shape
    k = motif_codes.shape[1]
    start = rng.integers(0, length - k + 1, n)
    idx = np.flatnonzero(rows)
    seqs[idx[:, None], start[idx, None] + np.arange(k)] = motif_codes[which[idx]]


def _encode(text: str) -> NDArray[np.uint8]:
    return _DECODE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]


def _decode_motif(codes: NDArray[np.uint8]) -> str:
    return _LETTERS[codes].tobytes().decode("ascii")


# -- ground truth ----------------------------------------------------------------


def _binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _ground_truth(probs: dict[str, float], pair: tuple[str, str] | None, q: float) -> GroundTruth:
    names = tuple(probs)
    pair_bits = 0.0 if pair is None else 1.0 - _binary_entropy((1 + q) / 2)

    def information(s: frozenset[str]) -> float:
        revealed = 1.0 - math.prod(1.0 - probs[m] for m in s)
        if pair is not None and set(pair) <= s:
            return revealed + (1.0 - revealed) * pair_bits
        return revealed

    values = coalition_values(information, names)
    modality_shares = _normalise(shapley_values(values, names))

    if pair is None:
        term_shares = dict(modality_shares)
    else:
        term = f"{pair[0]}*{pair[1]}"
        players = [m for m in names if m not in pair] + [term]

        def expand(t: frozenset[str]) -> frozenset[str]:
            return (t - {term}) | set(pair) if term in t else t

        term_game = coalition_values(lambda t: information(expand(t)), players)
        shares = _normalise(shapley_values(term_game, players))
        term_shares = {m: shares.get(m, 0.0) for m in names} | {term: shares[term]}

    revealed_all = 1.0 - math.prod(1.0 - p for p in probs.values())
    fallback = (1 + q) / 2 if pair is not None else 0.5  # accuracy when no motif is revealed
    return GroundTruth(
        modalities=names,
        probs=dict(probs),
        xor_pair=pair,
        xor_prob=q,
        modality_shares=modality_shares,
        term_shares=term_shares,
        relevant_terms=tuple(t for t, s in term_shares.items() if s > _SHARE_TOL),
        bayes_accuracy=revealed_all + (1.0 - revealed_all) * fallback,
        information=(
            {"{" + ",".join(m for m in names if m in s) + "}": v for s, v in values.items()}
            if len(names) <= MAX_INFORMATION_MODALITIES
            else None
        ),
    )


def _normalise(phi: dict[str, float]) -> dict[str, float]:
    """Divide by the total (= v(N) by efficiency); all zeros when there is no signal."""
    total = sum(phi.values())
    return {k: v / total if total > _SHARE_TOL else 0.0 for k, v in phi.items()}


# -- files -----------------------------------------------------------------------


def truth_path(path: str | os.PathLike[str]) -> Path:
    """``data.csv`` → ``data.truth.json`` (other names get ``.truth.json`` appended)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix == ".csv" else path
    return stem.with_name(stem.name + ".truth.json")


def save_synthetic(data: SyntheticData, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (CSV: ``label,m0,m1,…`` with ``ACGT`` strings) and its truth JSON.

    Both files are written atomically; returns the path of the JSON file.
    """
    path = Path(path)
    comma, newline = (np.full((len(data), 1), ord(c), dtype=np.uint8) for c in ",\n")
    parts = [(data.labels.astype(np.uint8) + ord("0"))[:, None]]
    for m in data.modalities:
        parts += [comma, _LETTERS[data.codes[m]]]
    parts.append(newline)
    header = ",".join(("label", *data.modalities)) + "\n"
    atomic_write_bytes(path, header.encode("ascii") + np.hstack(parts).tobytes())

    meta = {
        "format": "interfuse.synthetic",
        "version": 1,
        "motifs": list(data.motifs),
        "params": data.params,
        "ground_truth": data.ground_truth.to_dict(),
    }
    truth = truth_path(path)
    atomic_write_bytes(truth, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    return truth


def load_synthetic(path: str | os.PathLike[str]) -> SyntheticData:
    """Read a data set written by :func:`save_synthetic` (exact round trip)."""
    path = Path(path)
    truth = truth_path(path)
    for file, what in ((path, "data file"), (truth, "ground-truth file")):
        if not file.is_file():
            raise FileNotFoundError(f"{what} not found: {file}")
    try:
        meta = json.loads(truth.read_text(encoding="utf-8"))
        ground_truth = GroundTruth.from_dict(meta["ground_truth"])
        m0, m1 = meta["motifs"]
        params = dict(meta["params"])
        length = int(params["length"])
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{truth}: malformed ground-truth file ({err!r})") from err

    header, _, body = path.read_bytes().partition(b"\n")
    expected = ",".join(("label", *ground_truth.modalities))
    if header.rstrip(b"\r") != expected.encode("ascii"):
        raise ValueError(
            f"{path}: bad header {header.decode(errors='replace')!r}, expected {expected!r}"
        )
    rows = body.splitlines()
    if not rows:
        raise ValueError(f"{path}: no data rows")
    if "n" in params and len(rows) != params["n"]:  # else a cut copy loaded as if whole
        raise ValueError(
            f"{path}: {len(rows)} data rows, but {truth.name} records n = {params['n']} "
            f"(truncated or edited?)"
        )

    n_mod = len(ground_truth.modalities)
    width = 1 + n_mod * (1 + length)
    widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    if (widths != width).any():
        row = int(np.argmax(widths != width))
        raise ValueError(
            f"{path}, line {row + 2}: {widths[row]} characters, expected {width} "
            f"(a label and {n_mod} sequences of length {length})"
        )
    table = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), width)
    fields = table[:, 1:].reshape(len(rows), n_mod, 1 + length)  # ',' + sequence per modality
    _fail_at(
        path, (fields[:, :, 0] != ord(",")).any(axis=1), f"sequences must all have length {length}"
    )
    _fail_at(path, (table[:, 0] != ord("0")) & (table[:, 0] != ord("1")), "label must be 0 or 1")
    codes = _DECODE[fields[:, :, 1:]]
    _fail_at(path, (codes == 255).any(axis=(1, 2)), f"character outside {ALPHABET}")

    return SyntheticData(
        codes={m: np.ascontiguousarray(codes[:, k]) for k, m in enumerate(ground_truth.modalities)},
        labels=(table[:, 0] - ord("0")).astype(np.int64),
        ground_truth=ground_truth,
        motifs=(m0, m1),
        params=params,
    )


def _fail_at(path: Path, bad_rows: NDArray[np.bool_], problem: str) -> None:
    """Raise naming the file and the first bad line (the header is line 1)."""
    if bad_rows.any():
        line = int(np.argmax(bad_rows)) + 2
        raise ValueError(f"{path}, line {line}: {problem}")
