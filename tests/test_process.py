"""runner/training/process.py: freed host memory stays mapped between calls of a program, and the prompt exit ends the
process as `sys.exit` would. Each case runs in a fresh interpreter: both act on the whole process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, USER_XLA_FLAGS

# A 64 MiB block, freed and allocated again, each time filled by this thread: above glibc's largest mmap threshold
# (32 MiB), so by default each allocation maps it afresh and the fill faults in every page (16,384 of them); with
# the runner's settings the freed block stays in the heap and the second fill faults in none. The faults are this
# thread's own (RUSAGE_THREAD) and come from its own memset, so the count is the same under any load. What it buys
# a compiled program (XLA's temporaries, ms per call) is measured by `make bench`'s chunk row.
FAULTS_PER_ALLOCATION = """
import ctypes, resource
from runner.training.process import keep_freed_host_memory
kept = keep_freed_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
block = libc.malloc(size)
ctypes.memset(block, 2, size)
print(kept, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
"""


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter, with XLA's optimizations (unoptimized, the cumulative sum is slow)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": USER_XLA_FLAGS, **env}, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_large_block_freed_and_allocated_again_is_reused_instead_of_faulted_in_again():
    kept, default = python(FAULTS_PER_ALLOCATION), python(FAULTS_PER_ALLOCATION, RUNNER_KEEP_HOST_MEMORY="0")
    assert kept.returncode == 0 and default.returncode == 0, kept.stderr + default.stderr
    kept_set, kept_faults = kept.stdout.split()
    default_set, default_faults = default.stdout.split()
    assert (kept_set, default_set) == ("True", "False")
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert int(default_faults) >= pages  # the definition: a fresh mapping, every page faulted in on first touch
    assert int(kept_faults) < pages / 100


def test_the_prompt_exit_waits_for_threads_runs_atexit_handlers_and_keeps_the_exit_code(tmp_path):
    done = python(f"""
        import atexit, threading, time
        from pathlib import Path
        from runner.training.process import exit_promptly

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
    done = python(f"from runner.training.process import exit_promptly; exit_promptly({code!r})")
    assert (done.returncode, done.stderr) == (returncode, stderr)
