"""runner/process.py: freed host memory stays mapped between calls of a program, and the prompt exit ends the
process as `sys.exit` would. Each case runs in a fresh interpreter: both act on the whole process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, USER_XLA_FLAGS

# A program whose cumulative sum is a 64 MiB temporary: above glibc's largest mmap threshold (32 MiB), so by
# default each call maps it afresh and faults in every page of it (16,384 of them) on first touch.
FAULTS_PER_CALL = """
import resource
from runner.process import keep_freed_host_memory
kept = keep_freed_host_memory()
import jax, jax.numpy as jnp

@jax.jit
def f(x):
    y = jnp.cumsum(x)
    return y[::2].sum() - y[1::2].max()

x = jax.random.normal(jax.random.PRNGKey(0), (16 * 2**20,))
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter, with XLA's optimizations (unoptimized, the cumulative sum is slow)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": USER_XLA_FLAGS, **env}, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_calls_of_a_program_reuse_its_temporary_instead_of_faulting_it_in_again():
    kept, default = python(FAULTS_PER_CALL), python(FAULTS_PER_CALL, RUNNER_KEEP_HOST_MEMORY="0")
    assert kept.returncode == 0 and default.returncode == 0, kept.stderr + default.stderr
    kept_set, kept_faults = kept.stdout.split()
    default_set, default_faults = default.stdout.split()
    assert (kept_set, default_set) == ("True", "False")
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert float(default_faults) > pages / 2  # the definition: the temporary is faulted in again on each call
    assert float(kept_faults) < pages / 20


def test_the_prompt_exit_waits_for_threads_runs_atexit_handlers_and_keeps_the_exit_code(tmp_path):
    done = python(f"""
        import atexit, threading, time
        from pathlib import Path
        from runner.process import exit_promptly

        out = Path({str(tmp_path)!r})
        threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        print("buffered", end="")
        exit_promptly(3)
        """)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


@pytest.mark.parametrize("code, returncode, stderr", [(None, 0, ""), ("no such thing", 1, "no such thing\n")])
def test_the_prompt_exit_treats_none_and_messages_as_sys_exit_does(code, returncode, stderr):
    done = python(f"from runner.process import exit_promptly; exit_promptly({code!r})")
    assert (done.returncode, done.stderr) == (returncode, stderr)
