"""Small mutation tester for interfuse's core math (``make mutation``; not part of ``make test``).

For each target module it parses the source, lists mutation sites and, for each mutant (one
site changed), copies ``src/`` to a temporary folder with the mutated module, runs the module's
targeted tests against that copy (``PYTHONPATH`` first on the path) with a timeout, and counts
the mutant as killed when the tests fail or time out.

Operators (AST level): arithmetic swaps (``+``↔``-``, ``*``↔``/``, ``**``→``*``, ``//``→``/``),
comparison swaps (``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``is``↔``is not``, ``in``↔``not in``),
``and``↔``or``, ``not x``→``x``, unary minus removed, numeric constants changed (``0``→``1``,
``1``→``0``/``2``, other ``n``→``n+1``; floats ``x``→``x+1``), ``True``↔``False``.
Docstrings, annotations and ``raise ...`` messages are left alone.

Usage: ``python tools/mutate.py [--sample N] [--seed S] [--jobs J] [--module NAME ...]``.
``--sample N`` draws N mutants per module uniformly at random (``random.Random(seed)``) from all
its sites; without it every mutant runs. Survivors are printed as ``file:line:col op`` with the
mutated line, and written to ``mutation-results.json``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

FUSION_TESTS = [
    "tests/fusion",
    "tests/test_model.py",
]
TARGETS: dict[str, list[str]] = {
    "src/interfuse/fusion/norm.py": FUSION_TESTS,
    "src/interfuse/fusion/interactions.py": FUSION_TESTS,
    "src/interfuse/fusion/mnl.py": FUSION_TESTS,
    "src/interfuse/fusion/fast.py": FUSION_TESTS,
    "src/interfuse/model.py": [*FUSION_TESTS, "tests/test_missing.py"],
    "src/interfuse/data/synthetic.py": ["tests/data/test_synthetic.py"],
    "src/interfuse/metrics.py": ["tests/test_tasks.py", "tests/train/test_sentiment_metrics.py"],
}
# test_tasks.py also trains models; only its metric tests are needed for metrics.py
TEST_FILTER = {"src/interfuse/metrics.py": "metrics or weights"}

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


def run_tests(src_copy: Path, tests: list[str], keyword: str | None, timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=str(src_copy), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    if keyword:
        command += ["-k", keyword]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if result.returncode == 0 else "killed"


def check_mutant(module: str, source: str, site, timeout: float) -> dict:
    mutated, line, col = mutate(source, site)
    original_line = source.splitlines()[line - 1].strip()
    with tempfile.TemporaryDirectory(prefix="interfuse-mutant-") as tmp:
        copy_root = Path(tmp) / "src"
        shutil.copytree(SRC, copy_root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        (copy_root / Path(module).relative_to("src")).write_text(mutated)
        outcome = run_tests(copy_root, TARGETS[module], TEST_FILTER.get(module), timeout)
    return {
        "module": module,
        "line": line,
        "col": col,
        "operator": site[1],
        "code": original_line,
        "outcome": outcome,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=0, help="mutants per module (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--module", action="append", help="limit to these target files")
    parser.add_argument("--output", default="mutation-results.json")
    args = parser.parse_args()

    modules = args.module or list(TARGETS)
    rng = random.Random(args.seed)
    jobs = []
    for module in modules:
        source = (ROOT / module).read_text()
        all_sites = sites(ast.parse(source))
        chosen = all_sites
        if args.sample and args.sample < len(all_sites):
            chosen = sorted(rng.sample(all_sites, args.sample), key=lambda s: s[0])
        print(f"{module}: {len(all_sites)} mutants, running {len(chosen)}", flush=True)
        jobs += [(module, source, site) for site in copy.copy(chosen)]

    # baseline: the unmutated copy must pass, and sets the timeout per module
    timeouts, measured = {}, {}
    for module in modules:
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
        timeouts[module] = 3 * measured[key] + 10

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(check_mutant, m, s, site, timeouts[m]) for m, s, site in jobs]
        for n, future in enumerate(futures, 1):
            r = future.result()
            results.append(r)
            print(
                f"[{n}/{len(futures)}] {r['outcome']:8} {r['module']}:{r['line']}:{r['col']} "
                f"{r['operator']}",
                flush=True,
            )

    killed = sum(r["outcome"] != "survived" for r in results)
    score = killed / len(results) if results else 1.0
    print(f"\nmutation score: {killed}/{len(results)} = {score:.1%}")
    for module in modules:
        mine = [r for r in results if r["module"] == module]
        if mine:
            k = sum(r["outcome"] != "survived" for r in mine)
            print(f"  {module}: {k}/{len(mine)}")
    survivors = [r for r in results if r["outcome"] == "survived"]
    for r in survivors:
        print(f"SURVIVED {r['module']}:{r['line']}:{r['col']} {r['operator']}: {r['code']}")
    Path(args.output).write_text(json.dumps({"score": score, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
