"""The PyTorch Lightning wrapper: task loss + λ·Ω_p every step, no weight decay on the MNL head."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from ..model import MultimodalModel
from .metrics import task_loss


class FusionModule(pl.LightningModule):
    """Trains a :class:`MultimodalModel` with ``loss = task loss + lam · Ω_p(W)`` (SPEC §3).

    AdamW updates the encoders, interaction factors and the head's bias with ``weight_decay``; the
    head's weight blocks get no weight decay, since Ω_p already regularises them.
    """

    def __init__(
        self,
        model: MultimodalModel,
        task: str,
        lam: float = 5e-2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.lam = lam
        self.lr = lr
        self.weight_decay = weight_decay

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.model(inputs).prediction

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        prediction = self.model(inputs).prediction
        loss_task = task_loss(self.task, prediction, targets)
        regulariser = self.model.regularizer()
        loss = loss_task + self.lam * regulariser
        n = len(targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train_task_loss", loss_task, on_step=False, on_epoch=True, batch_size=n)
        self.log("train_regularizer", regulariser, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head_weights = [block.weight for block in self.model.head.blocks.values()]
        head_ids = {id(p) for p in head_weights}
        others = [p for p in self.model.parameters() if id(p) not in head_ids]
        return torch.optim.AdamW(
            [
                {"params": others, "weight_decay": self.weight_decay},
                {"params": head_weights, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
