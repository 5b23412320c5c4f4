"""Checkpoints: safetensors files with a JSON header, written atomically and verified on load.

One file holds named groups of tensors (``model.*`` for the ``state_dict``, ``optim.*`` for the
optimiser, and any extra group such as ``prep.*`` for preprocessing statistics) and, in the
safetensors metadata, a JSON document (the header: model description, optimiser's non-tensor
state, training state, …) with a SHA-256 over the header *and* all tensor bytes, so editing
either is detected. Nothing is ever unpickled. A file is replaced only by a complete new one
(temp file + rename), so a killed run leaves either the old or the new checkpoint, never half of
one. :func:`read_header` reads the shapes without loading any tensor, so that sizes can be
checked before anything is allocated.
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

from .io import atomic_write_bytes

FORMAT = "interfuse-checkpoint/2"
OLD_FORMATS = ("interfuse-checkpoint/1",)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the model it is loaded into."""


def _digest(tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
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
    extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """Atomically write a checkpoint. ``header`` must be JSON-serialisable.

    ``extra`` adds groups of tensors (``{"prep": {...}}`` is stored as ``prep.*``).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    for group, values in (extra or {}).items():
        if group in ("model", "optim"):
            raise ValueError(f"extra tensor group {group!r} is reserved")
        tensors.update({f"{group}.{k}": v.detach().cpu().contiguous() for k, v in values.items()})
    meta: dict[str, Any] = {"format": FORMAT, **header}
    if optimizer_state is not None:
        optim_tensors, optim_meta = _split_optimizer_state(optimizer_state)
        tensors.update(optim_tensors)
        meta["optimizer"] = optim_meta
    meta["sha256"] = _digest(tensors, meta)
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata={"interfuse": json.dumps(meta)}))
    return path


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The unverified header and the shape of every tensor, without loading any tensor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from None
    try:
        header = json.loads(metadata["interfuse"])
        if not isinstance(header, dict):
            raise TypeError
    except (KeyError, json.JSONDecodeError, TypeError):
        raise CheckpointError(f"checkpoint {path} has no interfuse header; is it ours?") from None
    except RecursionError:  # brackets nested beyond the stack: no header of ours
        raise CheckpointError(f"checkpoint {path} is corrupt (its header nests too deep)") from None
    if header.get("format") in OLD_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} was made by an older version of interfuse (format "
            f"{header.get('format')!r}, this version reads {FORMAT!r}); retrain the run"
        )
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has unknown format {header.get('format')!r}")
    return header, shapes


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Read and verify a checkpoint: ``(model_state, header, optimizer_state or None)``.

    Extra tensor groups are in ``header["tensors"][group]`` (e.g. ``"prep"``).
    """
    path = Path(path)
    read_header(path)  # format and header checks before the tensors are read
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from None
    header = json.loads(metadata["interfuse"])
    claimed = header.pop("sha256", None)
    if _digest(tensors, header) != claimed:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or was edited: its header and tensors do not match "
            f"their SHA-256"
        )
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    model_state = groups.pop("model", {})
    optim_tensors = {f"optim.{k}": v for k, v in groups.pop("optim", {}).items()}
    optimizer = None
    if "optimizer" in header:
        optimizer = _join_optimizer_state(optim_tensors, header.pop("optimizer"))
    header["tensors"] = groups
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
