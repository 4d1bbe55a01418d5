"""Keep freed host memory in the process, so that each call of a compiled program reuses pages already mapped.

XLA's CPU runtime allocates an executable's temporaries on every call and frees them after it: 235 MiB for
the bench CNN's step at batch 128. glibc serves an allocation that large with a fresh mmap and gives it back
with munmap, so every call faults the whole buffer in again, page by page: ~60,000 page faults, ~50 ms a
call on this CNN, paid once per chunk of an epoch (runner/loop.py) and once per whole epoch. Measured on
the bench CNN (8 steps, 2 CPU cores): 8 one-step calls took 1.32 s, against 0.75 s with freed memory kept.

Two glibc settings keep it: no mmap for large requests and no trimming of the heap's free top. They hold
only for the main thread's arena (other threads' arenas map a large request afresh whatever the settings),
so JAX's CPU dispatch is made synchronous: a program runs on the thread that calls it. Nothing waits
longer for it, since the loop reads every chunk's metrics as soon as the chunk ends. The cost: the process
keeps its peak host memory until it exits, as a training process does anyway.
`RUNNER_KEEP_HOST_MEMORY=0` leaves both defaults; on a C library without `mallopt` (macOS, musl) this does
nothing.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_INT_MAX = 2**31 - 1


def keep_freed_host_memory() -> bool:
    """Keep freed host memory mapped for the programs JAX runs on the CPU; True if set. Call it before JAX
    runs anything."""
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
