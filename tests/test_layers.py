"""Dependencies flow one way: the import contracts of pyproject.toml hold, and no module imports
inside a function to dodge them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "interfuse"

OPTIONAL_LAZY_IMPORTS: dict[str, set[str]] = {
    # the [text] extra: a pretrained sentence encoder, loaded only when asked for
    "coordinated/text.py": {"transformers", "sentence_transformers"},
}
"""Function-level imports allowed per module: only optional heavy dependencies."""


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports (import-linter) is not installed; `make setup` installs it")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_imports_inside_functions():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    names = (
                        {inner.module or ""}
                        if isinstance(inner, ast.ImportFrom)
                        else {alias.name for alias in inner.names}
                    )
                    if not names <= OPTIONAL_LAZY_IMPORTS.get(module, set()):
                        offenders.append(f"{module}:{inner.lineno} {ast.unparse(inner)}")
    assert not offenders, "imports inside functions:\n" + "\n".join(offenders)
