"""Every Python block of the README runs, in order, as one session (as a reader pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


def test_every_readme_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ folders land in a temporary directory
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for number, block in enumerate(BLOCKS, start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - report which block failed
            pytest.fail(f"README python block {number} failed: {type(error).__name__}: {error}")


ROOT = README.parent
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """`<a id>` anchors and GitHub's heading slugs of a markdown page."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.*)$", text, flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_doc_links_stay_inside_the_repository_and_resolve(page):
    """Every link of the README and docs/ is a file (and anchor) of this repository; no page
    sends a reader to another project's site or code."""
    text = page.read_text(encoding="utf-8")
    outside = re.findall(r"https?://\S+|\bgithub\.com/\S+", text)
    assert not outside, f"{page.name} points outside the repository: {outside}"
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        path, _, fragment = link.partition("#")
        target = page.parent / path if path else page
        if not target.exists():
            broken.append(link)
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(link)
    assert not broken, f"{page.name}: links to missing files or anchors: {broken}"


def test_every_list_of_settings_that_may_change_on_resume_is_complete():
    """Wherever the README or docs/ list the training settings a resume may change, they name
    every field of ``interfuse.train.RESUMABLE_CHANGES`` (as a field or as its option)."""
    from interfuse.train import RESUMABLE_CHANGES

    incomplete, checked = [], []
    for page in DOCS:
        paragraphs = re.split(r"\n\s*\n|\n(?=\s*[*-] )", page.read_text(encoding="utf-8"))
        for paragraph in paragraphs:
            flat = " ".join(paragraph.split())
            if not re.search(r"may change|except|anything but", flat):
                continue
            if not re.search(r"`(--)?epochs`", flat):
                continue  # not a list of training settings (e.g. the device options)
            checked.append(page.name)
            missing = [
                field
                for field in sorted(RESUMABLE_CHANGES)
                if not re.search(field.replace("_", "[-_]"), flat)
            ]
            if missing:
                incomplete.append(f"{page.name}: {flat[:80]}… lacks {missing}")
    assert {"README.md", "run-folder.md", "scaling.md", "training.md"} <= set(checked), checked
    assert not incomplete, "\n".join(incomplete)


# Options of other programs that the pages show: pip, torchrun, pytest.
FOREIGN_OPTIONS = {
    "--no-deps",
    "--nnodes",
    "--nproc-per-node",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--import-mode",
}


def test_every_option_the_docs_show_exists():
    """Every ``--option`` of the README and docs/ (but testing.md, about tools/mutate.py) is an
    option of some ``interfuse`` command, so a renamed or removed option cannot stay documented."""
    import click

    from interfuse.cli import main

    options = set()

    def collect(command: click.Command, ctx: click.Context) -> None:
        for param in command.get_params(ctx):
            options.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                collect(sub, click.Context(sub, info_name=name, parent=ctx))

    collect(main, click.Context(main, info_name="interfuse"))
    unknown = [
        f"{page.name}:{number}: {option}"
        for page in DOCS
        if page.name != "testing.md"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", line)
        if option not in options and option not in FOREIGN_OPTIONS
    ]
    assert not unknown, f"options the CLI does not have: {unknown}"


def test_run_folder_doc_lists_every_results_key():
    """docs/run-folder.md §2 lists exactly the keys of ``results.json`` (``RunResult``)."""
    import dataclasses

    from interfuse.results import SCHEMA, RunResult

    text = (ROOT / "docs" / "run-folder.md").read_text(encoding="utf-8")
    section = text.split('<a id="results-schema"></a>', 1)[1].split("<a id=", 1)[0]
    documented = {
        key
        for row in re.findall(r"^\| (`[^|]+) \|", section, flags=re.M)
        for key in re.findall(r"`(\w+)`", row)
    }
    assert documented == {field.name for field in dataclasses.fields(RunResult)}
    assert f"schema `{SCHEMA}`" in section
