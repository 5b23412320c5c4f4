"""Device-agnostic training: bf16 mixed precision on CPU, and GPU checks (skipped without CUDA)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from interfuse.data.registry import load_motif
from interfuse.train import TrainConfig, fit

BF16_SHARE_TOLERANCE = 1e-3
"""Largest difference of a relevance share between bf16-mixed and fp32 training (shares sum to
1; measured 9.6e-6 on this task without restarts, 2026-11-30: see docs/scaling.md)."""


def _train(out: Path, precision: str, accelerator: str = "cpu"):  # noqa: ANN202
    task = load_motif(n=320, length=40, seed=0)
    config = TrainConfig(epochs=2, batch_size=32, rank=4, seed=0, restarts=0)
    return fit(
        task,
        config,
        out,
        progress=False,
        log=lambda line: None,
        accelerator=accelerator,
        precision=precision,
        threads=1,
    )


def test_bf16_mixed_on_cpu_agrees_with_fp32(tmp_path: Path) -> None:
    full = _train(tmp_path / "fp32", "32-true")
    half = _train(tmp_path / "bf16", "bf16-mixed")
    assert full.relevance is not None and half.relevance is not None
    differences = {
        t: abs(full.relevance.shares[t] - half.relevance.shares[t]) for t in full.relevance.shares
    }
    assert max(differences.values()) < BF16_SHARE_TOLERANCE, differences
    assert differences != dict.fromkeys(differences, 0.0)  # bf16 really ran


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_gpu_matches_cpu(tmp_path: Path) -> None:
    cpu = _train(tmp_path / "cpu", "32-true")
    gpu = _train(tmp_path / "gpu", "32-true", accelerator="cuda")
    assert cpu.relevance is not None and gpu.relevance is not None
    for term, share in cpu.relevance.shares.items():
        assert abs(gpu.relevance.shares[term] - share) < 1e-3, term


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "bogus"}, "cannot train with these device settings .*invalid strategy"),
        # an accelerator whose package is missing was an internal error (exit 70):
        # ModuleNotFoundError: Requirement 'torch_xla>=1.13' not met
        ({"accelerator": "tpu"}, "cannot train with these device settings .*torch_xla"),
        ({"devices": 0}, "devices must be an integer >= 1, got 0"),
        ({"num_nodes": True}, "num_nodes must be an integer >= 1, got True"),
    ],
)
def test_bad_device_settings_are_one_line_errors(tmp_path: Path, options, message) -> None:  # noqa: ANN001
    task = load_motif(n=120, length=20, seed=0)
    with pytest.raises(ValueError, match=message):
        fit(task, TrainConfig(epochs=1), tmp_path / "run", progress=False, **options)
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


@pytest.mark.parametrize("dropout", [0.3, 0.0])
def test_compile_says_which_training_steps_it_compiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dropout: float
) -> None:
    """The compiled step has no masks: with modality dropout no step of the first attempt is
    compiled, and fit says so once; without dropout every training step is compiled."""
    from interfuse import model as model_module

    calls = []
    original = model_module.MultimodalModel._compiled_step

    def counted(self, embeddings):  # noqa: ANN001, ANN202
        calls.append(len(next(iter(embeddings.values()))))
        return original(self, embeddings)

    # no compiler: the compiled step falls back to eager with its own warning (tested in
    # tests/test_model.py), so this test does not spend tens of seconds compiling
    monkeypatch.setattr(model_module, "compiler_problem", lambda: "no C++ compiler found (test)")
    monkeypatch.setattr(model_module.MultimodalModel, "_compiled_step", counted)
    task = load_motif(n=160, length=20, seed=0)
    config = TrainConfig(
        epochs=1, batch_size=32, rank=4, seed=0, restarts=0, modality_dropout=dropout, compile=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, config, tmp_path / "run", progress=False, log=lambda line: None, threads=1)
    notes = [str(w.message) for w in caught if "compiles only" in str(w.message)]
    if dropout:
        assert notes == [
            "compile=True (--compile) compiles only training batches without missing modalities: "
            "modality dropout 0.3 masks every batch of the first attempt (and of a fine-tune), "
            "which therefore run eagerly; restarts train without dropout and are compiled; set "
            "modality_dropout=0 (--modality-dropout 0) to compile every step"
        ]
        assert calls == []
    else:
        assert notes == []
        assert calls and len(calls) == len(task.train) // 32  # every training step
