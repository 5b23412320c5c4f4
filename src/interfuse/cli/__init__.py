"""The ``interfuse`` command line: one module per group of commands, all on :data:`main`.

A layer on top of the library: commands parse options, build data and a
:class:`~interfuse.train.TrainConfig` (options derived from its fields), call
:func:`interfuse.train.fit` or :func:`interfuse.load_run`, and render and print typed results.
Errors the user can fix are printed as one line and exit with status 1 (see
:func:`interfuse.cli.app.user_errors`).
"""

from . import coordinated, data, explain, predict, report, train  # noqa: F401  (registers them)
from .app import main

__all__ = ["main"]
