"""Devices and processes: the run's mesh, where its arrays live, and which process writes the run's files.

Data parallel, the standard layout for nets this size (parameters of megabytes, not gigabytes): one mesh axis,
`data`, over the run's devices; parameters, optimizer state and the dataset (small: it stays on every device)
replicated; each step's batch, gathered by index from the replicated dataset, constrained to `P('data')`. The
compiled programs are the one-device programs with shardings on their inputs and outputs: XLA's SPMD
partitioner gives each device its share of the batch and inserts the all-reduces, so the loss, the gradients
and batch-norm statistics are of the global batch, as on one device, up to the order of float sums. Random
draws (dropout, augmentation) are the same numbers on any number of devices: under jit a value never depends
on its sharding, and with `jax_threefry_partitionable` (on by default since jax 0.5) each device draws only
its own share instead of the whole array.

Several processes (hosts, or one process per GPU under SLURM): `initialize_processes` calls
`jax.distributed.initialize()` when the launcher says the run has several; the mesh then spans every
process's devices, every process runs the same steps, and only process 0 writes the run's files, except
checkpoints, which orbax saves collectively (every process calls save).

Nothing here imports jax at module level: preflight reads `process_index_from_env` before JAX starts.

A process other than 0 first waits, in Python, for process 0's coordinator to listen (`wait_for_coordinator`):
JAX's own client retries for `initialization_timeout` (300 s) and then aborts the process with a C++ stack dump,
so an address nothing listens on would cost five minutes and end in one. Processes of one run start together;
process 0 must listen within RUNNER_COORDINATOR_WAIT_S seconds (10) of this process's start, or the run ends
with one line naming the address.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Any, Mapping

import numpy as np

from runner.errors import UserError, first_line

AXIS = "data"  # the one mesh axis: the batch is split along it
# A launch by hand, or by a launcher other than srun: every process gets JAX_COORDINATOR_ADDRESS (process 0's
# host:port, which jax.distributed.initialize reads itself), JAX_NUM_PROCESSES and its own JAX_PROCESS_ID (which
# it does not: it takes the count and index only from a cluster it detects, SLURM among them). The runner reads them.
NUM_PROCESSES, PROCESS_ID = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# srun sets the SLURM_STEP_* variables for the tasks of a job step; the batch script itself also has SLURM_NTASKS
# and SLURM_PROCID=0, but is one process, and must not wait for others.
SLURM_TASKS, SLURM_TASK = "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"
COORDINATOR = "JAX_COORDINATOR_ADDRESS"
WAIT, DEFAULT_WAIT_S = "RUNNER_COORDINATOR_WAIT_S", 10.0  # how long after its start a process waits for process 0
_STARTED = time.monotonic()  # this module loads as the process starts (preflight imports it before anything else)


def launched_processes(environ: Mapping[str, str] = os.environ) -> int:
    """How many processes the launcher started for this run: JAX_NUM_PROCESSES, the srun step's tasks, or 1."""
    if NUM_PROCESSES in environ:
        count, index = environ[NUM_PROCESSES], environ.get(PROCESS_ID)
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"{NUM_PROCESSES}={count}: must be an integer >= 1 (the number of processes)")
        missing = [k for k in ("JAX_COORDINATOR_ADDRESS", PROCESS_ID) if k not in environ]
        if missing:
            raise UserError(f"{NUM_PROCESSES}={count}: every process also needs {' and '.join(missing)}; valid: "
                            f"JAX_COORDINATOR_ADDRESS=<host:port of process 0>, {PROCESS_ID}=<0 .. {int(count) - 1}>, "
                            "or launch with srun")
        if not index.isdigit() or int(index) >= int(count):
            raise UserError(f"{PROCESS_ID}={index}: must be an integer in [0, {int(count) - 1}] "
                            f"({NUM_PROCESSES}={count})")
        coordinator_address(environ)
        return int(count)
    return int(environ.get(SLURM_TASKS, 1))


def process_index_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """This process's index among the launched ones, read without JAX (0 for a run of one process)."""
    if launched_processes(environ) == 1:
        return 0
    return int(environ[PROCESS_ID] if NUM_PROCESSES in environ else environ[SLURM_TASK])


def shared_run_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """A run dir every process of a SLURM job step names alike (None outside SLURM).

    `${now:}` differs between processes started microseconds apart; the job and step ids do not.
    """
    if "SLURM_JOB_ID" not in environ:
        return None
    return f"outputs/slurm/{environ['SLURM_JOB_ID']}.{environ.get('SLURM_STEP_ID', '0')}"


def initialize_processes(environ: Mapping[str, str] = os.environ) -> None:
    """Join the run's other processes (`jax.distributed.initialize`) when it has several; before any JAX work."""
    import jax

    if launched_processes(environ) == 1 or jax.distributed.is_initialized():
        return
    if NUM_PROCESSES not in environ:  # srun: jax reads the count, the index and process 0's node from SLURM's variables
        jax.distributed.initialize()
        return
    index = int(environ[PROCESS_ID])
    if index == 0:
        check_coordinator_port(environ)
    else:
        wait_for_coordinator(environ)
    try:
        jax.distributed.initialize(coordinator_address=environ[COORDINATOR], num_processes=int(environ[NUM_PROCESSES]),
                                   process_id=index)
    except RuntimeError as e:  # JaxRuntimeError: e.g. the coordinator's port was taken between the check and now
        raise UserError(f"{COORDINATOR}={environ[COORDINATOR]}: cannot start or join the run's processes "
                        f"({first_line(e)}); valid: process 0's host and a free port") from None


def coordinator_address(environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """(host, port) of JAX_COORDINATOR_ADDRESS (`host:port`, `[::1]:port` for an IPv6 address)."""
    address = environ[COORDINATOR]
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{COORDINATOR}={address}: must be host:port, process 0's host and a port in 1..65535 "
                        "(e.g. node0:12345)")
    return host, int(port)


def wait_for_coordinator(environ: Mapping[str, str] = os.environ) -> None:
    """Return once process 0's coordinator accepts a connection; UserError when nothing does at JAX_COORDINATOR_ADDRESS
    within RUNNER_COORDINATOR_WAIT_S seconds (10) of this process's start (at least 2 s of trying)."""
    host, port = coordinator_address(environ)
    try:
        wait = float(environ.get(WAIT, DEFAULT_WAIT_S))
    except ValueError:
        raise UserError(f"{WAIT}={environ[WAIT]}: must be a number of seconds") from None
    deadline = max(_STARTED + wait, time.monotonic() + min(wait, 2.0))
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except socket.gaierror as e:  # a name no resolver knows: waiting will not change that
            raise UserError(f"{COORDINATOR}={environ[COORDINATOR]}: unknown host {host} ({e.strerror}); valid: the "
                            "host:port of process 0") from None
        except OSError as e:
            reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        if time.monotonic() >= deadline:
            raise UserError(f"{COORDINATOR}={environ[COORDINATOR]}: no coordinator there ({reason}) {wait:g} s after "
                            f"this process started; valid: the host:port process 0 ({PROCESS_ID}=0) listens on, with "
                            f"process 0 started at the same time ({WAIT}=N to wait longer)")
        time.sleep(0.2)


def check_coordinator_port(environ: Mapping[str, str] = os.environ) -> None:
    """UserError unless process 0 can listen on JAX_COORDINATOR_ADDRESS's port (JAX listens on every interface)."""
    _, port = coordinator_address(environ)
    for family, anywhere in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            probe = socket.socket(family)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a closed run's port is free
            try:
                probe.bind((anywhere, port))
            except OSError as e:
                raise UserError(f"{COORDINATOR}={environ[COORDINATOR]}: process 0 cannot listen on port {port} "
                                f"({(e.strerror or type(e).__name__).lower()}); valid: a free port") from None
        return


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 of the run."""
    import jax

    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The run's devices as a one-axis mesh, with the two placements a run uses: replicated and batch-split."""

    mesh: Any  # jax.sharding.Mesh
    setting: Any = "auto"  # trainer.devices, for messages

    @classmethod
    def over(cls, setting: Any) -> "DataParallel":
        """The mesh of `trainer.devices`: `auto` (every local device) or the first N local devices of each process."""
        import jax

        local = jax.local_devices()
        count = len(local) if setting == "auto" else int(setting)
        if count > len(local):
            raise UserError(f"trainer.devices: {count}, but this process has {len(local)} device(s) "
                            f"({', '.join(map(str, local))}); valid: auto or an integer in [1, {len(local)}]")
        by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        chosen = [d for p in range(jax.process_count())
                  for d in [d for d in by_process if d.process_index == p][:count]]
        return cls(jax.sharding.Mesh(np.array(chosen), (AXIS,)), setting)

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def devices(self) -> list[str]:
        return [str(d) for d in self.mesh.devices.flat]

    @property
    def replicated(self) -> Any:
        import jax

        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    @property
    def batch(self) -> Any:
        """A batch split along its first axis over the devices (the sharding the step constrains its batch to)."""
        import jax

        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(AXIS))

    def check_batch_size(self, key: str, batch_size: int) -> None:
        """UserError unless `batch_size` splits evenly over the devices (each step's batch is split)."""
        if batch_size % self.size:
            below, above = batch_size // self.size * self.size, -(-batch_size // self.size) * self.size
            multiples = " or ".join(str(m) for m in (below, above) if m > 0)
            raise UserError(f"{key}: {batch_size} does not divide over the {self.size} devices of "
                            f"trainer.devices={self.setting}; valid: a multiple of {self.size} (e.g. {multiples}), "
                            f"or trainer.devices=N for an N that divides {batch_size}")

    def put(self, tree: Any) -> Any:
        """Host arrays (NumPy, or JAX arrays of any placement) as arrays replicated on every device of the mesh.

        An array already replicated on the mesh is returned as it is, so this is cheap before every call.
        """
        import jax

        replicated = self.replicated

        def put_one(a):
            if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(replicated, a.ndim):
                return a
            if isinstance(a, jax.Array) and not a.is_fully_addressable:  # another global placement: reshard
                return jax.jit(lambda v: v, out_shardings=replicated)(a)
            host = np.asarray(a)  # every process holds the same values: each fills its own devices from them
            return jax.make_array_from_callback(host.shape, replicated, lambda index: host[index])

        return jax.tree_util.tree_map(put_one, tree)

    def any_process(self, flag: bool) -> bool:
        """Whether `flag` is true in any process (one tiny collective when there are several; else `flag`)."""
        import jax

        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class AgreedEvent:
    """A signal's event as every process of a run reads it: set once any process received SIGTERM or Ctrl-C.

    SLURM signals every task, but not within the same chunk; a process that stopped alone would leave the
    others waiting in a collective. Each read is itself a collective, so every process reads it at the same
    points (a chunk's end, an epoch's end), which the run's fixed control flow guarantees.
    """

    def __init__(self, event: Any, data_parallel: DataParallel):
        self.event, self.data_parallel = event, data_parallel

    def is_set(self) -> bool:
        return self.data_parallel.any_process(self.event.is_set())

    @property
    def signum(self) -> int:
        import signal

        return self.event.signum or signal.SIGTERM  # a process told by another: SLURM's signal is on its way
