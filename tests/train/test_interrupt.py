"""A real training process killed with SIGTERM mid-epoch resumes to the uninterrupted result."""

import os
import signal
import subprocess
import sys
import time

import torch

from interfuse.checkpoint import load_checkpoint

ARGS = [
    "--probs",
    "0.9,0.0",
    "--n",
    "4000",
    "--epochs",
    "5",
    "--patience",
    "10",
    "--batch-size",
    "32",
    "--interactions",
    "none",
    "--quiet",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(out, *extra):
    command = [sys.executable, "-m", "interfuse", "train", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def completed_epochs(out):
    path = out / "last.safetensors"  # written atomically (temporary file, then rename)
    if not path.exists():
        return 0
    return load_checkpoint(path)[1]["state"]["epoch"]


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    process = train(killed)
    deadline = time.monotonic() + 120
    while completed_epochs(killed) < 1:  # wait until the first epoch is saved ...
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not finish an epoch in time"
        time.sleep(0.05)
    time.sleep(0.3)  # ... and then some way into the second one
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "--resume" in stderr
    assert not (killed / "results.json").exists()
    epoch_at_kill = completed_epochs(killed)
    assert 1 <= epoch_at_kill < 5

    resumed = train(killed, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    straight = train(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.communicate()
    for name in ("last.safetensors", "best.safetensors"):
        a, _, _ = load_checkpoint(killed / name)
        b, _, _ = load_checkpoint(tmp_path / "straight" / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
