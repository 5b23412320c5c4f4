"""The PyTorch Lightning wrapper: task loss + λ·Ω_p every step, no weight decay on the MNL head."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..data.batching import Batch
from ..fusion.mnl import MNLFusion
from ..metrics import task_loss
from ..model import MultimodalModel


class FusionModule(pl.LightningModule):
    """Trains a :class:`MultimodalModel` with ``loss = task loss + lam · Ω_p(W)``.

    ``regularize`` (default: whether ``model`` is a :class:`MultimodalModel`) adds λ·Ω_p, the
    MNL head's group-norm regulariser (docs/training.md §1–§2). A baseline (no MNL head) is trained
    on the task loss alone, with ``weight_decay`` on all its parameters.

    AdamW updates the encoders, interaction factors and the head's bias with ``weight_decay``; the
    head's weight blocks get no weight decay, since Ω_p already regularises them.

    ``modality_dropout`` drops each modality of each training sample independently with that
    probability (through the model's missing-modality path), so the model learns to predict from
    any subset. The drops of epoch e, batch i are drawn from a generator seeded by
    ``(seed, e, i)``: a resumed run draws exactly what the uninterrupted run drew.
    """

    def __init__(
        self,
        model: MultimodalModel | nn.Module,
        task: str,
        lam: float = 5e-2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        modality_dropout: float = 0.0,
        seed: int = 0,
        epoch_offset: int = 0,
        regularize: bool | None = None,
        loss_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.model = model
        self.task = task
        self.lam = lam
        self.lr = lr
        self.weight_decay = weight_decay
        self.modality_dropout = modality_dropout
        self.seed = seed
        self.epoch_offset = epoch_offset
        self.regularize = isinstance(model, MultimodalModel) if regularize is None else regularize
        # class (or positive-label) weights of the task loss; a buffer so it follows the device
        self.register_buffer("loss_weight", loss_weight, persistent=False)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.model(inputs).prediction

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        inputs, targets, masks = batch
        if self.modality_dropout > 0:
            dropped = self.dropout_masks(len(targets), batch_idx)
            masks = {m: keep & masks[m] if m in masks else keep for m, keep in dropped.items()}
        prediction = self.model(inputs, **({"masks": masks} if masks else {})).prediction
        loss_task = task_loss(self.task, prediction, targets, self.loss_weight)
        n = len(targets)
        loss = loss_task
        if self.regularize:  # baselines have no Ω_p
            regulariser = self.model.regularizer()
            loss = loss_task + self.lam * regulariser
            self.log("train_regularizer", regulariser, on_step=False, on_epoch=True, batch_size=n)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train_task_loss", loss_task, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def dropout_masks(self, batch: int, batch_idx: int) -> dict[str, Tensor]:
        """Presence masks ``{m: bool (B,)}`` with each entry False with probability p."""
        epoch = self.epoch_offset + self.current_epoch
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + epoch) * 1_000_003 + batch_idx
        )
        draws = torch.rand(len(self.model.modalities), batch, generator=generator)
        keep = (draws >= self.modality_dropout).to(self.device)
        return {m: keep[i] for i, m in enumerate(self.model.modalities)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = getattr(self.model, "head", None)
        head_weights = (
            [block.weight for block in head.blocks.values()] if isinstance(head, MNLFusion) else []
        )
        head_ids = {id(p) for p in head_weights}
        others = [p for p in self.model.parameters() if id(p) not in head_ids]
        return torch.optim.AdamW(
            [
                {"params": others, "weight_decay": self.weight_decay},
                {"params": head_weights, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
