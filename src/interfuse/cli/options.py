"""Click options derived from :class:`~interfuse.train.TrainConfig`: defaults and help live once.

Every field of ``TrainConfig`` becomes an option (``batch_size`` → ``--batch-size``; booleans
``--iterbn/--no-iterbn``; ``model`` a choice among the registered models). Only the options the
user gives reach ``TrainConfig``, so a dataset's own defaults fill the rest (see
:meth:`TrainConfig.with_defaults`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, fields
from typing import Any

import click
from click.core import ParameterSource

from ..models import MODELS
from ..train import TrainConfig
from ..train.config import CLASS_WEIGHTS
from .app import parse_interactions

__all__ = ["config_from_options", "config_options", "given_options"]

_PARSERS: dict[str, Callable[[Any], Any]] = {"interactions": parse_interactions}


def _option(f: Field[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        return click.option(
            f"{flag}/--no-{f.name.replace('_', '-')}",
            f.name,
            default=default,
            show_default=True,
            help=help_text,
        )
    if f.name == "model":
        return click.option(
            flag,
            f.name,
            default=default,
            show_default=True,
            type=click.Choice(MODELS.names()),
            help=help_text
            + " "
            + "; ".join(f"{n}: {MODELS.get(n).summary}" for n in MODELS.names())
            + ".",
        )
    if f.name == "class_weights":
        return click.option(
            flag,
            f.name,
            default=default,
            show_default=True,
            type=click.Choice(CLASS_WEIGHTS),
            help=help_text,
        )
    kind = {int: int, float: float, str: str}.get(type(default), float)  # None → float
    return click.option(
        flag,
        f.name,
        default=default,
        show_default=default is not None,
        type=kind,
        help=help_text,
    )


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with one option per :class:`TrainConfig` field."""
    for f in reversed(fields(TrainConfig)):
        command = _option(f)(command)
    return command


def given_options(context: click.Context, names: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``names`` that the user set on the command line (not defaults)."""
    return {
        k: v
        for k, v in names.items()
        if context.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)
    }


def config_from_options(given: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` of the options the user gave (the rest stays unset)."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: _PARSERS.get(k, lambda v: v)(v) for k, v in given.items() if k in known}
    try:
        return TrainConfig(**values)
    except ValueError as error:
        message = str(error)
        for name in sorted(values, key=len, reverse=True):  # the setting the message is about
            if message.startswith(name + " "):
                raise click.BadParameter(message, param_hint=_flag(name)) from None
        raise


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
