"""The benchmark suites run end to end on tiny settings and write well-formed tables and JSON.

This checks the outputs, not performance: ``python -m benchmarks all --scale tiny`` in a fresh
interpreter (as a user would run it), one thread, results in a temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("fidelity", "accuracy", "speed", "throughput")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``all --scale tiny``, and the suites run by name only (``scale``, ``device-speed``) at
    the same time."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    common = ["--scale", "tiny", "--threads", "1", "--out", str(out)]
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks", suite, *common],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for suite in ("all", "scale", "device-speed")
    ]
    outputs = []
    for process in started:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-4000:]
        outputs.append(stdout)
    return out, outputs[0]


def _load(out: Path, suite: str) -> dict:
    # strict JSON: NaN/inf must have been written as null
    return json.loads(
        (out / f"{suite}-tiny.json").read_text(encoding="utf-8"),
        parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"),
    )


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_every_suite_writes_json_and_markdown(tiny_results: tuple[Path, str]) -> None:
    out, stdout = tiny_results
    for suite in SUITES:
        data = _load(out, suite)
        assert data["suite"] == suite and data["scale"] == "tiny"
        env = data["environment"]
        for key in ("date", "nproc", "cpu", "torch", "torch_threads", "load_start", "load_end"):
            assert key in env, (suite, key)
        assert len(env["load_start"]) == 3
        table = (out / f"{suite}-tiny.md").read_text(encoding="utf-8")
        assert table.startswith("<!-- python -m benchmarks")
        assert "\n| " in table and "|---" in table
    assert stdout.count("### ") >= len(SUITES)  # every suite printed its tables


def test_fidelity_records_metrics_per_seed(tiny_results: tuple[Path, str]) -> None:
    data = _load(tiny_results[0], "fidelity")
    assert data["experiments"]
    for experiment in data["experiments"]:
        truth = experiment["truth"]
        assert abs(sum(truth.values()) - 1) < 1e-6
        for run in experiment["runs"]:
            assert abs(sum(run["shares"].values()) - 1) < 1e-4
            metrics = run["metrics"]
            assert 0 <= metrics["leakage"] <= 1 + 1e-9
            assert 0 <= metrics["l1"] <= 2 + 1e-9
            assert 0 <= metrics["test_accuracy"] <= 1
        assert experiment["summary"]["l1"]["n"] == len(experiment["runs"])


def test_accuracy_reports_every_model_or_why_not(tiny_results: tuple[Path, str]) -> None:
    data = _load(tiny_results[0], "accuracy")
    assert "motif4" in {d["name"] for d in data["datasets"]}
    for dataset in data["datasets"]:
        models = dataset["models"]
        assert {"intense", "mnl", "early", "late", "tfn", "lmf", "unimodal"} <= set(models)
        for name, entry in models.items():
            assert entry["runs"] or entry["skipped"], (dataset["name"], name)
        assert models["intense"]["runs"] and models["unimodal"]["runs"]
        assert (
            models["unimodal"]["runs"][0]["modality"]
            in models["unimodal"]["runs"][0]["per_modality"]
        )


def test_speed_rows_and_memory(tiny_results: tuple[Path, str]) -> None:
    data = _load(tiny_results[0], "speed")
    assert data["rows"]
    for row in data["rows"]:
        assert set(row["median_ms"]) == {"floor", "blocks_floor", "before", "ours", "naive"}
        assert _is_number(row["ours_over_before"]) and _is_number(row["ours_over_blocks_floor"])
        assert all(_is_number(v) and v > 0 for v in row["median_ms"].values())
        assert _is_number(row["ours_over_floor"]) and row["naive_relative_difference"] < 1e-4
    measured = [r["peak_extra_mib"] for r in data["rows"] if "peak_extra_mib" in r]
    assert measured and all("error" not in m for m in measured), measured
    assert data["profiles"][0]["top_ops_ours"]
    (faults,) = data["faults"]
    assert "error" not in faults, faults
    assert faults["before"] >= 0 and faults["ours"] >= 0


def test_device_speed_times_every_step_in_both_precisions(tiny_results: tuple[Path, str]) -> None:
    """On a machine without a GPU the device suite runs on the CPU: every configuration in
    float32 and under bfloat16 autocast, and its markdown is the rendering of its JSON."""
    from benchmarks import device_speed

    data = _load(tiny_results[0], "device_speed")
    configs = device_speed.SCALE_SETTINGS["tiny"]["configs"]
    assert [(r["M"], r["r"], r["K"], r["precision"]) for r in data["rows"]] == [
        (*c, p) for c in configs for p in ("fp32", "bf16")
    ]
    for row in data["rows"]:
        assert set(row["median_ms"]) == {"floor", "before", "ours", "naive"}
        assert all(_is_number(v) and v > 0 for v in row["median_ms"].values())
        assert all(_is_number(row[k]) for k in ("ours_over_before", "ours_over_floor"))
    device = data["environment"]["device"]
    assert device.startswith("CPU") or torch.cuda.is_available(), device
    table = (tiny_results[0] / "device_speed-tiny.md").read_text(encoding="utf-8")
    assert table.split("\n", 1)[1] == device_speed.render(data)


def test_throughput_variants(tiny_results: tuple[Path, str]) -> None:
    data = _load(tiny_results[0], "throughput")
    result = data["results"][0]
    for variant in ("fit", "bare", "bare+val+ckpt", "data only"):
        assert _is_number(result["samples_per_s"][variant]) and result["samples_per_s"][variant] > 0
    assert all(_is_number(v) for v in result["step_breakdown_ms"].values())


def test_scale_writes_streams_and_trains_lazily(
    tiny_results: tuple[Path, str],
) -> None:
    data = _load(tiny_results[0], "scale")
    written = data["write"]
    assert written["bytes"] > 4000 * 4 * 64 * 4  # the training arrays alone
    assert _is_number(written["write_hash_statistics_s"]) and _is_number(
        written["statistics_pass_s"]
    )
    assert [r["processes"] for r in data["training"]] == [1]  # tiny: 1 (2 in test_ddp.py)
    for result in data["training"]:
        assert _is_number(result["samples_per_s"]) and result["samples_per_s"] > 0
        assert result["timed_steps"] >= 1
        assert 0 < result["peak_rss_all_processes_bytes"] < 2 * 2**30


def test_histogram_information_is_h_of_y_for_a_perfect_score_and_zero_for_noise():
    from benchmarks.model_information import histogram_information

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000).astype(float)
    entropy = -(y.mean() * math.log2(y.mean()) + (1 - y.mean()) * math.log2(1 - y.mean()))
    perfect = histogram_information(y + rng.normal(0, 0.01, len(y)), y)
    # biased low by design: Laplace smoothing of ~100 samples per bin, a bin at the boundary
    assert entropy - 0.06 < perfect <= entropy
    noise = histogram_information(rng.normal(size=len(y)), y)
    assert -0.03 < noise < 0.01  # cross-fitted: no information, a small loss at most
    # a score that reveals y on 30 % of the samples (a motif's "revealed" rows): 0.3 bits,
    # estimated somewhat low (0.28 here; 0.23 ± 0.02 with 600 samples, BENCHMARKS.md §1.1)
    revealed = rng.random(len(y)) < 0.3
    score = np.where(revealed, 2 * y - 1, 0.0) + rng.normal(0, 0.05, len(y))
    assert 0.25 < histogram_information(score, y) <= 0.3


def test_alone_bits_trains_on_one_modality_of_the_same_splits():
    import torch
    from benchmarks.model_information import _only, alone_bits

    from interfuse.data import make_motif_data, synthetic_task
    from interfuse.train import TrainConfig

    task = synthetic_task(make_motif_data([0.9, 0.0], n=200, seed=0), seed=0)
    only = _only(task, "m1")
    for split in ("train", "val", "test"):
        assert getattr(only, split).modalities == ["m1"]
        assert torch.equal(getattr(only, split).inputs["m1"], getattr(task, split).inputs["m1"])
        assert torch.equal(getattr(only, split).targets, getattr(task, split).targets)
    assert list(only.encoders) == ["m1"] and only.ground_truth is None
    bits = alone_bits(task, "m0", TrainConfig(epochs=1, seed=0))
    assert math.isfinite(bits) and bits <= 1.0


def test_interval_calibration_draws_samples_the_run_never_saw():
    """The calibration's fresh samples: same generator (motifs), none of the run's sequences."""
    from benchmarks.fidelity import DATASETS
    from benchmarks.interval_calibration import _fresh_samples

    fresh = _fresh_samples("motif3", 300, 0, 200)
    data = DATASETS["motif3"].make(300, 0)
    assert len(fresh) == 200 and fresh.targets.dtype == torch.int64
    for m, x in data.one_hot().items():
        seen = {row.tobytes() for row in x}
        assert not any(row.numpy().tobytes() in seen for row in fresh.inputs[m]), m


def test_markdown_is_what_render_gives_for_the_stored_json(tmp_path: Path) -> None:
    """``<suite>.md`` must be reproducible from ``<suite>.json``: a std of 0.008499… is stored
    as 0.0085 (5 digits) and printed 0.009 from the JSON, so the tables must be rendered from
    the rounded numbers too."""
    from benchmarks._common import pm, publish

    payload = {"suite": "x", "scale": "tiny", "value": {"mean": 0.08099, "std": 0.0084999, "n": 5}}

    def render(p: dict) -> str:
        return "| std |\n|---|\n| " + pm(p["value"]) + " |\n"

    publish(tmp_path, "x", "tiny", payload, render)
    stored = json.loads((tmp_path / "x-tiny.json").read_text(encoding="utf-8"))
    table = (tmp_path / "x-tiny.md").read_text(encoding="utf-8")
    assert table.split("\n", 1)[1] == render(stored)


def test_a_suite_run_through_python_c_does_not_record_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -c "from benchmarks import fidelity; fidelity.run('main', OUT)"`` (how §1.1 and
    §2 of BENCHMARKS.md were run) has ``sys.argv == ['-c']``: the result recorded
    ``python -m benchmarks `` as its command — a different command (every suite, full scale)."""
    from benchmarks._common import environment, publish

    monkeypatch.setattr(sys, "argv", ["-c"])
    payload = {"suite": "x", "scale": "main", "environment": environment(1)}
    publish(tmp_path, "x", "main", payload, lambda p: "| a |\n|---|\n| 1 |\n")
    command = json.loads((tmp_path / "x-main.json").read_text(encoding="utf-8"))["environment"][
        "command"
    ]
    assert not command.startswith("python -m benchmarks")
    assert "'main'" in command and "python -c" in command
    assert "python -m benchmarks" not in (tmp_path / "x-main.md").read_text(encoding="utf-8")


def test_accuracy_cell_of_a_model_that_failed_at_a_later_seed_says_how_many_seeds() -> None:
    """A model that fails at seed 1 keeps its seed-0 run (and is listed under "Skipped"), but its
    cell sat in a table headed "mean ± std over 3 seeds" as if it were a 3-seed mean."""
    from benchmarks import accuracy

    def entry(values: list[float], skipped: str | None = None) -> dict:
        stats = {"mean": sum(values) / len(values), "std": 0.0, "n": len(values)}
        return {"runs": [{"test_accuracy": v} for v in values], "skipped": skipped,
                "test_accuracy": stats}  # fmt: skip

    models = {m: entry([0.9, 0.9, 0.9]) for m in accuracy.MODELS}
    models["late"] = entry([0.8], "failed at seed 1: RuntimeError: boom")
    models["unimodal"] = entry([0.7, 0.7, 0.7])
    for run in models["unimodal"]["runs"]:
        run["modality"] = "m0"
    for run in models["tfn"]["runs"]:
        run["rank"] = 8
    payload = {
        "settings": {"seeds": 3, "n": 10, "epochs": 1, "mfeat_epochs": 1},
        "availability": {"skipped_datasets": {}},
        "datasets": [{"name": "motif4", "models": models, "bayes_accuracy": 1.0}],
    }
    table = accuracy.render(payload)
    late = next(line for line in table.splitlines() if line.startswith("| late"))
    assert "0.800 ± 0.000 (1 of 3 seeds)" in late
    intense = next(line for line in table.splitlines() if line.startswith("| ours (pairs"))
    assert "of 3 seeds" not in intense
