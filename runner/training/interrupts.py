"""SIGTERM and Ctrl-C end a run at the end of the running chunk of steps, after a checkpoint, not mid-write.

SLURM pre-emption sends SIGTERM, so it takes the same path as Ctrl-C. Once the first signal has been seen
(at most a chunk, ~0.5 s, after it came: Python runs signal handlers between its own instructions, never
inside a compiled program), both signals take their default action again, so a second one stops the process
at once, wherever it is, a compiled program that never returns included.
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
    """Yields an event set by SIGTERM/SIGINT; the loop checks it at each chunk's end."""
    received = threading.Event()
    received.signum = None

    def handler(signum, frame):
        del frame
        received.signum = signum
        received.set()
        for s in SIGNALS:  # a second signal is the OS's to act on: no Python code need run for it
            signal.signal(s, signal.SIG_DFL)

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield received
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
