"""One training process for ``tests/train/test_ddp.py`` (run as a script, never collected).

``python ddp_worker.py OUT DUMP --devices D --num-nodes K --batch B [--sync-stats] [--resume]
[--term-at EPOCH] [--precision P]`` fits a tiny synthetic task with :func:`interfuse.fit` and,
when training ends, writes this rank's model state (``DUMP/rank<r>.safetensors``) and relevance
(``DUMP/rank<r>.json``). ``--term-at E``: rank 1 (rank 0 when alone) sends itself SIGTERM when
epoch E (0-based) starts. Exits with the status the command line would use for an interrupt.

``--finetune``: a first attempt at lr 1e-9, so that the restart wins and the fine-tune runs.
``--corrupt-best`` (with it): rank 0 overwrites ``best.safetensors`` with garbage when the restart
ends, so that reading the selected model for the fine-tune fails on rank 0 only.

``--step-check OUT.json`` (2 processes): after training, in the same gloo process group, one
training step of an MNL model on a batch of 2b samples in one process against the two halves on
the two ranks (with and without ``sync_stats``, with and without presence masks); rank 0 writes
the largest differences of predictions, every gradient and every running statistic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from interfuse.data import TaskData
from interfuse.data.registry import load_motif
from interfuse.fusion import set_sync_stats
from interfuse.metrics import task_loss
from interfuse.models import build_model, model_spec
from interfuse.train import TrainConfig, TrainingInterrupted, fit

EPOCHS = 3


class Dump(pl.Callback):
    """Writes the model of this rank at the end of training; optionally SIGTERMs one rank."""

    def __init__(self, folder: Path, term_at: int | None, corrupt: Path | None = None) -> None:
        self.folder = folder
        self.term_at = term_at
        self.corrupt = corrupt  # the run folder whose best.safetensors rank 0 breaks
        self.ends = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        victim = 1 if trainer.world_size > 1 else 0
        if trainer.current_epoch == self.term_at and trainer.global_rank == victim:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ends += 1
        if self.corrupt is not None and self.ends == 2 and trainer.is_global_zero:
            # after the restart, before the fine-tune: rank 0 fails to read the selected model
            (self.corrupt / "best.safetensors").write_bytes(b"not a checkpoint")
        rank = trainer.global_rank
        model = pl_module.model
        state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(self.folder / f"rank{rank}.safetensors"))
        relevance = model.relevance()
        (self.folder / f"rank{rank}.json").write_text(
            json.dumps({"beta": relevance.beta, "shares": relevance.shares})
        )


STEP_BATCH = 32  # per process; the single process sees 2 * STEP_BATCH


def _task() -> TaskData:
    """Small motif data; encoders without dropout, whose draws differ between one process and
    two (the equivalence under test is that of the batch statistics)."""
    task = load_motif(n=320, length=40, seed=0)
    encoders = {m: {**spec, "dropout": 0.0} for m, spec in task.encoders.items()}
    return dataclasses.replace(task, encoders=encoders)


def _step_setup() -> tuple:
    task = _task()
    shapes = {m: list(x.shape[1:]) for m, x in task.train.inputs.items()}
    spec = model_spec(
        "intense", task.encoders, TrainConfig(rank=3), task.num_outputs, input_shapes=shapes
    )
    x, y, _ = task.train[torch.arange(2 * STEP_BATCH)]
    generator = torch.Generator().manual_seed(1)
    masks = {m: torch.rand(len(y), generator=generator) > 0.3 for m in ("m0", "m2")}
    return spec, x, y, masks


def _step(model: torch.nn.Module, x: dict, y: torch.Tensor, masks: dict | None) -> dict:
    """Prediction, loss, gradients and running statistics after one training step."""
    model.train()
    prediction = model(x, masks=masks).prediction
    loss = task_loss("classification", prediction, y, None)
    loss.backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    out = {"prediction": prediction.detach(), "loss": loss.detach().reshape(1)}
    out.update({f"grad:{k}": p.grad.clone() for k, p in inner.named_parameters()})
    out.update({f"buffer:{k}": b.clone().float() for k, b in inner.named_buffers()})
    return out


def step_check(path: Path) -> None:
    """In a running 2-process group: one step on this rank's half of the batch, against one
    process computing the step on the whole batch; rank 0 writes the largest differences."""
    rank = dist.get_rank()
    spec, x, y, masks = _step_setup()
    reference = {}
    for masked in (True, False):  # one process, the whole batch (no collectives)
        model = build_model(spec, seed=0)
        reference[masked] = _step(model, x, y, masks if masked else None)
    half = slice(rank * STEP_BATCH, (rank + 1) * STEP_BATCH)
    x = {m: v[half] for m, v in x.items()}
    diffs = {}
    for sync in (True, False):
        for masked in (True, False):
            model = build_model(spec, seed=0)
            set_sync_stats(model, sync)
            # gradients averaged over the processes, as Lightning's DDP strategy does
            ddp = DistributedDataParallel(model)
            got = _step(ddp, x, y[half], {m: v[half] for m, v in masks.items()} if masked else None)
            worst = 0.0
            for key, value in got.items():
                if key == "loss":  # this process's mean loss; the reference is over 2b
                    continue
                expected = reference[masked][key]
                expected = expected[half] if key == "prediction" else expected
                worst = max(worst, float((value - expected).abs().max()))
            diffs[f"sync={sync},masks={masked}"] = worst
    if rank == 0:
        path.write_text(json.dumps(diffs))


def failed(dump: Path, rank: int, error: Exception) -> None:
    """``rank r: <type>: <message>`` on stderr, then exit 1. Rank 0 first waits (up to 60 s) for
    rank 1 to fail too, as a caller that catches the error and goes on would keep it alive: a
    rank 1 left waiting for rank 0 in a collective then waits as long."""
    # one write of the whole line: both ranks share the pipe, and print() writes the text and
    # its newline separately, so two ranks' lines could run together
    sys.stderr.write(f"rank {rank}: {type(error).__name__}: {error}\n")
    sys.stderr.flush()
    dump.mkdir(parents=True, exist_ok=True)
    (dump / f"rank{rank}.failed").touch()
    deadline = time.monotonic() + 60
    while rank == 0 and not (dump / "rank1.failed").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("dump", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sync-stats", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--term-at", type=int, default=None)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--step-check", type=Path, default=None)
    parser.add_argument(
        "--corrupt-best", action="store_true", help="(with --finetune) rank 0 breaks best"
    )
    parser.add_argument(
        "--finetune", action="store_true", help="lr 1e-9: a restart wins, then the fine-tune runs"
    )
    args = parser.parse_args()
    task = _task()
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        sync_stats=args.sync_stats,
        rank=4,
        patience=10,
        seed=0,
        # drawn for the global batch: the two processes drop what the single one drops
        modality_dropout=0.3,
        **({"restarts": 1, "lr": 1e-9} if args.finetune else {"restarts": 0}),
    )
    distributed = args.devices * args.num_nodes > 1
    try:
        fit(
            task,
            config,
            args.out,
            resume=args.resume,
            progress=False,
            log=lambda line: None,
            callbacks=[Dump(args.dump, args.term_at, args.out if args.corrupt_best else None)],
            accelerator="cpu",
            precision=args.precision,
            threads=1,
            devices=args.devices,
            num_nodes=args.num_nodes,
            strategy="ddp" if distributed else "auto",
        )
    except TrainingInterrupted as error:
        print(error, file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        if not args.corrupt_best:
            raise
        failed(args.dump, int(os.environ.get("LOCAL_RANK", "0")), error)
    if args.step_check is not None:
        step_check(args.step_check)


if __name__ == "__main__":
    main()
