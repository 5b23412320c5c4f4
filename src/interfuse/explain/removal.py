"""The one operator behind every post-hoc explanation: predict with some modalities removed.

A trained model ``f`` is evaluated with only the modalities of a coalition ``S`` present; every
other modality ``m ∉ S`` is replaced by a baseline. Three baselines (``method``):

* ``"mask"``: the model's own missing-modality path, ``model.fuse(h, masks)`` with
  ``masks[m] = False`` (a :class:`~interfuse.MultimodalModel` replaces the block of ``m`` and of
  every interaction containing ``m`` by its expectation 0; docs/missing-modalities.md §2);
* ``"embedding"``: the encoder output ``h_m`` is replaced by its training mean ``E[h_m]``
  (models with ``encode``/``fuse``);
* ``"input"``: the raw input ``x_m`` is replaced by its training mean ``E[x_m]`` (any model;
  the mean of categorical inputs such as token ids means little, and a mean one-hot sequence is
  off the data manifold, so prefer the other two where the model allows).

``"auto"`` picks the first of these the model supports. With ``mask``/``embedding`` the encoders
run once per sample; each coalition then costs only a pass through the fusion part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from ..baselines._common import EncoderFusion
from ..data.batching import ModalitySplit
from ..model import MultimodalModel

Method = Literal["auto", "mask", "embedding", "input"]
METHODS: tuple[str, ...] = ("mask", "embedding", "input")


def has_encode_fuse(model: nn.Module) -> bool:
    """The model splits into per-modality encoders (``encode``) and a fusion part (``fuse``):
    :class:`~interfuse.MultimodalModel` and the encoder-based baselines."""
    return isinstance(model, (MultimodalModel, EncoderFusion))


def supports_masks(model: nn.Module) -> bool:
    """The model has a missing-modality path (``fuse(embeddings, masks)``): ours."""
    return isinstance(model, MultimodalModel)


def resolve_method(model: nn.Module, method: str = "auto") -> str:
    """``"auto"`` → ``"mask"``, ``"embedding"`` or ``"input"``, whichever the model supports
    first; an explicit choice is checked."""
    if method == "auto":
        if supports_masks(model):
            return "mask"
        return "embedding" if has_encode_fuse(model) else "input"
    if method not in METHODS:
        raise ValueError(f"unknown removal method {method!r}; choose auto, {', '.join(METHODS)}")
    if method == "mask" and not supports_masks(model):
        raise ValueError(
            f"{type(model).__name__} has no missing-modality path (fuse(embeddings, masks)); "
            f"use method='embedding' or 'input' (command line: --method embedding or --method "
            f"input)"
        )
    if method == "embedding" and not has_encode_fuse(model):
        raise ValueError(
            f"{type(model).__name__} has no encode/fuse split (e.g. early fusion); use "
            f"method='input' (command line: --method input)"
        )
    return method


def model_modalities(model: nn.Module) -> tuple[str, ...]:
    modalities = getattr(model, "modalities", None)
    if not modalities:
        raise ValueError(
            f"{type(model).__name__} does not list its modalities (a `modalities` attribute)"
        )
    return tuple(modalities)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and no gradients inside; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class ModalityRemoval:
    """Predictions of a trained model with a subset of its modalities removed.

    Args:
        model: a trained model with a ``modalities`` attribute whose output has ``.prediction``.
        reference: data the baselines are averaged over (the training split); not needed for
            ``method="mask"``.
        method: ``"auto"``, ``"mask"``, ``"embedding"`` or ``"input"`` (module docstring).
        batch_size: samples per forward pass.

    Usage: ``reps = removal.representations(data)`` once, then
    ``removal.predict_from(reps, present={"a", "b"})`` per coalition.
    """

    def __init__(
        self,
        model: nn.Module,
        reference: ModalitySplit | None = None,
        method: Method | str = "auto",
        batch_size: int = 1024,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.modalities = model_modalities(model)
        self.method = resolve_method(model, method)
        self.batch_size = batch_size
        self.baseline: dict[str, Tensor] = {}
        if self.method in ("embedding", "input"):
            if reference is None:
                raise ValueError(
                    f"method={self.method!r} replaces modalities by their mean over reference "
                    f"data; pass reference=<training split>"
                )
            self.baseline = self._reference_means(reference)

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def uses_fusion_only(self) -> bool:
        """Coalitions are evaluated on encoder outputs (the encoders run once per sample)."""
        return self.method in ("mask", "embedding")

    def representations(self, data: ModalitySplit) -> dict[str, Tensor]:
        """What the operator replaces, for every sample of ``data`` (on the CPU): encoder outputs
        ``{m: (N, d_m)}`` for ``mask``/``embedding`` (a model with a missing-modality path
        encodes with ``data.masks``, so the inputs of missing samples are ignored), the raw
        inputs for ``input``."""
        self._check_modalities(data)
        if not self.uses_fusion_only and all(
            isinstance(data.inputs[m], Tensor) for m in self.modalities
        ):
            return {m: data.inputs[m] for m in self.modalities}
        parts: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        for reps, _ in self._batches(data):
            for m in self.modalities:
                parts[m].append(reps[m])
        return {m: torch.cat(parts[m]) for m in self.modalities}

    def _reference_means(self, reference: ModalitySplit) -> dict[str, Tensor]:
        """The mean representation of every modality over the samples of ``reference`` that
        have it, batch by batch (a lazily read training split is never held in memory)."""
        self._check_modalities(reference)
        sums: dict[str, Tensor] = {}
        counts = dict.fromkeys(self.modalities, 0)
        dtypes: dict[str, torch.dtype] = {}
        for reps, masks in self._batches(reference):
            for m in self.modalities:
                rows = _present_rows(reps[m], masks.get(m))
                total = rows.double().sum(dim=0)
                sums[m] = total if m not in sums else sums[m] + total
                counts[m] += len(rows)
                dtypes[m] = reps[m].dtype
        return {m: (sums[m] / max(counts[m], 1)).to(dtypes[m]) for m in self.modalities}

    def _check_modalities(self, data: ModalitySplit) -> None:
        missing = [m for m in self.modalities if m not in data.inputs]
        if missing:
            raise ValueError(f"the data lack modalities {missing} of the model")

    def _batches(
        self, data: ModalitySplit
    ) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``(representations, masks)`` of ``data`` batch by batch (on the CPU), from its
        batches (``data[index]``: standardised, missing rows 0, for every kind of split)."""
        # samples missing in the data: their inputs are ignored (they may hold anything, NaN
        # included), as in a forward pass with the data's masks
        masked = supports_masks(self.model)
        with evaluation_mode(self.model):
            for index in torch.arange(len(data)).split(self.batch_size):
                inputs, _, masks = data[index]
                if not self.uses_fusion_only:
                    yield {m: inputs[m] for m in self.modalities}, masks
                    continue
                batch = {m: inputs[m].to(self.device) for m in self.modalities}
                if masked and masks:
                    on_device = {
                        m: k.to(self.device) for m, k in masks.items() if m in self.modalities
                    }
                    embeddings = self.model.encode(batch, on_device)
                else:
                    embeddings = self.model.encode(batch)
                yield {m: embeddings[m].detach().cpu() for m in self.modalities}, masks

    def predict_from(
        self,
        representations: Mapping[str, Tensor],
        present: Iterable[str] | None = None,
        data_masks: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Predictions ``(N, C)`` with only the ``present`` modalities (default: all) kept.

        ``data_masks`` (``{m: bool (N,)}``) marks samples that lack a modality in the data
        itself; they are removed the same way as the modalities outside ``present``.
        """
        present = set(self.modalities if present is None else present)
        unknown = present - set(self.modalities)
        if unknown:
            raise ValueError(
                f"unknown modalities {sorted(unknown)}; the model has {self.modalities}"
            )
        absent = [m for m in self.modalities if m not in present]
        n = len(next(iter(representations.values())))
        outputs = []
        with evaluation_mode(self.model):
            for index in torch.arange(n).split(self.batch_size):
                batch = {m: representations[m][index].to(self.device) for m in self.modalities}
                keep = {
                    m: (
                        torch.zeros(len(index), dtype=torch.bool)
                        if m in absent
                        else (data_masks or {}).get(m, torch.ones(n, dtype=torch.bool))[index]
                    ).to(self.device)
                    for m in self.modalities
                }
                outputs.append(self._forward(batch, keep).detach().cpu())
        return torch.cat(outputs)

    def predict(self, data: ModalitySplit, present: Iterable[str] | None = None) -> Tensor:
        """Predictions on ``data`` with only the ``present`` modalities kept."""
        return self.predict_from(self.representations(data), present, data.masks)

    def _forward(self, batch: dict[str, Tensor], keep: dict[str, Tensor]) -> Tensor:
        """The prediction with, per sample, only the modalities where ``keep`` is True."""
        if all(bool(k.all()) for k in keep.values()):
            return (
                self.model.fuse(batch).prediction
                if self.uses_fusion_only
                else (self.model(batch).prediction)
            )
        if self.method == "mask":
            for m, k in keep.items():  # as encode() leaves them: missing rows are 0
                batch[m] = torch.where(_rows(k, batch[m]), batch[m], 0.0)
            return self.model.fuse(batch, keep).prediction
        for m, k in keep.items():
            mean = self.baseline[m].to(self.device).expand_as(batch[m])
            batch[m] = torch.where(_rows(k, batch[m]), batch[m], mean)
        if self.method == "embedding":
            return self.model.fuse(batch).prediction
        return self.model(batch).prediction


def _rows(keep: Tensor, x: Tensor) -> Tensor:
    """``keep (B,)`` broadcast over the trailing axes of ``x``."""
    return keep.reshape(-1, *([1] * (x.dim() - 1)))


def _present_rows(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x[mask]
