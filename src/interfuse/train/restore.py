"""Bring a finished run back: its trained model and the data it was trained on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..data.task import TaskData
from .checkpoint import load_checkpoint
from .config import build_model


def rebuild_task(config: Mapping[str, Any]) -> TaskData:
    """The run's :class:`~interfuse.data.task.TaskData`, rebuilt from ``results.json``'s
    configuration: ``"load": {"dataset": name, "options": {...}}`` (a registered dataset, loaded
    with :func:`interfuse.data.registry.load_dataset`), or, for synthetic runs, the generator
    settings under ``"synthetic"`` and the split under ``"split"``. Raises ``ValueError`` when
    the configuration cannot rebuild the data."""
    from ..data.synthetic import make_synthetic
    from ..data.task import synthetic_task

    load = config.get("load")
    if isinstance(load, Mapping) and "dataset" in load:  # a registered dataset and its options
        from ..data.registry import load_dataset

        return load_dataset(str(load["dataset"]), **dict(load.get("options") or {}))
    generator = config.get("synthetic")
    if not isinstance(generator, Mapping):
        raise ValueError(
            f"cannot rebuild the data of this run (dataset {config.get('dataset')!r}): its "
            "results.json config has neither loader settings ('load': {'dataset', 'options'}) "
            "nor synthetic generator settings ('synthetic'); synthetic runs made with this "
            "version store them. Otherwise call "
            "interfuse.explain.posthoc.explain_model(model, task.test, task.task, task.train) "
            "from Python"
        )
    pair = generator.get("xor_pair")
    data = make_synthetic(
        generator["probs"],
        xor_pair=None if pair is None else (int(pair[0]), int(pair[1])),
        xor_prob=float(generator.get("xor_prob", 1.0)),
        n=int(generator["n"]),
        length=int(generator["length"]),
        motif_length=int(generator["motif_length"]),
        seed=generator.get("seed"),
    )
    if "motifs" in config and list(data.motifs) != list(config["motifs"]):
        raise ValueError(
            f"the regenerated data have motifs {list(data.motifs)}, the run used "
            f"{config['motifs']}: the generator changed since the run was trained"
        )
    split = config.get("split") or {}
    return synthetic_task(
        data,
        seed=int(split.get("seed", config.get("seed", 0))),
        fractions=tuple(split.get("fractions", (0.7, 0.15, 0.15))),
        name=str(config.get("dataset", "motif")),
    )


def load_trained_model(
    run_dir: str | Path, checkpoint: str = "best.safetensors"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its checkpoint header and load the weights (eval mode)."""
    run_dir = Path(run_dir)
    state, header, _ = load_checkpoint(run_dir / checkpoint)
    if "model" not in header:
        raise ValueError(f"{run_dir / checkpoint} has no model description in its header")
    model = build_model(header["model"])
    model.load_state_dict(state)
    return model.eval(), header
