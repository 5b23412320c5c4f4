"""Training hyperparameters and the JSON model description that rebuilds a model exactly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..baselines import EarlyFusion, LateFusion, LowRankFusion, TensorFusion
from ..encoders import MLP, SequenceCNN, SequenceGRU
from ..model import MultimodalModel
from ..terms import InteractionSpec, resolve_interactions, term_name

ENCODER_TYPES: dict[str, type[nn.Module]] = {
    "sequence_cnn": SequenceCNN,
    "mlp": MLP,
    "sequence_gru": SequenceGRU,
}


MODEL_NAMES = ("intense", "mnl", "early", "late", "tfn", "lmf")
"""``intense``: :class:`MultimodalModel` (MNL head with IterBN interactions); ``mnl``: the same
without interaction terms; ``early``/``late``: early/late fusion; ``tfn``: tensor fusion network;
``lmf``: low-rank multimodal fusion (see :mod:`interfuse.baselines`)."""

BASELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "early": {"hidden": (128,)},
    "late": {"hidden": ()},
    "tfn": {"hidden": (64,)},
    "lmf": {"fused_dim": 32, "hidden": ()},
}
"""Fixed architecture settings of the baselines; ``tfn``/``lmf`` take their size k / rank r from
``TrainConfig.rank``."""


@dataclass
class TrainConfig:
    """Hyperparameters of one run (SPEC §3). Every field is JSON-safe."""

    interactions: InteractionSpec = "pairs"
    rank: int = 8
    p: float = 2.0
    lam: float = 5e-2
    iterbn: bool = True
    vbn: bool = True
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    max_grad_norm: float | None = None
    model: str = "intense"
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.interactions, tuple):
            self.interactions = list(self.interactions)
        checks = [
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (math.isfinite(self.p) and self.p >= 1, f"p must be >= 1, got {self.p}"),
            (math.isfinite(self.lam) and self.lam >= 0, f"lam must be >= 0, got {self.lam}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.batch_size >= 2,
                f"batch_size must be >= 2 (batch statistics), got {self.batch_size}",
            ),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (
                self.model in MODEL_NAMES,
                f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}",
            ),
            (
                0.0 <= self.modality_dropout < 1.0,
                f"modality_dropout must be in [0, 1), got {self.modality_dropout}",
            ),
            (
                self.modality_dropout == 0.0 or self.model in ("intense", "mnl"),
                f"modality dropout needs a model with a missing-modality path (intense or mnl), "
                f"not {self.model!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def build_encoder(spec: dict[str, Any], modality: str = "?") -> nn.Module:
    """Instantiate an encoder from ``{"type": name, **kwargs}``."""
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind not in ENCODER_TYPES:
        raise ValueError(
            f"modality {modality!r}: unknown encoder type {kind!r}; known: {sorted(ENCODER_TYPES)}"
        )
    return ENCODER_TYPES[kind](**kwargs)


def model_description(
    encoders: dict[str, dict[str, Any]],
    config: TrainConfig,
    num_outputs: int,
    input_shapes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The JSON document from which :func:`build_model` rebuilds the model.

    ``config.model`` picks the architecture (:data:`MODEL_NAMES`); ``input_shapes`` (per-sample
    shape of each modality's input) is needed only by early fusion.
    """
    modalities = list(encoders)
    if config.model not in ("intense", "mnl"):
        return _baseline_description(config, modalities, encoders, num_outputs, input_shapes)
    interactions = "none" if config.model == "mnl" else config.interactions
    terms = resolve_interactions(interactions, modalities)
    return {
        "model": config.model,
        "modalities": modalities,
        "encoders": {m: dict(spec) for m, spec in encoders.items()},
        "interactions": [term_name(t) for t in terms],
        "rank": config.rank,
        "p": config.p,
        "iterbn": config.iterbn,
        "vbn": config.vbn,
        "num_outputs": num_outputs,
    }


def _baseline_description(
    config: TrainConfig,
    modalities: list[str],
    encoders: dict[str, dict[str, Any]],
    num_outputs: int,
    input_shapes: dict[str, list[int]] | None,
) -> dict[str, Any]:
    description: dict[str, Any] = {
        "model": config.model,
        "modalities": modalities,
        "encoders": {m: dict(spec) for m, spec in encoders.items()},
        "num_outputs": num_outputs,
    }
    if config.model == "early":
        if input_shapes is None or set(input_shapes) != set(modalities):
            raise ValueError("early fusion needs the per-sample input shape of every modality")
        description["input_shapes"] = {m: [int(s) for s in input_shapes[m]] for m in modalities}
        description["hidden"] = list(BASELINE_DEFAULTS["early"]["hidden"])
    else:
        description.update(
            {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in BASELINE_DEFAULTS[config.model].items()
            }
        )
        if config.model in ("tfn", "lmf"):
            description["rank"] = config.rank
    return description


def build_model(description: dict[str, Any], seed: int | None = None) -> nn.Module:
    """Build the model described by :func:`model_description`'s output (seeded if ``seed``).

    ``description["model"]`` (default ``"intense"``) selects :class:`MultimodalModel` or a
    baseline of :mod:`interfuse.baselines`.
    """
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
        if seed is not None:
            torch.manual_seed(seed)
        return _build(description)


def _build(description: dict[str, Any]) -> nn.Module:
    kind = description.get("model", "intense")
    if kind not in MODEL_NAMES:
        raise ValueError(f"unknown model {kind!r}; known: {', '.join(MODEL_NAMES)}")
    num_outputs = description["num_outputs"]
    if kind == "early":
        shapes = description["input_shapes"]
        return EarlyFusion(
            {m: shapes[m] for m in description["modalities"]},
            num_outputs,
            hidden=description["hidden"],
        )
    encoders = {m: build_encoder(description["encoders"][m], m) for m in description["modalities"]}
    if kind == "late":
        return LateFusion(encoders, num_outputs, hidden=description["hidden"])
    if kind == "tfn":
        return TensorFusion(
            encoders, num_outputs, factor_dim=description["rank"], hidden=description["hidden"]
        )
    if kind == "lmf":
        return LowRankFusion(
            encoders,
            num_outputs,
            rank=description["rank"],
            fused_dim=description["fused_dim"],
            hidden=description["hidden"],
        )
    return MultimodalModel(
        encoders,
        interactions=description["interactions"],
        rank=description["rank"],
        num_outputs=description["num_outputs"],
        p=description["p"],
        iterbn=description["iterbn"],
        vbn=description["vbn"],
    )
