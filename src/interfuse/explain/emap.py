"""EMAP: empirical multimodally-additive function projection (Hessel & Lee, *Does my multimodal
model learn cross-modal interactions? It's harder to tell than you might think!*, EMNLP 2020).

EMAP replaces a model ``f`` (its logits) by its best additive approximation and checks how much
performance that costs: if a model's accuracy barely changes, it does not use cross-modal
interactions. Generalised to M modalities as the first-order additive (ANOVA) projection

    f̂(x) = Σ_m E_{x'}[f(x_m, x'_{−m})] − (M − 1) E[f],

estimated on a subsample ``x_1 … x_N`` of the evaluation data:

    E_{x'}[f(x_{i,m}, x'_{−m})] ≈ (1/N) Σ_j f(x_{i,m}, x_{j,−m}),
    E[f] ≈ (1/M) Σ_m (1/N²) Σ_{i,j} f(x_{i,m}, x_{j,−m}).

For M = 2 this is exactly Hessel & Lee's estimator; an additive model ``f = Σ_m g_m(x_m) + c`` is
reproduced exactly, and a pure product ``a(x_1)·b(x_2)`` is reduced to its additive part.

Cost: ``M·N²`` evaluations of ``f`` (the exact projection under the product of the empirical
marginals would need ``N^M``). For models with per-modality encoders (``encode``/``fuse``) the
encoders run once per sample and only the fusion part is evaluated ``M·N²`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.batching import TensorData
from ..metrics import compute_metrics
from ..results import Explanation
from .base import ExplainContext, register_explainer
from .removal import evaluation_mode, has_encode_fuse, model_modalities

Function = Callable[[dict[str, Tensor]], Tensor]


def emap_cost(n_samples: int, n_modalities: int) -> int:
    """Evaluations of ``f`` the estimator needs: ``M·N²``."""
    return n_modalities * n_samples**2


def emap_projection(
    f: Function,
    representations: Mapping[str, Tensor],
    batch_size: int = 8192,
    progress: bool = False,
) -> Tensor:
    """``f̂`` (module docstring) at each of the N samples of ``representations`` (``{m: (N, …)}``).

    ``f`` maps a batch ``{m: (B, …)}`` to outputs ``(B, C)`` or ``(B,)``; it is evaluated on
    batches of up to about ``batch_size`` mixed samples ``(x_{i,m}, x_{j,−m})``.
    """
    modalities = list(representations)
    n = len(representations[modalities[0]])
    if any(len(x) != n for x in representations.values()):
        raise ValueError("every modality needs the same number of samples")
    if n < 1:
        raise ValueError("EMAP needs at least one sample")
    rows = max(1, batch_size // n)  # samples i per batch: rows·N mixed samples
    partial = []  # partial[m][i] = (1/N) Σ_j f(x_{i,m}, x_{j,−m})
    bar = tqdm(
        total=len(modalities) * n, desc="EMAP", unit="sample", disable=not progress, leave=False
    )
    for m in modalities:
        chunks = []
        for index in torch.arange(n).split(rows):
            c = len(index)
            mixed = {
                k: x[index].repeat_interleave(n, dim=0)
                if k == m
                else x.repeat(c, *([1] * (x.dim() - 1)))
                for k, x in representations.items()
            }
            y = f(mixed)
            chunks.append(y.reshape(c, n, -1).double().mean(dim=1))
            bar.update(c)
        partial.append(torch.cat(chunks))
    bar.close()
    stacked = torch.stack(partial)  # (M, N, C)
    grand_mean = stacked.mean(dim=(0, 1))
    return stacked.sum(dim=0) - (len(modalities) - 1) * grand_mean


@dataclass(frozen=True)
class EmapResult:
    """Metrics of the model and of its EMAP projection on the same subsample.

    ``gap[metric] = model − EMAP``; for accuracy this is how much accuracy depends on
    cross-modal interactions.
    """

    n_samples: int
    evaluations: int
    model: dict[str, float]
    emap: dict[str, float]

    @property
    def gap(self) -> dict[str, float]:
        return {k: self.model[k] - self.emap[k] for k in self.model if k in self.emap}

    @property
    def accuracy_gap(self) -> float | None:
        return self.gap.get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "evaluations": self.evaluations,
            "model": dict(self.model),
            "emap": dict(self.emap),
            "gap": self.gap,
            "accuracy_gap": self.accuracy_gap,
        }


def subsample(n: int, n_samples: int, seed: int = 0) -> Tensor:
    """Sorted indices of ``min(n, n_samples)`` samples drawn without replacement (seeded)."""
    if n_samples < 1:
        raise ValueError(f"the EMAP subsample needs >= 1 samples, got {n_samples}")
    if n_samples >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:n_samples].sort().values


def emap_subsample(data: TensorData, n_samples: int, seed: int = 0) -> Tensor:
    """Indices into ``data`` of the samples EMAP projects: a seeded subsample (:func:`subsample`)
    of the samples that have every modality (EMAP recombines modalities)."""
    complete = torch.ones(len(data), dtype=torch.bool)
    for mask in data.masks.values():
        complete &= mask
    rows = torch.arange(len(data))[complete]
    if len(rows) == 0:
        raise ValueError(f"EMAP needs samples that have every modality; {no_complete_sample(data)}")
    return rows[subsample(len(rows), n_samples, seed)]


def no_complete_sample(data: TensorData) -> str | None:
    """Why no sample of ``data`` has every modality (``None`` when one has): the modalities
    that no sample has, or else that every sample lacks one."""
    complete = torch.ones(len(data), dtype=torch.bool)
    for mask in data.masks.values():
        complete &= mask
    if bool(complete.any()):
        return None
    never = [m for m, mask in data.masks.items() if not bool(mask.any())]
    if never:
        return f"no sample has modality {never[0]!r}" + (
            f" (nor {', '.join(map(repr, never[1:]))})" if len(never) > 1 else ""
        )
    return "no sample has every modality"


def emap(
    model: nn.Module,
    data: TensorData,
    task: str,
    n_samples: int = 256,
    seed: int = 0,
    batch_size: int | None = None,
    metric_set: str = "default",
    progress: bool = False,
) -> EmapResult:
    """EMAP of a trained model on a seeded subsample of ``data`` (``M·N²`` evaluations); samples
    that lack a modality are left out.

    Models with ``encode``/``fuse`` are projected on encoder outputs (fusion-only evaluations,
    identical result since each encoder sees one modality); others on their raw inputs.
    """
    modalities = model_modalities(model)
    index = emap_subsample(data, n_samples, seed)
    inputs = {m: data.inputs[m][index] for m in modalities}
    targets = data.targets[index]
    device = next(model.parameters()).device
    fusion_only = has_encode_fuse(model)
    if batch_size is None:
        batch_size = 8192 if fusion_only else 2048

    def on_device(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: x.to(device) for m, x in batch.items()}

    with evaluation_mode(model):
        if fusion_only:
            representations = _batched(lambda b: model.encode(on_device(b)), inputs, 1024)

            def f(batch: dict[str, Tensor]) -> Tensor:
                return model.fuse(on_device(batch)).prediction.cpu()
        else:
            representations = inputs

            def f(batch: dict[str, Tensor]) -> Tensor:
                return model(on_device(batch)).prediction.cpu()

        prediction = _batched(lambda b: {"y": f(b)}, representations, batch_size)["y"]
        projected = emap_projection(f, representations, batch_size, progress)
    n = len(index)
    return EmapResult(
        n_samples=n,
        evaluations=emap_cost(n, len(modalities)),
        model=compute_metrics(task, prediction, targets, metric_set),
        emap=compute_metrics(task, projected.to(prediction.dtype), targets, metric_set),
    )


def _batched(
    fn: Callable[[dict[str, Tensor]], Mapping[str, Tensor]],
    inputs: Mapping[str, Tensor],
    batch_size: int,
) -> dict[str, Tensor]:
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[Tensor]] = {}
    for index in torch.arange(n).split(batch_size):
        for k, v in fn({m: x[index] for m, x in inputs.items()}).items():
            parts.setdefault(k, []).append(v.detach().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


@register_explainer
class EmapExplainer:
    """EMAP's accuracy gap (no per-term values: EMAP compares whole models)."""

    name = "emap"
    label = "EMAP"
    description = "model vs its additive projection (Hessel & Lee, EMNLP 2020)"

    def explain(self, context: ExplainContext) -> Explanation:
        details: dict[str, Any] = {}
        reason = no_complete_sample(context.data) if context.emap_samples > 0 else None
        if reason is not None:  # EMAP recombines complete samples: skipped, the others run
            details = {"skipped": f"{reason} in the explained split"}
        elif context.emap_samples > 0:
            result = emap(
                context.model,
                context.data,
                context.task,
                context.emap_samples,
                context.seed,
                metric_set=context.metric_set,
                progress=context.progress,
            )
            details = {
                **result.to_dict(),
                "subsample_seed": context.seed,
                "subsample": emap_subsample(
                    context.data, context.emap_samples, context.seed
                ).tolist(),
            }
        return Explanation(self.name, self.label, self.description, {}, details)
