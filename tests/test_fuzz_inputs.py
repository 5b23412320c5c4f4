"""Fuzzing (hypothesis) of pickle and npz contents and of command-line arguments: every input
ends in success or one clear line with a documented exit code, never a traceback, and never
uses more than a bounded amount of memory (the whole suite runs in a subprocess under an
``RLIMIT_AS`` limit and a time limit)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

LIMIT_BYTES = 3 << 30

SCRIPT = textwrap.dedent(
    """
    import io, json, pickle, resource, sys, tempfile, zipfile
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))

    import numpy as np
    from click.testing import CliRunner
    from hypothesis import HealthCheck, given, settings, strategies as st

    from interfuse.cli import main
    from interfuse.cli.app import EXIT_CODES
    from interfuse.data.arrays import load_npz_dataset

    folder = Path(tempfile.mkdtemp())
    failures = []
    codes = {}
    SETTINGS = settings(
        max_examples=50, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )

    def check(result, what):
        out = result.output
        codes[f"{what[0]}:{result.exit_code}"] = codes.get(f"{what[0]}:{result.exit_code}", 0) + 1
        ok = result.exit_code in EXIT_CODES and "Traceback" not in out
        if result.exit_code != 0:
            ok = ok and len([l for l in out.splitlines() if l.startswith("Error:")]) == 1
        if not ok or (result.exception and not isinstance(result.exception, SystemExit)):
            failures.append([what, result.exit_code, out[-500:], repr(result.exception)])

    seeds = [
        pickle.dumps({"train": {"a": np.arange(6.0).reshape(3, 2)}, "labels": [0, 1, 1]}, p)
        for p in (2, 4, 5)
    ]
    mutation = st.tuples(st.sampled_from(seeds), st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))

    @SETTINGS
    @given(st.one_of(mutation, st.binary(max_size=200)))
    def fuzz_convert(case):
        if isinstance(case, tuple):
            data = bytearray(case[0])
            for pos, value in case[1]:
                data[pos % len(data)] = value
            data = bytes(data)
        else:
            data = case
        source, target = folder / "f.pkl", folder / "f.npz"
        source.write_bytes(data)
        target.unlink(missing_ok=True)
        check(CliRunner().invoke(main, ["convert", str(source), str(target)]), ("convert", data))

    dims = st.integers(0, 4)
    values = st.sampled_from([0.0, 1.0, -3.5, np.nan, np.inf, 1e300, -1e300, 1e-300])
    array = st.tuples(st.lists(dims, min_size=1, max_size=3), values,
                      st.sampled_from(["f8", "f4", "i8", "u1", "?", "U3"]))
    key = st.sampled_from(["a", "b", "labels", "train/a", "train/labels", "val/a",
                           "val/labels", "test/a", "test/labels", "task", "x/y/z"])

    @SETTINGS
    @given(st.dictionaries(key, array, max_size=3), st.integers(0, 40))
    def fuzz_npz(content, n):
        rng = np.random.default_rng(n)
        n = n + 20 if n % 2 else n  # a valid base (a, labels) that the entries may spoil
        arrays = {"a": rng.normal(size=(n, 3)), "labels": np.arange(n) % 2}
        for k, (shape, fill, dtype) in content.items():
            shape = [n] + shape[1:]
            x = rng.normal(size=shape)
            x.flat[:: max(1, x.size // 3 or 1)] = fill
            arrays[k] = x.astype(dtype) if dtype != "U3" else x.astype(str).astype("U3")
        path = folder / "d.npz"
        np.savez(path, **arrays)
        try:
            load_npz_dataset(path)
            codes["npz:0"] = codes.get("npz:0", 0) + 1
        except ValueError as error:
            codes["npz:1"] = codes.get("npz:1", 0) + 1
            text = str(error)
            if not text or "Traceback" in text:
                failures.append(["npz", sorted(arrays), text])
        except Exception as error:
            failures.append(["npz", sorted(arrays), repr(error)])

    option = st.sampled_from(["--rank", "--seed", "--lr", "--batch-size", "--epochs", "--p",
                              "--lam", "--patience", "--interactions", "--modality-dropout",
                              "--max-grad-norm", "--weight-decay", "--data-seed", "--n",
                              "--probs", "--xor", "--length", "--model"])
    value = st.one_of(st.sampled_from(["-1", "0", "1", "inf", "nan", "-inf", "1e308", "all",
                                        "pairs", "abc", "", "0,1", "99999999999999999999",
                                        "m0*m1", "m0*m9", "tfn", "2.5"]),
                      st.text(max_size=8))

    @SETTINGS
    @given(st.lists(st.tuples(option, value), max_size=4))
    def fuzz_train_options(pairs):
        args = ["train", "--n", "80", "--length", "20", "--quiet",
                "--out", str(folder / "a-file")]
        for flag, v in pairs:
            args += [flag, v]
        (folder / "a-file").write_text("not a folder")  # valid options stop before training
        check(CliRunner().invoke(main, args), ("train", args))

    fuzz_convert()
    fuzz_npz()
    fuzz_train_options()
    print(json.dumps({"failures": failures[:5], "codes": codes}))
    """
).replace("ADDRESS_LIMIT", str(LIMIT_BYTES))


def test_fuzz_inputs_success_or_one_clear_line_within_bounded_memory():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], report["failures"]
    codes = report["codes"]
    # the fuzzers reached both outcomes: some inputs succeed, some are refused
    for what in ("convert", "npz", "train"):
        seen = {k.split(":")[1] for k in codes if k.startswith(what + ":")}
        assert len(seen) >= 2, codes
