"""Training hyperparameters and the JSON model description that rebuilds a model exactly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..encoders import MLP, SequenceCNN
from ..model import MultimodalModel
from ..terms import InteractionSpec, resolve_interactions, term_name

ENCODER_TYPES: dict[str, type[nn.Module]] = {"sequence_cnn": SequenceCNN, "mlp": MLP}


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
    encoders: dict[str, dict[str, Any]], config: TrainConfig, num_outputs: int
) -> dict[str, Any]:
    """The JSON document from which :func:`build_model` rebuilds the model."""
    modalities = list(encoders)
    terms = resolve_interactions(config.interactions, modalities)
    return {
        "modalities": modalities,
        "encoders": {m: dict(spec) for m, spec in encoders.items()},
        "interactions": [term_name(t) for t in terms],
        "rank": config.rank,
        "p": config.p,
        "iterbn": config.iterbn,
        "vbn": config.vbn,
        "num_outputs": num_outputs,
    }


def build_model(description: dict[str, Any], seed: int | None = None) -> MultimodalModel:
    """Build a :class:`MultimodalModel` from :func:`model_description`'s output."""
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
        if seed is not None:
            torch.manual_seed(seed)
        return _build(description)


def _build(description: dict[str, Any]) -> MultimodalModel:
    encoders = {m: build_encoder(description["encoders"][m], m) for m in description["modalities"]}
    return MultimodalModel(
        encoders,
        interactions=description["interactions"],
        rank=description["rank"],
        num_outputs=description["num_outputs"],
        p=description["p"],
        iterbn=description["iterbn"],
        vbn=description["vbn"],
    )
