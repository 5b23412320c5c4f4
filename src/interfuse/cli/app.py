"""The ``interfuse`` command group, its error boundary, and helpers shared by its commands."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..results import REPORT, RelevanceEstimates, RunResult
from ..train import TrainingInterrupted

EXIT_INVALID = 1
"""Invalid input: data, options, run folder or checkpoint (a ``ValueError``), or a missing file."""
EXIT_USAGE = 2
"""Wrong command-line usage (click's own errors)."""
EXIT_FILESYSTEM = 3
"""The file system refused: disk full, read-only, permission denied, … (errno and path shown)."""
EXIT_MEMORY = 4
"""Not enough memory for the requested model or data (checked before allocating where possible)."""
EXIT_DIVERGED = 5
"""Training diverged: the loss became NaN or infinite (the last good checkpoint is kept)."""
EXIT_INTERNAL = 70
"""A bug: an unexpected exception (rerun with ``interfuse --debug ...`` for the traceback)."""
EXIT_BROKEN_PIPE = 141
"""The reader of standard output went away (``interfuse datasets | head``): 128 + SIGPIPE."""

EXIT_CODES = {
    0: "success",
    EXIT_INVALID: "invalid input (data, options, run folder, checkpoint) or a missing file",
    EXIT_USAGE: "wrong command-line usage",
    EXIT_FILESYSTEM: "file-system error (disk full, read-only, permission denied), with its path",
    EXIT_MEMORY: "not enough memory for the requested model or data",
    EXIT_DIVERGED: "training diverged (non-finite loss); the last good checkpoint is kept",
    EXIT_INTERNAL: "internal error (a bug; --debug shows the traceback)",
    130: "interrupted by SIGINT (128 + signal; the run is resumable)",
    143: "terminated by SIGTERM (128 + signal; the run is resumable)",
    EXIT_BROKEN_PIPE: "standard output closed by its reader (e.g. | head): stopped quietly",
}
"""Every exit status of ``interfuse`` (also listed in ``interfuse --help``)."""


class CommandError(click.ClickException):
    """One line on stderr (``Error: ...``) and an exit status from :data:`EXIT_CODES`."""

    def __init__(self, message: str, exit_code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: str) -> str:
    """Collapse a message onto one line (library errors may wrap)."""
    return " ".join(str(text).split())


def describe_os_error(error: OSError) -> str:
    """``'cannot write: No space left on device [ENOSPC]: /runs/x/last.safetensors'``."""
    code = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or str(error)
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return one_line(
        f"{reason}{f' [{code}]' if code else ''}{': ' + ' -> '.join(paths) if paths else ''}"
    )


def debug_enabled() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.find_root().params.get("debug"))


def translate_error(error: BaseException) -> CommandError | None:
    """The one-line error of the boundary for ``error`` (``None``: let it propagate)."""
    code = getattr(error, "exit_code", None)
    if isinstance(error, click.ClickException):
        return None
    enomem = isinstance(error, OSError) and error.errno == errno.ENOMEM
    if (
        isinstance(error, MemoryError)
        or enomem
        or (isinstance(error, RuntimeError) and _is_out_of_memory(str(error)))
    ):
        detail = (
            describe_os_error(error)
            if isinstance(error, OSError)
            else one_line(str(error)) or "the system refused an allocation"
        )
        return CommandError(
            f"out of memory ({detail}); lower the batch size, rank or interactions, or use "
            f"less data",
            EXIT_MEMORY,
        )
    if isinstance(error, (ValueError, FileNotFoundError)) and not (
        isinstance(error, FileNotFoundError) and error.errno is not None
    ):
        return CommandError(one_line(str(error)), code if isinstance(code, int) else EXIT_INVALID)
    if isinstance(error, FileNotFoundError):
        return CommandError(describe_os_error(error), EXIT_INVALID)
    if isinstance(error, OSError):
        return CommandError(describe_os_error(error), EXIT_FILESYSTEM)
    if isinstance(error, Exception):
        return CommandError(
            f"internal error: {type(error).__name__}: {one_line(str(error))} (a bug; rerun "
            f"with 'interfuse --debug ...' for the traceback and report it)",
            EXIT_INTERNAL,
        )
    return None


def _is_out_of_memory(text: str) -> bool:
    text = text.lower()
    return (
        "out of memory" in text
        or "can't allocate memory" in text
        or ("allocate" in text and "bytes" in text)
    )


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The error boundary of every command: each failure becomes one line on stderr and an
    exit status of :data:`EXIT_CODES` — validation errors (``ValueError``) and missing files 1,
    file-system errors (with errno name and path) 3, ``MemoryError`` and ENOMEM 4, a diverged
    run 5, an interrupted run 128 + the signal number, anything unexpected 70. ``interfuse
    --debug`` re-raises instead, showing the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrainingInterrupted as stop:
            if debug_enabled():
                raise
            click.echo(f"Error: {stop}", err=True)
            raise SystemExit(stop.exit_code) from None
        except KeyboardInterrupt:
            # Ctrl-C outside the training loop (which turns it into TrainingInterrupted): 130,
            # not click's "Aborted!" with status 1 (invalid input)
            if debug_enabled():
                raise
            click.echo("Error: interrupted by SIGINT", err=True)
            raise SystemExit(128 + signal.SIGINT) from None
        except BrokenPipeError:
            # stdout's reader stopped reading (`| head`): no error line, and nothing more is
            # flushed into the closed pipe at exit (Python would report that as an exception)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        except Exception as error:
            translated = translate_error(error)
            if translated is None or debug_enabled():
                raise
            raise translated from None

    return wrapper


def progress_bars(quiet: bool) -> bool:
    """Whether a command shows progress bars: only on a terminal (not in logs or pipes), and
    not with ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def float_list(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint=option
        ) from None


def parse_interactions(text: str) -> str | int | list[str]:
    if text in ("none", "pairs", "all"):
        return text
    if text.isdigit():
        return int(text)
    if "*" not in text and "," not in text:  # a misspelt keyword (pair): the library names it
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def print_run(title: str, result: RunResult, out: Path) -> None:
    """A finished run in a few lines: test score, relevance table, ground truth, report path."""
    test = result.metrics.get("test", {})
    truth = result.ground_truth or {}
    line = (
        f"test accuracy {test['accuracy']:.3f}"
        if "accuracy" in test
        else f"test loss {test['loss']:.4f}"
    )
    if "bayes_accuracy" in truth:
        line += f" (Bayes-optimal {truth['bayes_accuracy']:.3f})"
    click.echo(f"\n== {title}")
    if result.verdict is not None:
        click.echo(result.verdict.headline)
    click.echo(
        f"{line}; best epoch {result.best_epoch} of {result.epochs_run}"
        + (
            f" ({result.selected_attempt})"
            if result.selected_attempt is not None and result.attempts > 1
            else ""
        )
        + f", {result.train_seconds:.0f} s"
    )
    if result.relevance is not None and result.estimates is not None:
        click.echo(estimates_text(result.estimates))
    elif result.relevance is not None:
        click.echo(result.relevance.table())
        evidence = result.relevance_evidence
        if evidence is not None:
            click.echo(
                f"held-out share [{evidence.level:.0%} interval] and verdict "
                f"(term removal on {evidence.split}, false-positive rate {evidence.alpha:g}):"
            )
            for t in result.relevance.ranking():
                e = evidence.terms.get(t)
                if e is not None:
                    click.echo(
                        f"  {t:<12} {e.heldout_share:.3f} [{e.share_low:.3f}, "
                        f"{e.share_high:.3f}]  {e.verdict} (p={e.p_value:.3f})"
                    )
    else:
        click.echo("no built-in relevance (baseline); post-hoc: interfuse explain " + str(out))
    if result.truth_shares:
        expected = ", ".join(f"{t} {s:.3f}" for t, s in result.truth_shares.items() if s > 0)
        click.echo(f"ground-truth shares: {expected}")
    click.echo(f"report: {out / REPORT}")


def estimates_text(estimates: RelevanceEstimates) -> str:
    """Plain text: the headline share of every term with its interval and verdict, beside the
    other estimators' shares (sorted by the headline share)."""
    best = estimates.best
    others = [e for name, e in estimates.estimates.items() if name != estimates.headline]
    width = max(len("term"), *(len(t) for t in best.terms))
    lines = [
        f"relevance: {best.label} ({estimates.split} split, {estimates.level:.0%} interval; "
        f"verdict: share > {estimates.margin:g} at false-positive rate {estimates.alpha:g})",
        f"{'term':<{width}}  {'share':>5}  {'interval':<15}  {'verdict':<15}  "
        + "  ".join(f"{e.label}" for e in others),
    ]
    for t in sorted(best.terms, key=lambda t: -best.terms[t].share):
        e = best.terms[t]
        interval = f"[{e.low:.3f}, {e.high:.3f}]" if e.low == e.low else "—"
        cells = "  ".join(f"{o.terms[t].share:>{len(o.label)}.3f}" for o in others if t in o.terms)
        lines.append(f"{t:<{width}}  {e.share:5.3f}  {interval:<15}  {e.verdict:<15}  {cells}")
    return "\n".join(lines)


class _LogToStderr(logging.Handler):
    """Library notes (``logging.getLogger("interfuse")``) as ``note: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", err=True)


def _exit_codes_help() -> str:
    return "\b\nExit status:\n" + "\n".join(f"  {c:>3}  {w}" for c, w in EXIT_CODES.items())


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_exit_codes_help())
@click.version_option(package_name="interfuse")
@click.option(
    "--debug", is_flag=True, help="Show the full traceback of an error instead of one line."
)
def main(debug: bool) -> None:
    """interfuse: interpretable multimodal deep learning.

    Trains MNL fusion models whose final layer has one block per modality and per interaction
    between modalities, and reports how much each block contributes (its relevance share).
    """
    logger = logging.getLogger("interfuse")
    if not any(isinstance(h, _LogToStderr) for h in logger.handlers):
        logger.addHandler(_LogToStderr())
    logger.setLevel(logging.INFO)
