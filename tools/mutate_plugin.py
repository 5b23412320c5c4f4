"""pytest plugin used by ``tools/mutate.py`` while it maps lines to tests (not for normal runs).

Loaded with ``-p mutate_plugin`` (``tools/`` on ``PYTHONPATH``) during the coverage run. It writes
to the JSON file named by ``$INTERFUSE_MUTATE_TESTS``, for every test that ran: its total
duration (setup + call + teardown, seconds), its outcome, and the fixtures wider than function
scope it uses (``baseid::name``). A line that such a fixture executes is recorded by coverage in
the context of the first test that set the fixture up, so the mutation tester widens a selection
to every test sharing that fixture.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

_durations: dict[str, float] = defaultdict(float)
_setup: dict[str, float] = defaultdict(float)
_failed: set[str] = set()
_shared: dict[str, list[str]] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = []
        if info is not None:
            for name, defs in info.name2fixturedefs.items():
                if defs and defs[-1].scope != "function":
                    shared.append(f"{defs[-1].baseid}::{name}")
        _shared[item.nodeid] = sorted(shared)


def pytest_runtest_logreport(report):
    _durations[report.nodeid] += report.duration
    if report.when == "setup":
        _setup[report.nodeid] += report.duration
    if report.failed:
        _failed.add(report.nodeid)


def pytest_sessionfinish(session):
    path = os.environ.get("INTERFUSE_MUTATE_TESTS")
    if not path:
        return
    tests = {
        nodeid: {
            "duration": _durations.get(nodeid, 0.0),
            "setup": _setup.get(nodeid, 0.0),
            "failed": nodeid in _failed,
            "shared_fixtures": shared,
        }
        for nodeid, shared in _shared.items()
        if nodeid in _durations
    }
    with open(path, "w") as f:
        json.dump(tests, f, indent=1)
