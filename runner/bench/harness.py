"""Timing: the runner's compiled epoch against the limit's, evaluation, and `python -m runner` as a user starts it.

Epochs are timed alternately on the same on-device synthetic data, after AOT compilation and one warm-up
epoch each; the median epoch gives examples/s. Alternating keeps a busy machine from favouring either side.
The start-up measures run `python -m runner` as a subprocess: the default run to its first epoch line (and
its peak host memory), and a mistyped override to its one-line answer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from runner.bench.reference import NUM_CLASSES, init_limit, limit_spec, make_limit_epoch, make_per_step_epoch
from runner.cli.relations import validate
from runner.config.compose import compose_config
from runner.rundir.records import SUMMARY_FILE, read_summary
from runner.scale.distributed import DataParallel
from runner.training.build import build_parts
from runner.training.loop import CHUNK_SECONDS, Pacer, StageProgram, train_in_chunks
from runner.training.stages import Stage
from runner.training.train import create_train_state, make_evaluate, make_train_epoch

IMAGE_SHAPE = (28, 28, 1)
EVAL_BATCH_SIZE = 1000
MISTAKE = ("optimizer=adamm",)  # a one-letter typo of a group choice: answered by the pre-run check


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the throughput table: a runner config at one batch size, against its limit."""

    name: str
    overrides: tuple[str, ...]
    batch_size: int
    input_shape: tuple[int, ...] = IMAGE_SHAPE
    per_step_loop: bool = False  # also time a loop that dispatches one jitted step at a time
    chunked: bool = False  # also time the runner's epoch as the run loop runs it, in CHUNKS chunks
    max_examples: int | None = None  # caps --examples for a case whose epochs are slow


def validated_config(*overrides: str) -> DictConfig:
    """The config `python -m runner <overrides>` would run, checked as it checks it."""
    cfg = compose_config(*overrides)
    validate(cfg)
    return cfg


def synthetic_data(seed: int, n: int, shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Standard-normal inputs labelled by a random linear teacher: learnable; made on the host, kept on device."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), np.float32)
    teacher = rng.standard_normal((math.prod(shape), NUM_CLASSES), np.float32)
    return jax.device_put(x), jax.device_put(np.argmax(x.reshape(n, -1) @ teacher, -1).astype(np.int32))


# ---- the compiled epochs ----

class Loop:
    """A compiled epoch that carries its own state from one timed call to the next."""

    def __init__(self, epoch: Callable, state: Any, x: jax.Array, y: jax.Array, key: jax.Array):
        self.epoch, self.state, self.x, self.y, self.key, self.count = epoch, state, x, y, key, 0

    def __call__(self) -> Any:
        self.count += 1
        self.state, metrics = self.epoch(self.state, self.x, self.y, jax.random.fold_in(self.key, self.count))
        return jax.block_until_ready((self.state, metrics))[1]


CHUNKS = 8  # chunks per bench epoch: a run's are ~CHUNK_SECONDS each, so this is many more per second than a run has


class ChunkedLoop(Loop):
    """The runner's epoch as `runner.training.loop` runs it: chunks of steps, a host read of the metrics after each."""

    def __init__(self, program: StageProgram, state: Any, x: jax.Array, y: jax.Array, key: jax.Array):
        super().__init__(None, state, x, y, key)
        self.program, self.pacer = program, Pacer(seconds=None, first=max(1, program.steps // CHUNKS))

    def __call__(self) -> Any:
        self.count += 1
        carry, metrics = train_in_chunks(self.program, self.state, self.x, self.y,
                                         jax.random.fold_in(self.key, self.count), self.pacer, lambda *_: False)
        self.state = carry.state
        return metrics


class DataParallelLoop(Loop):
    """The runner's epoch as a run on several devices runs it: the stage program over a mesh, in CHUNKS chunks."""

    def __init__(self, cfg: DictConfig, x: np.ndarray, y: np.ndarray, batch_size: int, data_parallel: DataParallel):
        parts = build_parts(cfg, NUM_CLASSES, len(x) // batch_size)
        init_key, data_key, _ = data_parallel.put(jax.random.split(jax.random.PRNGKey(cfg.trainer.seed), 3))
        x, y = data_parallel.put((x, y))
        state = create_train_state(init_key, parts, x[:batch_size], sharding=data_parallel.replicated)
        super().__init__(None, state, x, y, data_key)
        self.data_parallel = data_parallel
        self.program = StageProgram(parts, Stage("train", 1), batch_size, cfg.trainer.diagnostics_every, state, x, y,
                                    data_key, data_parallel)
        self.pacer = Pacer(seconds=None, first=max(1, self.program.steps // CHUNKS))

    def __call__(self) -> Any:
        self.count += 1
        key = self.data_parallel.put(jax.random.fold_in(self.key, self.count))
        carry, metrics = train_in_chunks(self.program, self.state, self.x, self.y, key, self.pacer, lambda *_: False)
        self.state = carry.state
        return metrics


def measure_data_parallel(overrides: Sequence[str], batch_size: int, examples: int, epochs: int,
                          devices: int) -> dict[str, Any]:
    """Examples/s of the runner's chunked epoch on 1 device and data parallel over `devices`, timed alternately
    in this process (which must have that many local devices)."""
    cfg = validated_config(*overrides, f"trainer.batch_size={batch_size}")
    x, y = (np.asarray(a) for a in synthetic_data(0, examples, IMAGE_SHAPE))  # placed by each loop
    loops = {n: DataParallelLoop(cfg, x, y, batch_size, DataParallel.over(n)) for n in (1, devices)}
    seconds = time_alternately({str(n): loop for n, loop in loops.items()}, epochs)
    trained = (examples // batch_size) * batch_size
    return {"devices": devices, "batch_size": batch_size, "examples": examples, "overrides": list(overrides),
            "device_kind": jax.devices()[0].device_kind, "forced_cpu_devices": False,
            "one_device_examples_per_s": trained / seconds["1"],
            "data_parallel_examples_per_s": trained / seconds[str(devices)],
            "speedup": seconds["1"] / seconds[str(devices)]}


def measure_data_parallel_anywhere(overrides: Sequence[str], batch_size: int, examples: int, epochs: int,
                                   devices: int, timeout: float = 600) -> dict[str, Any]:
    """`measure_data_parallel` here if this process has `devices` local devices; else in a subprocess whose CPU
    backend is split into that many devices (XLA_FLAGS=--xla_force_host_platform_device_count), which share the
    machine's cores: then it measures the cost of splitting (collectives, partitioning), not a speedup."""
    if jax.local_device_count() >= devices:
        return measure_data_parallel(overrides, batch_size, examples, epochs, devices)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    code = ("import json, sys; from runner.training.process import keep_freed_host_memory; keep_freed_host_memory(); "
            "from runner.bench.harness import measure_data_parallel; "
            "print(json.dumps(measure_data_parallel(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([list(overrides), batch_size, examples, epochs,
                                                                   devices])],
                          env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the {devices}-device measurement exited {done.returncode}:\n{done.stderr}")
    return {**json.loads(done.stdout.splitlines()[-1]), "forced_cpu_devices": True}


def time_alternately(loops: dict[str, Loop], epochs: int) -> dict[str, float]:
    """Median seconds per epoch of each loop, after one warm-up epoch each, the loops taking turns."""
    for loop in loops.values():
        loop()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(epochs):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compiled(fn: Callable, *args) -> tuple[Callable, float]:
    """`fn` jitted and compiled ahead of time for `args`, and the seconds that took."""
    start = time.perf_counter()
    executable = jax.jit(fn).lower(*args).compile()
    return executable, time.perf_counter() - start


def runner_loop(cfg: DictConfig, x: jax.Array, y: jax.Array, batch_size: int) -> tuple[Loop, float]:
    """The runner's compiled epoch, built as `runner.cli.run.train_and_evaluate` builds it."""
    parts = build_parts(cfg, NUM_CLASSES, len(x) // batch_size)
    init_key, data_key, _ = jax.random.split(jax.random.PRNGKey(cfg.trainer.seed), 3)
    state = create_train_state(init_key, parts, x[:batch_size])
    train_epoch, seconds = compiled(make_train_epoch(parts, batch_size, cfg.trainer.diagnostics_every),
                                    state, x, y, data_key)
    return Loop(train_epoch, state, x, y, data_key), seconds


def measure_case(case: Case, examples: int, epochs: int) -> dict[str, Any]:
    """Examples/s of the runner and of the limit (and of the per-step loop, if asked) for one case."""
    cfg = validated_config(*case.overrides, f"trainer.batch_size={case.batch_size}")
    spec = limit_spec(cfg)
    examples = min(examples, case.max_examples or examples)
    x, y = synthetic_data(0, examples, case.input_shape)
    runner, runner_compile_s = runner_loop(cfg, x, y, case.batch_size)
    state = init_limit(jax.random.PRNGKey(cfg.trainer.seed), spec, case.input_shape)
    limit_epoch, limit_compile_s = compiled(make_limit_epoch(spec, case.batch_size), state, x, y,
                                            jax.random.PRNGKey(1))
    loops = {"runner": runner, "limit": Loop(limit_epoch, state, x, y, jax.random.PRNGKey(1))}
    if case.chunked:
        program = StageProgram(build_parts(cfg, NUM_CLASSES, len(x) // case.batch_size), Stage("train", 1), case.batch_size,
                               cfg.trainer.diagnostics_every, runner.state, x, y, runner.key)
        loops["chunked"] = ChunkedLoop(program, runner.state, x, y, runner.key)
    if case.per_step_loop:
        loops["per_step"] = Loop(make_per_step_epoch(spec, state, x, y, case.batch_size), state, x, y,
                                 jax.random.PRNGKey(1))
    seconds = time_alternately(loops, epochs)
    trained = (examples // case.batch_size) * case.batch_size
    speed = {name: trained / s for name, s in seconds.items()}
    row = {"name": case.name, "batch_size": case.batch_size, "examples": examples, "overrides": list(case.overrides),
           "runner_examples_per_s": speed["runner"], "limit_examples_per_s": speed["limit"],
           "ratio": speed["runner"] / speed["limit"],
           "runner_compile_s": runner_compile_s, "limit_compile_s": limit_compile_s}
    if "per_step" in speed:
        row["per_step_examples_per_s"] = speed["per_step"]
    if "chunked" in speed:  # the cost of chunked epochs: the same program, CHUNKS calls and host reads an epoch
        row.update(chunked_examples_per_s=speed["chunked"], chunked_over_whole=speed["chunked"] / speed["runner"])
        calls = math.ceil(loops["chunked"].program.steps / loops["chunked"].pacer.first)
        if calls > 1:  # what each call after an epoch's first costs, and so a run's chunks
            call_cost = (seconds["chunked"] - seconds["runner"]) / (calls - 1)
            row.update(chunk_call_cost_ms=1e3 * call_cost, run_chunk_cost=call_cost / CHUNK_SECONDS)
    return row


def measure_evaluation(overrides: Sequence[str], examples: int, epochs: int) -> float:
    """Examples/s of the runner's compiled evaluation at eval batch `EVAL_BATCH_SIZE`."""
    cfg = validated_config(*overrides)
    n = max(1, -(-examples // EVAL_BATCH_SIZE)) * EVAL_BATCH_SIZE
    x, y = synthetic_data(2, n, IMAGE_SHAPE)
    mask = jnp.ones(n, bool)
    parts = build_parts(cfg, NUM_CLASSES, 1)
    state = create_train_state(jax.random.PRNGKey(0), parts, x[:1])
    key = jax.random.PRNGKey(3)
    evaluate, _ = compiled(make_evaluate(EVAL_BATCH_SIZE), state, x, y, mask, key)
    jax.block_until_ready(evaluate(state, x, y, mask, key))
    times = []
    for _ in range(max(3, epochs)):
        start = time.perf_counter()
        jax.block_until_ready(evaluate(state, x, y, mask, key))
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


# ---- `python -m runner` as a user starts it ----

def measure_mistake_answer(runs: int = 5, timeout: float = 60) -> float:
    """Median wall seconds of `python -m runner optimizer=adamm` from process start to its exit with code 2.

    The pre-run check composes and checks the config without importing jax, flax, optax or orbax, so a
    mistake is answered in well under half a second on an idle machine.
    """
    times = []
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "runner", *MISTAKE], cwd=tmp, capture_output=True,
                                  text=True, timeout=timeout)
            times.append(time.perf_counter() - start)
            if done.returncode != 2 or done.stdout or len(done.stderr.splitlines()) != 1:
                raise RuntimeError(f"python -m runner {' '.join(MISTAKE)} exited {done.returncode}, expected 2 "
                                   f"and one line on stderr:\n{done.stdout}{done.stderr}")
    return statistics.median(times)


def measure_first_step(timeout: float = 300) -> dict[str, float]:
    """`python -m runner trainer.epochs=1` from process start to its "epoch 1/" line, data already built.

    Measured twice: with an empty JAX compilation cache (a config's first run) and with the cache the
    preparing run filled (the runner keeps compiled programs on disk, so a repeated config skips compiling).
    """
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "TFDS_DATA_DIR": str(tmp / "tfds"), "JAX_COMPILATION_CACHE_DIR": str(tmp / "cache")}
        _run_default(tmp, env, timeout)  # builds the dataset, as a user's first run does, and fills the cache
        cold = _run_default(tmp, {**env, "JAX_COMPILATION_CACHE_DIR": str(tmp / "empty-cache")}, timeout)
        cached = _run_default(tmp, env, timeout)
    return {"time_to_first_step_s": cold.first_step_s, "compile_time_s": cold.compile_time_s,
            "time_to_first_step_cached_s": cached.first_step_s, "compile_time_cached_s": cached.compile_time_s,
            "runner_peak_host_memory_mib": cold.peak_memory_mib}


class DefaultRun(NamedTuple):
    first_step_s: float
    compile_time_s: float
    peak_memory_mib: float


# A child's ru_maxrss starts at its parent's resident size (Linux carries it across fork and exec), so
# RUSAGE_CHILDREN here would report the bench's own peak; a small launcher process reports the runner's.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(code)")


def _run_default(cwd: Path, env: dict[str, str], timeout: float) -> DefaultRun:
    peak_file = cwd / "peak-rss"
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCHER, str(peak_file), sys.executable, "-m", "runner", "trainer.epochs=1"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        # Reading stdout would wait forever on a hung run: kill the launcher and the runner, its own group.
        watchdog = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
        watchdog.start()
        first_step, run_dir = None, None
        try:
            for line in process.stdout:
                if first_step is None and line.startswith("epoch 1/"):
                    first_step = time.perf_counter() - start
                if line.startswith("results in "):
                    run_dir = cwd / line[len("results in "):].strip()
            code = process.wait()
        finally:
            watchdog.cancel()
        if code != 0 or first_step is None or run_dir is None:
            stderr.seek(0)
            raise RuntimeError(f"python -m runner exited {code} without an epoch line or run dir:\n{stderr.read()}")
    compile_time = read_summary(run_dir / SUMMARY_FILE)["compile_time_s"]
    return DefaultRun(first_step, compile_time, _kib_or_bytes_to_mib(int(peak_file.read_text())))


def own_peak_memory_mib() -> float:
    """This process's peak resident memory so far."""
    return _kib_or_bytes_to_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _kib_or_bytes_to_mib(ru_maxrss: int) -> float:
    """getrusage's ru_maxrss in MiB: it counts KiB on Linux, bytes on macOS."""
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 2**10
