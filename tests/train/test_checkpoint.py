"""Checkpoints: exact round trip of model and optimiser, corruption and truncation detected."""

import pytest
import torch

from interfuse.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def trained_pieces():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model, opt = trained_pieces()
    path = save_checkpoint(
        tmp_path / "c.safetensors", model.state_dict(), {"epoch": 3}, opt.state_dict()
    )
    state, header, optim_state = load_checkpoint(path)
    assert header["epoch"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    restored.load_state_dict(optim_state)
    assert restored.param_groups[0]["lr"] == 0.01
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(restored.state[p][name], opt.state[p][name])
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]  # no temp files left


def test_flipped_byte_is_detected(tmp_path):
    model, _ = trained_pieces()
    path = save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), {})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    model, _ = trained_pieces()
    path = save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), {})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(garbage)):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
