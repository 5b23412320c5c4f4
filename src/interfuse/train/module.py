"""The PyTorch Lightning module: task loss + λ·Ω_p every step, no weight decay on the MNL head.

A complete ``LightningModule``: ``training_step``, ``validation_step``, ``test_step`` and
``predict_step`` on :data:`interfuse.data.batching.Batch` es, so it trains with your own
``pl.Trainer``, callbacks (e.g. ``EarlyStopping("val_loss")``) and loggers (CSV, TensorBoard, W&B):

    module = FusionModule(model, task.task)
    trainer = pl.Trainer(max_epochs=20, callbacks=[EarlyStopping("val_loss")],
                         logger=CSVLogger("logs"))
    trainer.fit(module, batch_loader(task.train, 128, shuffle=True),
                batch_loader(task.val, 1024, shuffle=False))

At the end of every validation (and test) epoch it logs ``val_<metric>`` (``test_<metric>``)
for the task's whole split (metrics of :func:`interfuse.metrics.compute_metrics`) and, for models
with built-in relevance, ``share/<term>`` and ``beta/<term>``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..data.batching import Batch
from ..fusion.mnl import MNLFusion
from ..metrics import compute_metrics, task_loss
from ..model import MultimodalModel


def _default_generator(device: torch.device) -> torch.Generator | None:
    """The default random generator of a CPU or CUDA device (``None`` for other devices)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return None


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
    ``(seed, e, i)`` for the global batch of all processes (each takes its own samples' drops,
    so distributed training drops what one process with the whole batch would), and the model's
    own random layers (dropout in encoders) draw from the
    device's default generator, seeded from the same triple and the process rank for that step
    and restored afterwards (the caller's random state is left as it was): a run is reproducible
    from its seed, and a resumed run draws exactly what the uninterrupted run drew.

    The training losses (``train_loss``, ``train_task_loss``, ``train_regularizer``) are logged
    once per epoch, at its last batch, as epoch means weighted by batch size — the values
    ``self.log(..., on_epoch=True)`` per step gives, summed in the same order and precision —
    so that Lightning's per-call logging machinery does not run every step. Where the number of
    batches is not known (a loader without ``len``) they are logged every step, as before.

    ``inputs_checked``: the training inputs were validated once as a whole
    (:meth:`MultimodalModel.check_data`, as :func:`~interfuse.train.fit` does), so training steps
    skip the model's per-batch scan for non-finite values (its other checks still run).
    Validation, test and prediction batches are scanned as before.
    """

    def __init__(
        self,
        model: MultimodalModel | nn.Module,
        task: str,
        lam: float = 1e-2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        modality_dropout: float = 0.0,
        seed: int = 0,
        epoch_offset: int = 0,
        regularize: bool | None = None,
        loss_weight: Tensor | None = None,
        metric_set: str = "default",
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
        self.metric_set = metric_set
        # class (or positive-label) weights of the task loss; a buffer so it follows the device
        self.register_buffer("loss_weight", loss_weight, persistent=False)
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}
        self.inputs_checked = False
        # Σ_steps n · (Ω, loss, task loss) and Σ n of the running epoch (see the class doc)
        self._epoch_sums: Tensor | None = None
        self._epoch_count = 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_sums is not None:  # an epoch cut short (max_steps, a stop): log its part
            self._log_epoch_means()

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.model(inputs).prediction

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        inputs, targets, masks = batch
        if self.modality_dropout > 0:
            dropped = self.dropout_masks(len(targets), batch_idx)
            masks = {m: keep & masks[m] if m in masks else keep for m, keep in dropped.items()}
        model = self.model
        options = {"masks": masks} if masks else {}
        with self._step_random(batch_idx):
            if self.inputs_checked and isinstance(model, MultimodalModel):
                with model.finite_inputs():  # scanned once as a whole (see the class doc)
                    prediction = model(inputs, **options).prediction
            else:
                prediction = model(inputs, **options).prediction
        loss_task = task_loss(self.task, prediction, targets, self.loss_weight)
        n = len(targets)
        loss = loss_task
        values = [loss, loss_task]
        if self.regularize:  # baselines have no Ω_p
            regulariser = self.model.regularizer()
            loss = loss_task + self.lam * regulariser
            values = [regulariser, loss, loss_task]
        self._log_training(values, n, batch_idx)
        return loss

    @property
    def _training_names(self) -> list[str]:
        """Names of the values :meth:`training_step` logs, in its order."""
        regulariser = ["train_regularizer"] if self.regularize else []
        return [*regulariser, "train_loss", "train_task_loss"]

    def _log_training(self, values: list[Tensor], n: int, batch_idx: int) -> None:
        """``train_regularizer`` (with Ω), ``train_loss``, ``train_task_loss``: accumulated as
        ``Σ n·value`` and logged once, at the epoch's last batch (see the class doc)."""
        names = self._training_names
        batches = self.trainer.num_training_batches if self._trainer is not None else math.inf
        if not math.isfinite(batches):  # the epoch's end is not known in advance: every step
            for name, value in zip(names, values):
                self.log(
                    name,
                    value,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=name == "train_loss",
                    batch_size=n,
                )
            return
        stacked = torch.stack([v.detach() for v in values])
        if stacked.dtype not in (torch.float32, torch.float64):  # as Lightning stores values
            stacked = stacked.to(torch.get_default_dtype())
        if batch_idx == 0 or self._epoch_sums is None:
            # Lightning's accumulator starts as a 0 of the default dtype
            self._epoch_sums = torch.zeros((), dtype=torch.get_default_dtype(), device=self.device)
            self._epoch_count = 0
        self._epoch_sums = self._epoch_sums + stacked * n
        self._epoch_count += n
        if batch_idx + 1 >= batches:
            self._log_epoch_means()

    def _log_epoch_means(self) -> None:
        """Log the accumulated means (weight 1 each) and start the next epoch's sums."""
        means = self._epoch_sums / self._epoch_count
        self._epoch_sums = None
        for name, mean in zip(self._training_names, means.unbind(0)):
            # one value of weight 1: Lightning's epoch mean of it is the value itself
            self.log(
                name,
                mean,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "train_loss",
                batch_size=1,
            )

    def _predict(self, batch: Batch) -> Tensor:
        inputs, _, masks = batch
        return self.model(inputs, **({"masks": masks} if masks else {})).prediction

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._outputs["val"].append((self._predict(batch).detach(), batch[1]))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._outputs["test"].append((self._predict(batch).detach(), batch[1]))

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._predict(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, split: str) -> None:
        """Metrics over the whole split (not averages of batch metrics), and the relevance."""
        outputs, self._outputs[split] = self._outputs[split], []
        if not outputs:
            return
        prediction = torch.cat([p for p, _ in outputs]).float().cpu()
        targets = torch.cat([t for _, t in outputs]).cpu()
        metrics = compute_metrics(self.task, prediction, targets, self.metric_set)
        self.log_dict(
            {f"{split}_{k}": v for k, v in metrics.items() if math.isfinite(v)},
            prog_bar=False,
            batch_size=len(targets),
        )
        if isinstance(self.model, MultimodalModel):
            relevance = self.model.relevance()
            self.log_dict({f"share/{t}": v for t, v in relevance.shares.items()})
            self.log_dict({f"beta/{t}": v for t, v in relevance.beta.items()})

    def _step_seed(self, batch_idx: int) -> int:
        """The seed of training step ``(epoch, batch_idx)`` of this run (within torch's 64-bit
        seeds for any seed of a run; unchanged below 2**63)."""
        epoch = self.epoch_offset + self.current_epoch
        return ((self.seed * 1_000_003 + epoch) * 1_000_003 + batch_idx) % (2**63)

    @contextlib.contextmanager
    def _step_random(self, batch_idx: int) -> Iterator[None]:
        """The default generator of the model's device (dropout layers draw from it) seeded for
        this step and process, and restored afterwards."""
        device = self.device
        rank = self.global_rank if self._trainer is not None else 0
        # a stream apart from the modality drops' generator (seeded by the plain step seed)
        seed = (self._step_seed(batch_idx) * 1_000_003 + 1 + rank) % (2**63)
        generator = _default_generator(device)
        if generator is None:  # another accelerator: fork every generator (~0.1 ms a step)
            with torch.random.fork_rng(device_type=device.type):
                torch.manual_seed(seed)
                yield
            return
        # one generator's state saved and restored: µs, where fork_rng + manual_seed take 0.1 ms
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            yield
        finally:
            generator.set_state(state)

    def dropout_masks(self, batch: int, batch_idx: int) -> dict[str, Tensor]:
        """Presence masks ``{m: bool (B,)}`` with each entry False with probability p.

        Drawn for the *global* batch of the step (``world_size × B`` samples, in the order in
        which the distributed sampler gives rank r the samples ``r·B … (r+1)·B − 1``), of which
        this process takes its own columns: P processes with batch B drop exactly what one
        process with batch P·B drops (one process: the draws are unchanged)."""
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        generator = torch.Generator().manual_seed(self._step_seed(batch_idx))
        draws = torch.rand(len(self.model.modalities), world * batch, generator=generator)
        draws = draws[:, rank * batch : (rank + 1) * batch]
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
            # one kernel for all ~30 small tensors instead of a per-tensor loop (the same update;
            # CPU support since torch 2.4)
            fused=_fused_adamw_supported(others + head_weights),
        )


def _fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether ``AdamW(fused=True)`` takes these parameters: floating point, on CPU or CUDA."""
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )
