"""Accuracy suite: our model vs fusion baselines and the best unimodal model, same protocol.

Every model is trained by ``interfuse.train.fit`` with the same ``TrainConfig`` (same
encoders from the task, same optimiser, epochs, early stopping on validation, seeds) and only
``TrainConfig.model`` (and ``interactions``) changing:

* ``intense``: our model with pairwise interactions (IterBN + vBN, MNL head);
* ``mnl``: our model without interactions;
* ``early``, ``late``, ``tfn``, ``lmf``: the baselines of ``interfuse.baselines``;
* ``best unimodal``: our model trained on one modality's data only (a ``TaskData`` holding just
  that modality), for every modality; per seed the modality with the best *validation* accuracy
  is picked and its *test* accuracy reported.

Data: two synthetic configurations (the demo's motif data and the mixed motif + XOR data) and
``mfeat`` (UCI multiple features, via ``interfuse.data.registry.load_dataset``). The baselines and
the registry are optional: what is missing is detected at start and reported as skipped.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
import traceback
from typing import Any

from interfuse.models import MODELS as REGISTERED_MODELS

from ._common import (
    environment,
    fmt,
    load_average,
    markdown_table,
    mean_std,
    pm,
    publish,
    quiet_lightning,
    set_threads,
    train_defaults,
)

SUITE = "accuracy"

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"seeds": 3, "n": 3000, "epochs": 20, "mfeat_epochs": 50},
    "quick": {"seeds": 2, "n": 800, "epochs": 3, "mfeat_epochs": 3},
    "tiny": {"seeds": 1, "n": 160, "epochs": 1, "mfeat_epochs": 1, "synthetic": ["motif4"]},
}

MODELS = tuple(REGISTERED_MODELS.names())
"""Every registered model (``interfuse.models.MODELS``); a new baseline joins the table."""
MODEL_TITLES = {
    **{name: f"{name}: {REGISTERED_MODELS.get(name).summary}" for name in MODELS},
    "intense": "ours (pairs, IterBN+vBN)",
    "mnl": "ours, no interactions (MNL)",
    "unimodal": "best unimodal (ours on 1 modality, picked on val)",
}


def _motif(n: int, seed: int) -> Any:
    from interfuse.data import make_motif_data

    return make_motif_data([0.9, 0.6, 0.3, 0.0], n=n, seed=seed)


def _mixed(n: int, seed: int) -> Any:
    from interfuse.data import make_synthetic

    return make_synthetic([0.5, 0.0, 0.0, 0.0], xor_pair=(1, 2), xor_prob=0.8, n=n, seed=seed)


SYNTHETIC = {
    "motif4": ("motif (demo), p = (0.9, 0.6, 0.3, 0)", _motif),
    "mixed": ("mixed: m0 p = 0.5, XOR m1*m2 q = 0.8, m3 noise", _mixed),
}


def detect() -> dict[str, Any]:
    """What the library offers right now: the registered models and the data registry."""
    found: dict[str, Any] = {"messages": [], "models": list(MODELS), "model_field": True}
    try:
        registry = importlib.import_module("interfuse.data.registry")
        found["registry"] = registry
    except ImportError as error:
        found["registry"] = None
        found["messages"].append(f"interfuse.data.registry not importable ({error}): mfeat skipped")
    return found


def load_mfeat(registry: Any, seed: int) -> Any:
    """``registry.load_dataset("mfeat")`` (with ``seed=`` when the function takes one)."""
    load = registry.load_dataset
    try:
        parameters = inspect.signature(load).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_seed = "seed" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
    return load("mfeat", seed=seed) if takes_seed else load("mfeat")


TFN_PRODUCT_BUDGET = 2**14
"""TFN's fused tensor has (k+1)^M features; k (= TrainConfig.rank, default 8) is lowered until it
fits this budget (mfeat: 6 views, 9^6 = 531,441 features at k = 8, ~40 s per epoch here)."""


def tfn_rank(num_modalities: int, rank: int = 8) -> int:
    while rank > 1 and (rank + 1) ** num_modalities > TFN_PRODUCT_BUDGET:
        rank -= 1
    return rank


def make_config(
    model: str, epochs: int, seed: int, model_field: bool, num_modalities: int = 2
) -> Any:
    from interfuse.train import TrainConfig

    kwargs: dict[str, Any] = {"epochs": epochs, "seed": seed}
    if model == "tfn":
        kwargs["rank"] = tfn_rank(num_modalities, TrainConfig().rank)
    if model_field:
        kwargs["model"] = model
    elif model == "mnl":
        kwargs["interactions"] = "none"
    return TrainConfig(**kwargs)


def _short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:300]


def run_dataset(
    name: str,
    title: str,
    tasks: list[Any],
    found: dict[str, Any],
    epochs: int,
) -> dict[str, Any]:
    """Train every available model on every seed's task; skip a model at its first failure."""
    from .training import single_modality, train_once

    models = list(found["models"])
    results: dict[str, Any] = {m: {"runs": [], "skipped": None} for m in [*models, "unimodal"]}
    for seed, task in enumerate(tasks):
        for model in models:
            entry = results[model]
            if entry["skipped"]:
                continue
            config = make_config(model, epochs, seed, found["model_field"], len(task.modalities))
            started = time.perf_counter()
            try:
                out = train_once(task, config)
            except Exception as error:  # a baseline still being written: report, keep going
                entry["skipped"] = f"failed at seed {seed}: {_short_error(error)}"
                print(f"[accuracy] {name} {model}: SKIPPED ({entry['skipped']})", file=sys.stderr)
                traceback.print_exc(limit=2, file=sys.stderr)
                continue
            seconds = time.perf_counter() - started
            test = out.metrics["test"]
            entry["runs"].append(
                {
                    "seed": seed,
                    "test_accuracy": test.get("accuracy"),
                    "test_macro_f1": test.get("macro_f1"),
                    "val_accuracy": out.metrics["val"].get("accuracy"),
                    "epochs_run": out.epochs_run,
                    "rank": config.rank,
                    "seconds": round(seconds, 2),
                    "load": load_average(),
                }
            )
            print(
                f"[accuracy] {name} {model} seed {seed}: test acc {test.get('accuracy'):.3f} "
                f"({seconds:.1f} s, load {load_average()[0]})",
                file=sys.stderr,
                flush=True,
            )
        # unimodal: our model (no interactions possible) on each modality alone
        per_modality = {}
        for modality in task.modalities:
            config = make_config("mnl", epochs, seed, found["model_field"])
            out = train_once(single_modality(task, modality), config)
            per_modality[modality] = {
                "val_accuracy": out.metrics["val"]["accuracy"],
                "test_accuracy": out.metrics["test"]["accuracy"],
            }
        best = max(per_modality, key=lambda m: per_modality[m]["val_accuracy"])
        results["unimodal"]["runs"].append(
            {
                "seed": seed,
                "test_accuracy": per_modality[best]["test_accuracy"],
                "val_accuracy": per_modality[best]["val_accuracy"],
                "modality": best,
                "per_modality": per_modality,
                "load": load_average(),
            }
        )
        print(
            f"[accuracy] {name} best unimodal seed {seed}: {best} "
            f"test acc {per_modality[best]['test_accuracy']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    for model in MODELS:
        if model not in results:
            results[model] = {"runs": [], "skipped": "not available in this checkout"}
    for entry in results.values():
        entry["test_accuracy"] = mean_std(r["test_accuracy"] for r in entry["runs"])
        entry["val_accuracy"] = mean_std(r["val_accuracy"] for r in entry["runs"])
    return {"name": name, "title": title, "models": results}


def run(scale: str, out_dir: str, threads: int = 1) -> dict[str, Any]:
    quiet_lightning()
    threads = set_threads(threads)
    settings = SCALE_SETTINGS[scale]
    env = environment(threads)
    started = time.perf_counter()
    found = detect()
    for message in found["messages"]:
        print(f"[accuracy] {message}", file=sys.stderr, flush=True)

    from interfuse.data import synthetic_task

    datasets = []
    for name, (title, make) in SYNTHETIC.items():
        if name not in settings.get("synthetic", SYNTHETIC):
            continue
        tasks = [
            synthetic_task(make(settings["n"], seed), seed=seed, name=name)
            for seed in range(settings["seeds"])
        ]
        record = run_dataset(name, title, tasks, found, settings["epochs"])
        record["bayes_accuracy"] = make(10, 0).ground_truth.bayes_accuracy
        datasets.append(record)

    skipped_datasets = {}
    if found["registry"] is not None:
        try:
            tasks = [load_mfeat(found["registry"], seed) for seed in range(settings["seeds"])]
        except Exception as error:
            skipped_datasets["mfeat"] = f"load_dataset('mfeat') failed: {_short_error(error)}"
            found["messages"].append(skipped_datasets["mfeat"])
            print(f"[accuracy] {skipped_datasets['mfeat']}", file=sys.stderr)
        else:
            datasets.append(
                run_dataset(
                    "mfeat", "UCI mfeat (6 feature sets)", tasks, found, settings["mfeat_epochs"]
                )
            )
    else:
        skipped_datasets["mfeat"] = "interfuse.data.registry not available"

    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {
            **settings,
            "train_config": train_defaults("only `model` differs"),
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "availability": {
            "models": found["models"],
            "model_field": found["model_field"],
            "registry": found["registry"] is not None,
            "messages": found["messages"],
            "skipped_datasets": skipped_datasets,
        },
        "datasets": datasets,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def render(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    datasets = payload["datasets"]
    header = ["model"] + [d["name"] for d in datasets]
    rows = []
    for model in [*MODELS, "unimodal"]:
        row = [MODEL_TITLES[model]]
        for d in datasets:
            entry = d["models"].get(model, {"runs": [], "skipped": "n/a"})
            cell = pm(entry["test_accuracy"]) if entry["runs"] else "skipped"
            if entry["runs"] and len(entry["runs"]) < s["seeds"]:
                # a model that failed at a later seed keeps its earlier runs: say over how many
                cell += f" ({len(entry['runs'])} of {s['seeds']} seeds)"
            row.append(cell)
        rows.append(row)
    bayes = ["Bayes-optimal"] + [fmt(d.get("bayes_accuracy")) for d in datasets]
    rows.append(bayes)
    parts = [
        f"### Test accuracy, mean ± std over {s['seeds']} seeds (synthetic n = {s['n']}, "
        f"≤ {s['epochs']} epochs; mfeat ≤ {s['mfeat_epochs']} epochs)\n",
        markdown_table(header, rows),
    ]
    picks = []
    for d in datasets:
        runs = d["models"]["unimodal"]["runs"]
        if runs:
            picks.append(f"{d['name']}: " + ", ".join(r["modality"] for r in runs))
    if picks:
        parts.append(
            "\n\nBest unimodal modality per seed (picked on validation): " + "; ".join(picks)
        )
    tfn = [
        f"{d['name']} k = {d['models']['tfn']['runs'][0]['rank']}"
        for d in datasets
        if d["models"].get("tfn", {}).get("runs")
    ]
    if tfn:
        parts.append(
            f"\n\nTFN factor size ((k+1)^M product features ≤ {TFN_PRODUCT_BUDGET}): "
            + ", ".join(tfn)
        )
    notes = [
        f"- {d['name']} / {m}: {e['skipped']}"
        for d in datasets
        for m, e in d["models"].items()
        if e.get("skipped")
    ]
    notes += [f"- {k}: {v}" for k, v in payload["availability"]["skipped_datasets"].items()]
    if notes:
        parts.append("\n\nSkipped:\n" + "\n".join(notes))
    return "".join(parts) + "\n"
