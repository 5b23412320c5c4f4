"""Shared plumbing of the benchmark suites: scales, machine description, statistics, output files.

Every suite writes ``<out>/<suite>[-<scale>].json`` (raw numbers, machine, load, command) and
``<out>/<suite>[-<scale>].md`` (the tables it printed). The full scale writes ``<suite>.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCALES = ("full", "quick", "tiny")
"""``full``: the numbers in BENCHMARKS.md (``make bench``); ``quick``: everything in a few
minutes (``--quick``); ``tiny``: seconds, for the test suite (checks outputs, not performance)."""

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return [math.nan] * 3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def git_revision() -> str:
    """``<commit>`` or ``<commit>+dirty`` (read-only git commands), or ``unknown``."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _from_command_line() -> bool:
    """Whether this process is ``python -m benchmarks …`` (not ``python -c``, a test or a
    script calling a suite's ``run``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    try:
        return Path(argv0).resolve() == Path(__file__).resolve().parent / "__main__.py"
    except (OSError, ValueError):  # pragma: no cover
        return False


def command_line(suite: str | None = None, scale: str | None = None) -> str:
    """The command that produced a result: ``python -m benchmarks …`` when run from the command
    line, else which suite's ``run`` was called and from what (``python -c`` code is not in
    ``sys.argv``, so it is not recorded; the ``-c`` runs of BENCHMARKS.md give it there)."""
    if _from_command_line():
        return "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    argv = [a for a in sys.argv if a]
    caller = "python -c …" if argv[:1] == ["-c"] else "python " + shlex.join(argv)
    called = f"{suite} suite run({scale!r})" if suite else "a suite's run()"
    return f"{called} called from `{caller}`"


def environment(threads: int) -> dict[str, Any]:
    """Machine, versions and load: recorded with every result."""
    import torch

    try:
        import pytorch_lightning as pl

        lightning = pl.__version__
    except ImportError:  # pragma: no cover
        lightning = None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning,
        "torch_threads": threads,
        "git": git_revision(),
        "command": command_line(),
        "load_start": load_average(),
    }


def train_defaults(note: str) -> dict[str, Any]:
    """The ``TrainConfig`` defaults a suite trains with (read from the class, never restated)."""
    from interfuse.train import TrainConfig

    return {"defaults": TrainConfig().to_dict(), "note": note}


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (and interop threads when still possible)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
    return torch.get_num_threads()


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample standard deviation of the finite values, and how many there were."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def pm(stats: Mapping[str, float], digits: int = 3) -> str:
    """``mean ± std`` (``—`` when there is no finite value)."""
    if not stats or stats.get("n", 0) == 0 or not math.isfinite(stats["mean"]):
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def result_stem(suite: str, scale: str) -> str:
    return suite if scale == "full" else f"{suite}-{scale}"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def round_floats(x: Any, digits: int = 5) -> Any:
    """Round every float (keeps the JSON files small and diff-friendly)."""
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else x
    if isinstance(x, Mapping):
        return {k: round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [round_floats(v, digits) for v in x]
    return x


def publish(
    out_dir: str | Path,
    suite: str,
    scale: str,
    payload: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Print the suite's tables, write its JSON and markdown, and return the payload.

    The tables are rendered from the payload as the JSON stores it (floats rounded by
    ``round_floats``), so that ``render(json.load(<suite>.json))`` gives the markdown file
    again; rendering the unrounded numbers let a std of 0.008499… print 0.008 in the
    markdown but 0.009 from the stored 0.0085."""
    payload = round_floats(payload)
    if "environment" in payload and not _from_command_line():
        payload["environment"] = {
            **payload["environment"],
            "command": command_line(suite, scale),
        }
    tables = render(payload)
    print(tables)
    path = write_results(out_dir, suite, scale, payload, tables)
    print(f"\nwrote {path}", file=sys.stderr)
    return payload


def write_results(
    out_dir: str | Path, suite: str, scale: str, payload: dict[str, Any], tables: str
) -> Path:
    """Write ``<suite>.json`` (strict JSON, NaN as null) and ``<suite>.md``; return the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(suite, scale)
    payload = dict(payload)
    payload["environment"] = {**payload.get("environment", {}), "load_end": load_average()}
    path = out / f"{stem}.json"
    text = json.dumps(_json_safe(round_floats(payload)), indent=1, allow_nan=False) + "\n"
    path.write_text(text, encoding="utf-8")
    env = payload["environment"]
    header = (
        f"<!-- {env.get('command')} | {env.get('date')} | nproc {env.get('nproc')} | "
        f"{env.get('cpu')} | torch {env.get('torch')} | threads {env.get('torch_threads')} | "
        f"load {env.get('load_start')} -> {env.get('load_end')} -->\n"
    )
    (out / f"{stem}.md").write_text(header + tables.rstrip() + "\n", encoding="utf-8")
    return path


class Stopwatch:
    """``with Stopwatch() as t: ...``; then ``t.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def quiet_lightning() -> None:
    """Silence Lightning's banner lines ("GPU available", tips) and known harmless warnings."""
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401  (its import resets the levels set below)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
