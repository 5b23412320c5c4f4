"""Stop training cleanly on SIGINT/SIGTERM, keeping the last complete epoch's checkpoint.

The handlers only record the signal; the training loop stops at the next batch boundary, the
partial epoch is discarded, and ``last.safetensors`` (written after every complete epoch) stays
the resume point. A resumed run therefore reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal; ``epoch`` complete epochs are saved and resumable."""

    def __init__(self, signum: int, epoch: int, checkpoint: str) -> None:
        self.signum = signum
        self.epoch = epoch
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} after {epoch} complete epoch(s); {checkpoint} is resumable "
            f"(run the same command with --resume)"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptFlag:
    """Which signal, if any, asked training to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum


@contextmanager
def catch_interrupts(
    flag: InterruptFlag, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[InterruptFlag]:
    """Let ``flag`` record ``signals`` (main thread only); restore the old handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, flag._handle) for s in signals}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def install_handlers(
    flag: InterruptFlag, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
) -> None:
    """Make ``flag`` the handler of ``signals`` again (main thread only), replacing handlers a
    library installed meanwhile; :func:`catch_interrupts` still restores the original ones."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in signals:
        signal.signal(s, flag._handle)
