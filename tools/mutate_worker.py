"""Warm test runner for ``tools/mutate.py`` (not for normal runs).

Starting pytest on interfuse's tests costs ~8 s of CPU before the first test (importing torch,
torchmetrics, scipy, Lightning), more than most selected test sets take to run. This process
imports those third-party packages once — never interfuse itself — and then, for each request
read from stdin (one JSON object per line: ``src``, the folder with the mutated copy of ``src/``;
``args``, pytest's arguments; ``timeout``, seconds; ``log``, a file for pytest's output), forks a
child that puts ``src`` first on ``sys.path``, runs ``pytest.main(args)`` and exits with its
status. So every mutant still gets a fresh interpreter state for interfuse and the tests (nothing
of theirs was imported before the fork), without paying for the third-party imports again. The
answer is one JSON line: ``{"rc": exit status, or null when the child was killed at the
timeout}``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# third-party modules that interfuse and its targeted tests import (the slow part of start-up)
PRELOAD = [
    "numpy",
    "scipy",
    "scipy.optimize",
    "scipy.stats",
    "scipy.signal",
    "torch",
    "torch.nn",
    "torchmetrics",
    "torchmetrics.functional",
    "pytorch_lightning",
    "sklearn.metrics",
    "safetensors.torch",
    "matplotlib",
    "yaml",
    "click",
    "tqdm",
    "hypothesis",
    "pytest",
]


def _run_child(request: dict) -> None:
    """In the forked child: run pytest against the mutated copy and exit with its status."""
    rc = 3
    try:
        os.setpgid(0, 0)  # its own process group, so a timeout kills anything it started
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.dont_write_bytecode = True
        sys.path.insert(0, request["src"])
        os.environ["PYTHONPATH"] = request["src"]
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        import pytest

        rc = int(pytest.main(request["args"]))
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - anything that escapes pytest is an internal error
        import traceback

        traceback.print_exc()
    finally:
        os._exit(rc)


def serve() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    leaked = [m for m in sys.modules if m == "interfuse" or m.startswith("interfuse.")]
    if leaked:  # the mutant must be the first interfuse the child imports
        raise SystemExit(f"preloading imported {leaked[:3]}")
    os.chdir(os.environ.get("INTERFUSE_MUTATE_ROOT", os.getcwd()))
    print(json.dumps({"ready": True}), flush=True)
    for text in sys.stdin:
        if not text.strip():
            continue
        request = json.loads(text)
        pid = os.fork()
        if pid == 0:
            _run_child(request)
        try:
            os.setpgid(pid, pid)
        except OSError:  # the child already did it (or has exited)
            pass
        deadline = time.monotonic() + float(request["timeout"])
        rc = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    serve()
