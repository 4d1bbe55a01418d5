"""SIGTERM and Ctrl-C end a run between epochs, after a checkpoint, instead of mid-write.

SLURM pre-emption sends SIGTERM, so it takes the same path as Ctrl-C. A second signal stops the process at
once (the signal's default action), so nothing — a long or stuck compiled epoch included — makes it deaf.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run was stopped by a signal; its checkpoint and summary are written."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum  # the shell's convention for death by signal


@contextmanager
def deferred_signals() -> Iterator[threading.Event]:
    """Yields an event set by SIGTERM/SIGINT; the loop checks it at each epoch boundary."""
    received = threading.Event()
    received.signum = None

    def handler(signum, frame):
        del frame
        if received.is_set():  # the second signal: the user will not wait for the epoch to end
            signal.signal(signum, signal.SIG_DFL)  # even mid-way through a compiled epoch
            signal.raise_signal(signum)
            return
        received.signum = signum
        received.set()

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield received
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
