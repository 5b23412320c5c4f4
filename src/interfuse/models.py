"""The model registry: every trainable architecture, how it is described and how it is built.

A model is described by a :class:`ModelSpec` (JSON-safe: architecture name, modalities, encoder
specifications, number of outputs and the architecture's own options). :func:`build_model`
rebuilds it exactly from that description; the run folder stores it beside the weights.

Architectures register themselves with :func:`register_model` in the file that defines them
(ours below, the baselines in :mod:`interfuse.baselines`); the command line's ``--model``
choices, the benchmarks and the shared model tests read :data:`MODELS`. A
:class:`ModelEntry` also states the model's capabilities — built-in relevance (an MNL head with
``relevance()`` and ``regularizer()``) and a missing-modality path (``masks=``) — so callers
never need to probe a model with ``hasattr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Protocol

import torch
from torch import nn

from .encoders import CUSTOM, build_encoder
from .model import MultimodalModel
from .registry import Registry
from .terms import InteractionSpec, resolve_interactions, term_name

__all__ = [
    "MODELS",
    "ArchitectureOptions",
    "ModelEntry",
    "ModelSpec",
    "build_model",
    "encoder_spec",
    "model_entry",
    "model_spec",
    "register_model",
]


class ArchitectureOptions(Protocol):
    """The training settings an architecture may read (``TrainConfig`` has them all)."""

    interactions: InteractionSpec
    rank: int
    p: float
    iterbn: bool
    vbn: bool


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model (JSON-safe; stored in every checkpoint).

    ``encoders`` maps each modality to ``{"type": name, **kwargs}`` (see
    :func:`interfuse.encoders.build_encoder`); ``options`` are the architecture's own settings.
    """

    model: str
    modalities: tuple[str, ...]
    encoders: Mapping[str, Mapping[str, Any]]
    num_outputs: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "modalities": list(self.modalities),
            "encoders": {m: _json_lists(dict(self.encoders[m])) for m in self.modalities},
            "num_outputs": self.num_outputs,
            "options": _json_lists(dict(self.options)),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelSpec:
        try:
            spec = cls(
                model=str(values["model"]),
                modalities=tuple(str(m) for m in values["modalities"]),
                encoders={str(m): dict(e) for m, e in values["encoders"].items()},
                num_outputs=int(values["num_outputs"]),
                options=dict(values.get("options") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"malformed model description ({error!r})") from None
        outputs = values["num_outputs"]
        whole = isinstance(outputs, Integral) and not isinstance(outputs, bool)  # 2.7 is not 2
        if set(spec.encoders) != set(spec.modalities) or not whole or spec.num_outputs < 1:
            raise ValueError("malformed model description (encoders, modalities or outputs)")
        return spec


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    ``options(config, modalities, input_shapes)`` returns the architecture's settings from the
    training configuration; ``build(spec, encoders)`` returns the module for a
    :class:`ModelSpec` given built encoders. ``relevance``: the model has an MNL head
    (``relevance()``, ``regularizer()``, ``head``); ``masks``: it accepts ``masks=`` for missing
    modalities.
    """

    name: str
    summary: str
    options: Callable[[ArchitectureOptions, Sequence[str], Mapping[str, Sequence[int]]], dict]
    build: Callable[[ModelSpec, dict[str, nn.Module]], nn.Module]
    relevance: bool = False
    masks: bool = False


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str,
    *,
    summary: str,
    options: Callable[..., dict[str, Any]],
    relevance: bool = False,
    masks: bool = False,
) -> Callable[[Callable[[ModelSpec, dict[str, nn.Module]], nn.Module]], Any]:
    """Decorator on a ``build(spec, encoders) -> nn.Module`` function that registers a model."""

    def decorate(build: Callable[[ModelSpec, dict[str, nn.Module]], nn.Module]) -> Any:
        MODELS.add(name, ModelEntry(name, summary, options, build, relevance, masks))
        return build

    return decorate


def model_entry(model: str | ModelSpec) -> ModelEntry:
    """The registry entry of an architecture name or spec."""
    return MODELS.get(model.model if isinstance(model, ModelSpec) else model)


def encoder_spec(modality: str, encoder: Mapping[str, Any] | nn.Module) -> dict[str, Any]:
    """A JSON spec for an encoder given as a spec or as a module (recorded as ``custom``)."""
    if isinstance(encoder, nn.Module):
        kind = type(encoder)
        return {"type": CUSTOM, "class": f"{kind.__module__}.{kind.__qualname__}"}
    if not isinstance(encoder, Mapping) or "type" not in encoder:
        raise ValueError(
            f"modality {modality!r}: an encoder is an nn.Module or a spec {{'type': name, ...}}, "
            f"got {encoder!r}"
        )
    return _json_lists(dict(encoder))


def model_spec(
    model: str,
    encoders: Mapping[str, Mapping[str, Any] | nn.Module],
    config: ArchitectureOptions,
    num_outputs: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` of architecture ``model`` for these encoders and settings."""
    entry = MODELS.get(model)
    modalities = list(encoders)
    options = entry.options(config, modalities, dict(input_shapes or {}))
    return ModelSpec(
        model=model,
        modalities=tuple(modalities),
        encoders={m: encoder_spec(m, e) for m, e in encoders.items()},
        num_outputs=int(num_outputs),
        options=_json_lists(options),
    )


def build_model(
    spec: ModelSpec,
    *,
    seed: int | None = None,
    encoders: Mapping[str, nn.Module] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build the model of ``spec`` (seeded initialisation if ``seed``; global RNG untouched).

    ``encoders`` supplies modules for modalities whose spec is ``custom`` (or replaces any).
    ``device="meta"`` builds the structure without allocating memory (to check sizes first).
    """
    entry = MODELS.get(spec.model)
    given = dict(encoders or {})
    unknown = sorted(set(given) - set(spec.modalities))
    if unknown:
        raise ValueError(
            f"encoders given for unknown modalities {unknown}; model has {spec.modalities}"
        )
    target = torch.device(device) if device is not None else torch.device("cpu")
    placement = target if device is not None else contextlib.nullcontext()
    # only the generators that initialise the parameters are seeded (the CPU's; on a GPU also
    # the CUDA ones), and fork_rng restores them: torch.manual_seed would also reseed every
    # CUDA device, which fork_rng(devices=[]) leaves changed
    cuda = list(range(torch.cuda.device_count())) if target.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), placement:
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed_all(seed)
        built = {
            m: given[m] if m in given else build_encoder(spec.encoders[m], m)
            for m in spec.modalities
        }
        return entry.build(dataclasses.replace(spec, options=_Options(spec)), built)


class _Options(dict):
    """A spec's options as its builder reads them: a missing option is a ``ValueError`` that
    names the model and the option (a description edited or written by another version)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec.options)
        self.model = spec.model

    def __missing__(self, key: str) -> Any:
        raise ValueError(
            f"model {self.model!r}: its description has no option {key!r} (it has {sorted(self)})"
        )


def _json_lists(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples (at any depth) as lists, as they come back from JSON."""
    return {k: _json_value(v) for k, v in values.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# -- our models --------------------------------------------------------------------------


def _intense_options(
    config: ArchitectureOptions, modalities: Sequence[str], shapes: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    terms = resolve_interactions(config.interactions, modalities)
    return {
        "interactions": [term_name(t) for t in terms],
        "rank": config.rank,
        "p": config.p,
        "iterbn": config.iterbn,
        "vbn": config.vbn,
    }


def _mnl_options(
    config: ArchitectureOptions, modalities: Sequence[str], shapes: Mapping[str, Sequence[int]]
) -> dict[str, Any]:
    options = _intense_options(config, modalities, shapes)
    options["interactions"] = []
    return options


def _build_multimodal(spec: ModelSpec, encoders: dict[str, nn.Module]) -> nn.Module:
    o = spec.options
    return MultimodalModel(
        encoders,
        interactions=list(o["interactions"]) or "none",
        rank=int(o["rank"]),
        num_outputs=spec.num_outputs,
        p=float(o["p"]),
        iterbn=bool(o["iterbn"]),
        vbn=bool(o["vbn"]),
    )


register_model(
    "intense",
    summary="MNL head over unimodal and interaction blocks with IterBN (built-in relevance)",
    options=_intense_options,
    relevance=True,
    masks=True,
)(_build_multimodal)
register_model(
    "mnl",
    summary="MNL head over unimodal blocks only (no interaction terms; built-in relevance)",
    options=_mnl_options,
    relevance=True,
    masks=True,
)(_build_multimodal)
