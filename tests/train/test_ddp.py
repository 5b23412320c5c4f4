"""Distributed data-parallel training on CPU with gloo (Lightning's DDP strategy).

Every run here is a separate process (``ddp_worker.py``, or the command line), as on a cluster;
the runs of one comparison start together to keep the wall time down.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interfuse.checkpoint import load_checkpoint
from interfuse.data.batching import EpochBatchSampler
from interfuse.run import BEST, LAST, RESULTS
from interfuse.train import TrainingState

WORKER = Path(__file__).with_name("ddp_worker.py")
README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = [
    "--epochs",
    "1",
    "--restarts",
    "0",
    "--rank",
    "2",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


def readme_commands() -> list[list[str]]:
    """The single-machine commands of the README's "Scaling out" section."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- scaling-commands: [^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert found, "README: the tested scaling commands block is missing"
    lines = [line.split("#")[0] for line in found.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("interfuse ")]


def launch_readme(folder: Path) -> subprocess.Popen:
    """The README commands in ``folder`` (on a small data.npz), one after the other."""
    rng = np.random.default_rng(0)
    n = 300
    np.savez(
        folder / "data.npz",
        a=rng.normal(size=(n, 4)),
        b=rng.normal(size=(n, 3)),
        labels=rng.integers(0, 2, n),
    )
    commands = []
    for command in readme_commands():
        argv = [sys.executable, "-m", "interfuse", *command[1:]]
        commands.append(shlex.join(argv + (SMALL if command[1] == "train" else [])))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    return subprocess.Popen(
        ["bash", "-c", " && ".join(commands)],
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **(env or {})}
    environment.setdefault("MASTER_PORT", str(free_port()))
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


def states(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {int(f.stem[4:]): load_file(str(f)) for f in sorted(folder.glob("rank*.safetensors"))}


def relevance(folder: Path) -> dict[int, dict]:
    return {int(f.stem[4:]): json.loads(f.read_text()) for f in sorted(folder.glob("rank*.json"))}


def identical_ranks(dump: Path) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict]]:
    """Both ranks' dumped states and relevance, asserted identical."""
    ranks, shares = states(dump), relevance(dump)
    assert sorted(ranks) == [0, 1]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert shares[0] == shares[1]
    return ranks, shares


def largest_difference(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str
) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Started together: one process with batch 64; two processes with batch 32 and
    --sync-stats (then the one-step check in their process group); the same on two "nodes"
    (separate launches, NODE_RANK 0/1, loopback), SIGTERMed on rank 1 when the second epoch
    starts. Then the two nodes resume the interrupted run."""
    root = tmp_path_factory.mktemp("ddp")
    port = free_port()

    def nodes(*extra: str) -> dict[str, subprocess.Popen]:
        return {
            f"node{rank}": launch(
                str(root / "nodes"),
                str(root / "nodes-dump"),
                "--batch",
                "32",
                "--num-nodes",
                "2",
                "--sync-stats",
                *extra,
                env={"NODE_RANK": str(rank), "MASTER_PORT": str(port)},
            )
            for rank in (0, 1)
        }

    (root / "readme").mkdir()
    started = {
        "readme": launch_readme(root / "readme"),
        "single": launch(str(root / "single"), str(root / "single-dump"), "--batch", "64"),
        "ddp": launch(
            str(root / "ddp"),
            str(root / "ddp-dump"),
            "--batch",
            "32",
            "--devices",
            "2",
            "--sync-stats",
            "--step-check",
            str(root / "step.json"),
        ),
        "finetune": launch(
            str(root / "finetune"),
            str(root / "finetune-dump"),
            "--devices",
            "2",
            "--epochs",
            "2",
            "--finetune",
        ),
        **nodes("--term-at", "1"),
    }
    # the interrupted nodes first, so that their resume runs while the others still train
    codes = {name: finish(started.pop(name)) for name in ("node0", "node1")}
    port = free_port()
    resumed = nodes("--resume")
    codes.update({name: finish(process) for name, process in started.items()})
    (root / "codes.json").write_text(json.dumps({k: c for k, (c, _) in codes.items()}))
    for name, (code, err) in codes.items():
        assert code == (143 if name.startswith("node") else 0), f"{name}: {code}\n{err[-3000:]}"
    for name, process in resumed.items():
        code, err = finish(process)
        assert code == 0, f"{name}: {code}\n{err[-3000:]}"
    return root


def test_sampler_splits_each_global_batch_between_ranks() -> None:
    single = list(EpochBatchSampler(50, 8, shuffle=True, seed=3))
    ranks = [
        list(EpochBatchSampler(50, 4, shuffle=True, seed=3, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 6
    for step, batch in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), batch)
    used = torch.cat([b for r in ranks for b in r])
    assert len(used) == len(set(used.tolist())) == 48  # once each; the incomplete batch dropped
    # evaluation order: contiguous, unpadded parts covering every sample exactly once
    parts = [
        torch.cat(list(EpochBatchSampler(11, 4, False, rank=r, world_size=3))) for r in range(3)
    ]
    assert torch.equal(torch.cat(parts), torch.arange(11))
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        EpochBatchSampler(10, 4, True, rank=2, world_size=2)


def test_sync_stats_step_equals_one_process_with_the_union_batch(runs: Path) -> None:
    """One step: 2 gloo processes × 32 samples with sync_stats = 1 process × 64 samples
    (predictions, every gradient, every running statistic), with and without presence masks;
    per-process moments differ (so the comparison can fail)."""
    diffs = json.loads((runs / "step.json").read_text())
    for masks in (True, False):
        assert diffs[f"sync=True,masks={masks}"] < 1e-5
        assert diffs[f"sync=False,masks={masks}"] > 1e-2


def test_two_processes_train_as_one_with_the_double_batch(runs: Path) -> None:
    """The weights that decide predictions and relevance agree with the single process up to
    float noise; the ranks agree exactly (weights, running statistics, relevance)."""
    ranks, shares = identical_ranks(runs / "ddp-dump")
    (single,) = states(runs / "single-dump").values()
    # Adam turns float noise in the gradients of parameters the loss is invariant to (encoder
    # biases before centring) into lr-sized steps, so those are not compared; the head is.
    assert largest_difference(ranks[0], single, "head.") < 1e-3
    (single_shares,) = relevance(runs / "single-dump").values()
    for term, share in single_shares["shares"].items():
        assert abs(shares[0]["shares"][term] - share) < 1e-5
    # only rank 0 wrote the run folder, once per epoch
    history = (runs / "ddp" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
    assert json.loads((runs / "ddp" / RESULTS).read_text())["epochs_run"] == 3


def test_the_fine_tune_starts_every_rank_from_rank_0s_selected_model(runs: Path) -> None:
    """Two processes: both ranks take the same decisions (the restart wins, the fine-tune
    follows, validation selects it) and train in step (identical weights and relevance at the
    end). (DDP also copies rank 0's weights into every rank when the fine-tune's trainer wraps
    the model, so this does not tell who sent the selected model.)"""
    result = json.loads((runs / "finetune" / RESULTS).read_text())
    assert result["attempts"] == 3 and result["selected_attempt"] == "fine-tune"
    identical_ranks(runs / "finetune-dump")


def test_two_nodes_sigterm_on_one_rank_stops_both_and_resume_continues_exactly(
    runs: Path,
) -> None:
    """Two node processes on localhost: SIGTERM on rank 1 stops both with status 143 after one
    complete epoch; resumed, they end where two local processes that were never interrupted
    end (the same global batches, the same synchronised statistics)."""
    codes = json.loads((runs / "codes.json").read_text())
    assert codes["node0"] == codes["node1"] == 143  # 128 + SIGTERM, the command line's status
    resumed, uninterrupted = states(runs / "nodes-dump"), states(runs / "ddp-dump")
    assert sorted(resumed) == [0, 1]
    for key in uninterrupted[0]:
        assert torch.equal(resumed[0][key], resumed[1][key]), key
        assert torch.allclose(resumed[0][key], uninterrupted[0][key], atol=1e-6), key
    _, header, _ = load_checkpoint(runs / "nodes" / LAST)
    state = TrainingState.from_dict(header["state"])
    assert state.epoch == 3 and len(state.history) == 3
    assert (runs / "nodes" / BEST).exists() and (runs / "nodes" / RESULTS).exists()


def test_readme_single_machine_commands_run(runs: Path) -> None:
    """The README's convert + 2-process train commands (small data, one epoch)."""
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["interfuse", "convert"], ["interfuse", "train"]]
    assert "--devices" in commands[1] and "--sync-stats" in commands[1]
    folder = runs / "readme"
    assert (folder / "big" / "manifest.json").exists()
    results = json.loads((folder / "runs" / "ddp" / RESULTS).read_text())
    assert results["config"]["sync_stats"] is True
    assert results["epochs_run"] == 1


def test_a_rank_0_failure_to_read_the_selected_model_reaches_every_rank(tmp_path: Path) -> None:
    """Rank 0 cannot read ``best.safetensors`` for the fine-tune (the worker overwrites it with
    garbage when the restart ends). Rank 1, waiting for that model in a broadcast, raises the
    same one-line error at once; it used to wait for as long as rank 0's process lived (forever
    for a caller that catches the error and goes on, which the worker imitates for 60 s) and
    then fail with gloo's "Connection closed by peer"."""
    code, err = finish(
        launch(
            str(tmp_path / "run"),
            str(tmp_path / "dump"),
            "--devices",
            "2",
            "--epochs",
            "2",
            "--finetune",
            "--corrupt-best",
        )
    )
    lines = sorted(re.findall(r"rank \d: [^\n]*?(?=rank \d: |\n|$)", err))
    message = f"CheckpointError: checkpoint {tmp_path / 'run' / BEST} is corrupt or truncated"
    assert code == 1, err[-3000:]
    assert [line[:7] for line in lines] == ["rank 0:", "rank 1:"], err[-3000:]
    assert all(message in line for line in lines), lines
