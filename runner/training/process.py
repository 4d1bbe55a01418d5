"""What a training process sets once before JAX runs anything, and how it exits.

Freed host memory stays mapped. XLA's CPU runtime allocates an executable's temporaries on every call and
frees them after it: 235 MiB for the bench CNN's step at batch 128. glibc serves an allocation that large
with a fresh mmap and gives it back with munmap, so every call faults the whole buffer in again, page by
page: ~60,000 page faults, ~50 ms a call on this CNN, paid once per chunk of an epoch (runner/training/loop.py) and
once per whole epoch. Measured on the bench CNN (2 CPU cores): 8 one-step calls took 1.32 s, against 0.75 s
with freed memory kept. Two glibc settings keep it: no mmap for large requests and no trimming of the heap's
free top. They hold only for the main thread's arena (other threads' arenas map a large request afresh
whatever the settings), so JAX's CPU dispatch is made synchronous: a program runs on the thread that calls
it. Nothing waits longer for it, since the loop reads every chunk's metrics as soon as the chunk ends. The
cost: the process keeps its peak host memory until it exits, as a training process does anyway.
`RUNNER_KEEP_HOST_MEMORY=0` leaves both defaults; on a C library without `mallopt` (macOS, musl) nothing
changes.

Compiled programs are kept on disk (JAX's persistent cache), so a config run before starts training without
recompiling. Every program is kept, however quick its compile: a run compiles some twenty small ones (the
initializer, evaluation, the chunk and its start, the plateau decision), each ~45 ms on this CPU, against a few ms
to read back. Measured on a 1-epoch run of a small net (2 CPU cores): 4.35 s from start to exit with JAX's
default of caching only programs that took 1 s or more (0.2 s set here before), 3.1 s with every one kept (the
cache of that config: 312 KB).

The exit skips the interpreter's teardown: once every thread has ended, the atexit handlers have run and the
standard streams are flushed, nothing is left to write, yet tearing down the modules, JAX's client and their
threads took another 0.7 s after a run's last line.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_INT_MAX = 2**31 - 1


def prepare_training_process() -> None:
    """Keep freed host memory mapped and compiled programs on disk; once per process, before JAX runs anything."""
    import jax

    keep_freed_host_memory()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "runner" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def keep_freed_host_memory() -> bool:
    """Keep freed host memory mapped for the programs JAX runs on the CPU; True if set."""
    if os.environ.get("RUNNER_KEEP_HOST_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))):
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def exit_promptly(code: int | str | None) -> NoReturn:
    """End the process as `sys.exit(code)` would, without the interpreter's teardown: wait for the threads that
    would be waited for, run the atexit handlers, flush the standard streams, then exit."""
    if isinstance(code, str):  # as sys.exit does with a message
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # as the interpreter's exit: tell executors' threads to stop, then wait for them
    atexit._run_exitfuncs()  # logging's shutdown among them: log files flushed and closed
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    os._exit(code or 0)
