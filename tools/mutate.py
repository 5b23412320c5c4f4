"""Small mutation tester for interfuse's core math (``make mutation``; not part of ``make test``).

For each target module it parses the source, lists mutation sites and, for each mutant (one
site changed), copies ``src/`` to a temporary folder with the mutated module, runs tests against
that copy (``PYTHONPATH`` first on the path) with a timeout, and counts the mutant as killed when
the tests fail or time out.

Test selection (default, ``--select coverage``, as mutmut does): the module's targeted tests run
once, unmutated, under coverage with one context per test (pytest-cov ``--cov-context=test``),
which maps every source line to the tests that execute it. A mutant then runs only the targeted
tests that execute its statement (a multi-line statement counts as all its lines; a compound
statement as its header), widened to every test that shares a module- or session-scoped fixture
with a selected one (such a fixture's lines are recorded under the first test that set it up);
they run fastest first (durations from the coverage run).
A statement executed at import time (module and class level, decorators) runs all targeted
tests, a default argument value the tests that call its function; a mutant on a line no
targeted test executes is a survivor, reported as ``not covered``.
Timeout: 3 × (pytest start-up + the selected tests' durations in the coverage run) + 10 s.
``--select all`` runs the whole targeted test set for every mutant (timeout: 3 × the unmutated
run + 10 s), which is what the selection must agree with.

Operators (AST level): arithmetic swaps (``+``↔``-``, ``*``↔``/``, ``**``→``*``, ``//``→``/``),
comparison swaps (``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``is``↔``is not``, ``in``↔``not in``),
``and``↔``or``, ``not x``→``x``, unary minus removed, numeric constants changed (``0``→``1``,
``1``→``0``/``2``, other ``n``→``n+1``; floats ``x``→``x+1``), ``True``↔``False``.
Docstrings, annotations and ``raise ...`` messages are left alone.

Usage: ``python tools/mutate.py [--sample N] [--seed S] [--jobs J] [--module FILE ...]
[--line FILE:LINE ...] [--resume] [--rerun-survivors] [--summary]``.
``--sample N`` draws N mutants per module uniformly at random (``random.Random(seed)``) from all
its sites; without it every mutant runs. Each result is appended to ``mutation-results.jsonl``
(``mutation-sample.jsonl`` with ``--sample``) as soon as it is known (one JSON object per line;
the last record of a mutant wins), so an interrupted run keeps what it finished: ``--resume``
skips mutants already recorded for the current source of their module; ``--rerun-survivors``
runs again only the recorded survivors (after adding tests); ``--summary`` prints the
per-module table and the survivors from the file.
The line → tests map is cached in ``mutation-coverage.json`` and rebuilt when ``src/``,
``tests/`` or ``tools/mutate_plugin.py`` change.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TOOLS = ROOT / "tools"

FUSION_TESTS = [
    "tests/fusion",
    "tests/test_model.py",
]
# run order: smaller modules first, so that an interrupted full run leaves whole modules done
TARGETS: dict[str, list[str]] = {
    "src/interfuse/fusion/mnl.py": FUSION_TESTS,
    "src/interfuse/fusion/norm.py": FUSION_TESTS,
    "src/interfuse/fusion/interactions.py": FUSION_TESTS,
    "src/interfuse/model.py": [*FUSION_TESTS, "tests/test_missing.py"],
    "src/interfuse/metrics.py": ["tests/test_tasks.py", "tests/train/test_sentiment_metrics.py"],
    "src/interfuse/data/synthetic.py": ["tests/data/test_synthetic.py"],
    "src/interfuse/fusion/fast.py": FUSION_TESTS,
    "src/interfuse/fusion/pairwise.py": FUSION_TESTS,
}
# the order in which --sample draws (kept from the first version, so that a seed draws the same
# mutants as before)
SAMPLE_ORDER = [
    "src/interfuse/fusion/norm.py",
    "src/interfuse/fusion/interactions.py",
    "src/interfuse/fusion/mnl.py",
    "src/interfuse/fusion/fast.py",
    "src/interfuse/model.py",
    "src/interfuse/data/synthetic.py",
    "src/interfuse/metrics.py",
    "src/interfuse/fusion/pairwise.py",
]
# test_tasks.py also trains models; only its metric tests are needed for metrics.py
TEST_FILTER = {"src/interfuse/metrics.py": "metrics or weights"}
KILLED = ("killed", "timeout")

BINOP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
}
CMPOP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes inside docstrings, annotations and raise statements."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            mark(node)
        elif isinstance(node, (ast.AnnAssign, ast.arg)):
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                mark(body[0])
    return skip


def _constant_changes(value: object) -> list[object]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return {0: [1], 1: [0, 2]}.get(value, [value + 1])
    if isinstance(value, float):
        return [value + 1.0]
    return []


def sites(tree: ast.AST) -> list[tuple[int, str, object]]:
    """``(node index in ast.walk order, description, replacement spec)`` for every mutation."""
    skip = _skipped_nodes(tree)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP:
            new = BINOP[type(node.op)]
            found.append((index, f"{type(node.op).__name__}->{new.__name__}", ("op", new)))
        elif isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in CMPOP:
                    new = CMPOP[type(op)]
                    found.append((index, f"{type(op).__name__}->{new.__name__}", ("cmp", k, new)))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            found.append((index, f"{type(node.op).__name__}->{new.__name__}", ("op", new)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            found.append((index, f"drop {type(node.op).__name__}", ("unary",)))
        elif isinstance(node, ast.Constant):
            for value in _constant_changes(node.value):
                found.append((index, f"{node.value!r}->{value!r}", ("const", value)))
    return found


class _Unwrap(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if node is self.target:
            return node.operand
        return node


def mutate(source: str, site: tuple[int, str, object]) -> tuple[str, int, int]:
    tree = ast.parse(source)
    index, _, spec = site
    node = list(ast.walk(tree))[index]
    line, col = node.lineno, node.col_offset
    if spec[0] == "op":
        node.op = spec[1]()
    elif spec[0] == "cmp":
        node.ops[spec[1]] = spec[2]()
    elif spec[0] == "const":
        node.value = spec[1]
    elif spec[0] == "unary":
        tree = _Unwrap(node).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)), line, col


def mutated_lines(tree: ast.AST, index: int) -> tuple[list[int], bool]:
    """(source lines whose execution runs the mutated node, whether it runs at import time).

    The lines are the node's enclosing statement (a compound statement's header only:
    decorators to the line before its body) and the node itself. Code outside every function
    body (module and class level, decorators, a top-level function's header) runs while the
    module is imported, which the coverage run does not see (pytest imports ``interfuse.train``
    while reading its warning filters, before coverage starts) and which every test depends on.
    A default argument value of a function is the exception: it only matters in calls, so its
    lines are the function's body (every test that calls the function executes some of them).
    """
    nodes = list(ast.walk(tree))
    parent = {id(child): node for node in nodes for child in ast.iter_child_nodes(node)}
    node = nodes[index]
    stmt = node
    while not isinstance(stmt, ast.stmt) and id(stmt) in parent:
        stmt = parent[id(stmt)]
    first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
    body = getattr(stmt, "body", None)
    last = body[0].lineno - 1 if isinstance(body, list) and body else stmt.end_lineno
    last = max(last, first)
    lines = set(range(first, last + 1))
    if hasattr(node, "lineno"):
        lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))

    child, current = node, parent.get(id(node))
    while current is not None:
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = current.body if isinstance(current.body, list) else [current.body]
            if any(child is b for b in inner):
                return sorted(lines), False  # inside a function body
        if isinstance(current, ast.arguments):
            defaults = [*current.defaults, *current.kw_defaults]
            function = parent[id(current)]
            if any(child is d for d in defaults if d is not None) and isinstance(
                function, (ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                return list(range(function.body[0].lineno, function.end_lineno + 1)), False
        child, current = current, parent.get(id(current))
    return sorted(lines), True


def _env(src_copy: Path | None = None, extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    if src_copy is not None:
        env["PYTHONPATH"] = str(src_copy)
    env.update(extra or {})
    return env


class Worker:
    """A warm ``tools/mutate_worker.py`` process that forks one pytest run per mutant."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(TOOLS / "mutate_worker.py")],
            cwd=ROOT,
            env=_env(extra={"INTERFUSE_MUTATE_ROOT": str(ROOT)}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.process.stdout.readline()
        if not ready.strip():
            raise SystemExit("tools/mutate_worker.py did not start")

    def run(self, src_copy: Path, args: list[str], timeout: float, log: Path) -> int | None:
        request = {"src": str(src_copy), "args": args, "timeout": timeout, "log": str(log)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["rc"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


_workers: queue.Queue[Worker] = queue.Queue()
USE_WORKERS = False


def run_tests(src_copy: Path, tests: list[str], keyword: str | None, timeout: float) -> str:
    args = ["-x", "-q", "-p", "no:cacheprovider", *tests]
    if keyword:
        args += ["-k", keyword]
    log = src_copy.parent / "pytest.log"
    if USE_WORKERS:
        worker = _workers.get()
        try:
            rc = worker.run(src_copy, args, timeout, log)
        finally:
            _workers.put(worker)
        output = log.read_text(errors="replace") if log.exists() else ""
    else:  # a fresh interpreter (--no-worker)
        command = [sys.executable, "-m", "pytest", *args]
        try:
            result = subprocess.run(
                command,
                cwd=ROOT,
                env=_env(src_copy),
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "timeout"
        rc, output = result.returncode, result.stdout.decode(errors="replace")
    if rc is None:
        return "timeout"
    if rc == 0:
        return "survived"
    if rc == 5 or (rc == 4 and "not found:" in output):  # nothing collected, a node id unknown
        sys.stderr.write(output[-2000:])
        return "error"
    # 1: a test failed; 2: collection error; 4 otherwise: pytest could not even start because
    # the mutant does not import (pytest imports interfuse.train for its warning filters)
    return "killed"


# -- line -> tests map -----------------------------------------------------------------------


def fingerprint() -> str:
    digest = hashlib.sha256()
    files = sorted(SRC.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    files += [ROOT / "pyproject.toml", TOOLS / "mutate_plugin.py"]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _group(module: str) -> str:
    return TEST_FILTER.get(module) or ""


def _in_paths(nodeid: str, paths: list[str]) -> bool:
    file = nodeid.split("::", 1)[0]
    return any(file == p or file.startswith(p.rstrip("/") + "/") for p in paths)


def build_coverage_map(modules: list[str]) -> dict:
    """Run the targeted tests of ``modules`` once under coverage (one context per test) and map
    each line of each module to the tests that execute it; cached in mutation-coverage.json."""
    cache = ROOT / "mutation-coverage.json"
    key = fingerprint()
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("fingerprint") == key and all(m in data["lines"] for m in modules):
            print("line -> tests map: cached (mutation-coverage.json)", flush=True)
            return data
    from coverage import CoverageData

    data = {"fingerprint": key, "groups": {}, "lines": {}, "import_lines": {}}
    for group in dict.fromkeys(_group(m) for m in modules):
        mine = [m for m in modules if _group(m) == group]
        paths = list(dict.fromkeys(p for m in mine for p in TARGETS[m]))
        with tempfile.TemporaryDirectory(prefix="interfuse-coverage-") as tmp:
            cov_file, tests_file = Path(tmp) / ".coverage", Path(tmp) / "tests.json"
            command = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "-p", "mutate_plugin", f"--cov={SRC / 'interfuse'}", "--cov-context=test",
                "--cov-report=", *paths,
            ]  # fmt: skip
            if group:
                command += ["-k", group]
            env = _env(
                extra={
                    "PYTHONPATH": os.pathsep.join([str(SRC), str(TOOLS)]),
                    "COVERAGE_FILE": str(cov_file),
                    "INTERFUSE_MUTATE_TESTS": str(tests_file),
                }
            )
            start = time.monotonic()
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=False)
            wall = time.monotonic() - start
            if result.returncode != 0:
                sys.stderr.write(result.stdout.decode(errors="replace")[-4000:])
                raise SystemExit(f"unmutated tests fail under coverage ({paths} -k {group!r})")
            tests = json.loads(tests_file.read_text())
            startup = max(2.0, wall - sum(t["duration"] for t in tests.values()))
            print(
                f"coverage run {paths} -k {group!r}: {len(tests)} tests, {wall:.0f} s "
                f"(start-up {startup:.0f} s)",
                flush=True,
            )
            cov = CoverageData(basename=str(cov_file))
            cov.read()
            data["groups"][group] = {"paths": paths, "startup": startup, "tests": tests}
            for module in mine:
                by_line = cov.contexts_by_lineno(str((ROOT / module).resolve())) or {}
                lines, at_import = {}, []
                for line, contexts in by_line.items():
                    ids = sorted({c.rsplit("|", 1)[0] for c in contexts if c})
                    if "" in contexts:  # executed while importing / collecting
                        at_import.append(line)
                    if ids:
                        lines[str(line)] = ids
                data["lines"][module] = lines
                data["import_lines"][module] = sorted(at_import)
    cache.write_text(json.dumps(data))
    return data


def select_tests(
    cmap: dict, module: str, lines: list[int], at_import: bool
) -> tuple[list[str], str]:
    """(node ids to run, how chosen) for a mutant of ``module`` on ``lines``."""
    group = cmap["groups"][_group(module)]
    tests, paths = group["tests"], TARGETS[module]
    allowed = [t for t in tests if _in_paths(t, paths)]  # collection order
    if at_import or set(lines) & set(cmap["import_lines"][module]):
        return allowed, "import"
    by_line = cmap["lines"][module]
    chosen = {t for line in lines for t in by_line.get(str(line), [])}
    chosen &= set(allowed)
    if not chosen:
        return [], "not covered"
    shared = {f for t in chosen for f in tests[t]["shared_fixtures"]}
    if shared:
        chosen |= {t for t in allowed if shared & set(tests[t]["shared_fixtures"])}
    # fastest first (as mutmut does): a killed mutant fails sooner, -x stops at the first failure
    return sorted(chosen, key=lambda t: tests[t]["duration"]), "coverage"


def selection_timeout(cmap: dict, module: str, chosen: list[str]) -> float:
    group = cmap["groups"][_group(module)]
    tests = group["tests"]
    seconds = group["startup"] + sum(tests[t]["duration"] for t in chosen)
    # a shared fixture's set-up is charged to the test that first used it; add it once per fixture
    for fixture in {f for t in chosen for f in tests[t]["shared_fixtures"]}:
        seconds += max(v["setup"] for v in tests.values() if fixture in v["shared_fixtures"])
    return 3 * seconds + 10


# -- running ----------------------------------------------------------------------------------


def check_mutant(job: dict, cmap: dict | None, full_timeouts: dict) -> dict:
    module, source, site = job["module"], job["source"], job["site"]
    mutated, line, col = mutate(source, site)
    record = {
        "id": job["id"],
        "module": module,
        "line": line,
        "col": col,
        "operator": site[1],
        "code": source.splitlines()[line - 1].strip(),
        "source_sha": job["source_sha"],
    }
    if cmap is None:
        tests, how, keyword = TARGETS[module], "all", TEST_FILTER.get(module)
        timeout = full_timeouts[module]
    else:
        lines, at_import = mutated_lines(ast.parse(source), site[0])
        tests, how = select_tests(cmap, module, lines, at_import)
        keyword, timeout = None, selection_timeout(cmap, module, tests)
    record.update(selection=how, tests=len(tests))
    start = time.monotonic()
    if not tests:
        record["outcome"] = "not covered"
    else:
        with tempfile.TemporaryDirectory(prefix="interfuse-mutant-") as tmp:
            copy_root = Path(tmp) / "src"
            shutil.copytree(
                SRC, copy_root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
            (copy_root / Path(module).relative_to("src")).write_text(mutated)
            record["outcome"] = run_tests(copy_root, tests, keyword, timeout)
    record["seconds"] = round(time.monotonic() - start, 1)
    return record


def read_results(path: Path) -> dict[str, dict]:
    """Last record per mutant id."""
    latest: dict[str, dict] = {}
    if path.exists():
        for text in path.read_text().splitlines():
            if text.strip():
                record = json.loads(text)
                latest[record["id"]] = record
    return latest


def summarise(path: Path, modules: list[str]) -> float:
    latest = read_results(path)
    rows, survivors = [], []
    totals = dict.fromkeys(["sites", "run", "killed", "timeout", "nc", "survived", "error"], 0)
    print(
        "\n| module | mutants | run | killed | timed out | not covered | survived | score |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for module in modules:
        source = (ROOT / module).read_text()
        sha = hashlib.sha256(source.encode()).hexdigest()
        mine = [r for r in latest.values() if r["module"] == module and r["source_sha"] == sha]
        mine = [r for r in mine if r["outcome"] != "error"]
        count = {
            "sites": len(sites(ast.parse(source))),
            "run": len(mine),
            "killed": sum(r["outcome"] == "killed" for r in mine),
            "timeout": sum(r["outcome"] == "timeout" for r in mine),
            "nc": sum(r["outcome"] == "not covered" for r in mine),
            "survived": sum(r["outcome"] == "survived" for r in mine),
            "error": sum(r["outcome"] == "error" for r in latest.values() if r["module"] == module),
        }
        for k in totals:
            totals[k] += count[k]
        score = (count["killed"] + count["timeout"]) / count["run"] if count["run"] else 0.0
        rows.append(module)
        print(
            f"| `{module.removeprefix('src/interfuse/')}` | {count['sites']} | {count['run']} | "
            f"{count['killed']} | {count['timeout']} | {count['nc']} | {count['survived']} | "
            f"{score:.1%} |"
        )
        survivors += sorted(
            (r for r in mine if r["outcome"] in ("survived", "not covered")),
            key=lambda r: (r["line"], r["col"]),
        )
    done = totals["killed"] + totals["timeout"]
    score = done / totals["run"] if totals["run"] else 0.0
    print(
        f"| all | {totals['sites']} | {totals['run']} | {totals['killed']} | {totals['timeout']} "
        f"| {totals['nc']} | {totals['survived']} | {score:.1%} |"
    )
    if totals["error"]:
        print(f"{totals['error']} mutants ended in a pytest usage error (not counted); rerun them")
    for r in survivors:
        print(
            f"{r['outcome'].upper():12} {r['module']}:{r['line']}:{r['col']} {r['operator']}: "
            f"{r['code']}"
        )
    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=0, help="mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--module", action="append", help="limit to these target files")
    parser.add_argument(
        "--line",
        action="append",
        help="limit to mutants on FILE:LINE (their records are added to the results file)",
    )
    parser.add_argument("--select", choices=["coverage", "all"], default="coverage")
    parser.add_argument(
        "--output",
        help="results file (default: mutation-results.jsonl; with --sample, mutation-sample.jsonl)",
    )
    parser.add_argument("--resume", action="store_true", help="skip mutants already recorded")
    parser.add_argument("--rerun-survivors", action="store_true")
    parser.add_argument("--summary", action="store_true", help="only print the recorded results")
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="start a fresh interpreter per mutant instead of forking warm workers",
    )
    args = parser.parse_args()

    modules = [m for m in TARGETS if not args.module or m in args.module]
    if args.module and len(modules) != len(set(args.module)):
        parser.error(f"--module must be among {list(TARGETS)}")
    output = Path(
        args.output or ("mutation-sample.jsonl" if args.sample else "mutation-results.jsonl")
    )
    if args.summary:
        summarise(output, modules)
        return 0

    rng = random.Random(args.seed)
    by_module: dict[str, list[dict]] = {}
    for module in [m for m in SAMPLE_ORDER if m in modules]:
        source = (ROOT / module).read_text()
        sha = hashlib.sha256(source.encode()).hexdigest()
        numbered = list(enumerate(sites(ast.parse(source))))
        chosen = numbered
        if args.sample and args.sample < len(numbered):
            chosen = sorted(rng.sample(numbered, args.sample), key=lambda s: s[1][0])
        by_module[module] = [
            {"id": f"{module}#{n}", "module": module, "source": source, "site": site,
             "source_sha": sha}
            for n, site in chosen
        ]  # fmt: skip
        print(f"{module}: {len(numbered)} mutants, {len(chosen)} chosen", flush=True)
    jobs = [job for module in modules for job in by_module[module]]
    if args.line:
        wanted = {(f, int(n)) for f, n in (spec.rsplit(":", 1) for spec in args.line)}
        jobs = [
            j for j in jobs
            if any(j["module"].endswith(f) and mutate(j["source"], j["site"])[1] == n
                   for f, n in wanted)
        ]  # fmt: skip
    recorded = read_results(output)
    if args.rerun_survivors:
        jobs = [
            j for j in jobs
            if j["id"] in recorded and recorded[j["id"]]["source_sha"] == j["source_sha"]
            and recorded[j["id"]]["outcome"] in ("survived", "not covered")
        ]  # fmt: skip
    elif args.resume:
        jobs = [
            j for j in jobs
            if not (j["id"] in recorded and recorded[j["id"]]["source_sha"] == j["source_sha"]
                    and recorded[j["id"]]["outcome"] != "error")
        ]  # fmt: skip
    elif output.exists() and not args.line:
        output.unlink()  # a fresh run (a --line run only adds the records of its mutants)
    print(f"running {len(jobs)} mutants", flush=True)
    run_modules = list(dict.fromkeys(j["module"] for j in jobs))

    cmap, full_timeouts = None, {}
    if args.select == "coverage" and jobs:
        cmap = build_coverage_map(run_modules)
    elif jobs:  # baseline: the unmutated copy must pass, and sets the timeout per module
        measured = {}
        for module in run_modules:
            key = (tuple(TARGETS[module]), TEST_FILTER.get(module))
            if key not in measured:  # one baseline per distinct test selection
                start = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="interfuse-mutant-") as tmp:
                    copy_root = Path(tmp) / "src"
                    shutil.copytree(SRC, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
                    outcome = run_tests(copy_root, list(key[0]), key[1], 900)
                if outcome != "survived":
                    print(f"{module}: the unmutated tests fail ({outcome}); fix that first")
                    return 1
                measured[key] = time.monotonic() - start
                print(f"{module}: baseline {measured[key]:.0f} s", flush=True)
            full_timeouts[module] = 3 * measured[key] + 10

    if jobs and not args.no_worker:
        global USE_WORKERS
        USE_WORKERS = True
        for _ in range(args.jobs):
            _workers.put(Worker())
    lock = threading.Lock()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool, output.open("a") as out:
        futures = [pool.submit(check_mutant, job, cmap, full_timeouts) for job in jobs]
        for n, future in enumerate(as_completed(futures), 1):
            r = future.result()
            with lock:
                out.write(json.dumps(r) + "\n")
                out.flush()
            print(
                f"[{n}/{len(futures)} {time.monotonic() - start:.0f}s] {r['outcome']:11} "
                f"{r['module']}:{r['line']}:{r['col']} {r['operator']} "
                f"({r['selection']}, {r['tests']} tests, {r['seconds']} s)",
                flush=True,
            )
    while not _workers.empty():
        _workers.get().close()
    summarise(output, modules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
