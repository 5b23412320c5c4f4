"""Checkpoints: safetensors files with a JSON header, written atomically and verified on load.

One file holds the model ``state_dict`` (``model.*``), the optimiser's tensors (``optim.*``) and,
in the safetensors metadata, a JSON document with the model configuration, the optimiser's
non-tensor state, the training state and a SHA-256 of all tensor bytes. Nothing is ever
unpickled. A file is replaced only by a complete new one (temp file + rename), so a killed run
leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..io import atomic_write_bytes

FORMAT = "interfuse-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the model it is loaded into."""


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model_state: Mapping[str, torch.Tensor],
    header: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint. ``header`` must be JSON-serialisable."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    meta: dict[str, Any] = {"format": FORMAT, **header}
    if optimizer_state is not None:
        optim_tensors, optim_meta = _split_optimizer_state(optimizer_state)
        tensors.update(optim_tensors)
        meta["optimizer"] = optim_meta
    meta["sha256"] = _digest(tensors)
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata={"interfuse": json.dumps(meta)}))
    return path


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Read and verify a checkpoint: ``(model_state, header, optimizer_state or None)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from None
    try:
        header = json.loads(metadata["interfuse"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path} has no interfuse header; is it ours?") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has unknown format {header.get('format')!r}")
    if _digest(tensors) != header.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match their hash")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer = None
    if "optimizer" in header:
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer = _join_optimizer_state(optim_tensors, header.pop("optimizer"))
    return model_state, header, optimizer


def _split_optimizer_state(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` → (tensors keyed ``optim.<param>.<name>``, JSON-safe rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
