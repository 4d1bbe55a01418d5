"""runner/training/interrupts.py: the first signal is recorded for the loop to act on; a second one stops the process at
once, even inside a compiled program that never returns (where no Python signal handler can run)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.conftest import ROOT

CHILD = """
import os, signal
from runner.training.process import prepare_training_process
prepare_training_process()  # as a run: CPU programs run on the calling thread, which no signal interrupts
import jax, jax.numpy as jnp
from runner.training.interrupts import deferred_signals

# sin keeps x finite, so x == x holds and the loop runs for ever.
forever = jax.jit(lambda x: jax.lax.while_loop(lambda x: x == x, jnp.sin, x)).lower(jnp.float32(1.0)).compile()
with deferred_signals() as received:
    os.kill(os.getpid(), signal.{name})
    print("first seen" if received.is_set() and received.signum == signal.{name} else "first lost", flush=True)
    forever(jnp.float32(1.0)).block_until_ready()
    print("returned", flush=True)
"""


@pytest.mark.parametrize("first, second", [("SIGINT", "SIGINT"), ("SIGTERM", "SIGINT"), ("SIGINT", "SIGTERM")])
def test_a_second_signal_stops_a_compiled_program_that_never_returns(first, second):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD.format(name=first))], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "first seen\n", child.stderr.read()
        time.sleep(1)  # into the program: a signal before it would be handled in Python and prove nothing
        child.send_signal(getattr(signal, second))
        out, _ = child.communicate(timeout=60)  # a hang guard: without the default action it would never end
    finally:
        child.kill()
    assert child.returncode == -getattr(signal, second)
    assert "returned" not in out


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_the_handlers_before_the_run_come_back_after_it():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    from runner.training.interrupts import deferred_signals

    with deferred_signals() as received:
        signal.raise_signal(signal.SIGINT)
        assert received.is_set() and signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert {s: signal.getsignal(s) for s in before} == before
