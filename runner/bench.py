"""`python -m runner.bench`: the runner's speed against the limit, a hand-written JAX loop of the same model.

Each entry of `CASES` is one row: the runner's compiled epoch (composed, built and compiled as a run
does) and the limit's epoch are timed alternately on the same on-device synthetic data, after AOT
compilation and one warm-up epoch; the median epoch gives examples/s. Alternating keeps a busy machine
from favouring either side. Then the default run's time to its first epoch line (a subprocess), the
evaluation throughput and peak host memory. Everything lands in
`<out>/<YYYY-mm-dd_HH-MM-SS>/results.json`.

The limit is plain JAX: params as lists of (W, b), elu, he_normal, optional batch norm and dropout,
optax.adam, softmax cross-entropy, the epoch as one `lax.scan` over batches gathered by index.
`limit_spec` refuses a config it does not model, so a new case cannot silently compare different nets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner.build import build_experiment
from runner.config import CONF_DIR, register_schemas, validate
from runner.console import Console
from runner.conv import conv
from runner.outputs import write_json
from runner.train import create_train_state, make_evaluate, make_train_epoch

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
EVAL_BATCH_SIZE = 1000
MLP20X100 = ("model.depth=20", "model.width=100", "activation=elu", "initializer=he_normal",
             "normalization=none", "regularizer=[]", "optimizer=adam")


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the throughput table: a runner config at one batch size, against its limit."""

    name: str
    overrides: tuple[str, ...]
    batch_size: int
    input_shape: tuple[int, ...] = IMAGE_SHAPE
    per_step_loop: bool = False  # also time a loop that dispatches one jitted step at a time
    max_examples: int | None = None  # caps --examples for a case whose epochs are slow


CASES = [
    Case("mlp20x100_b32", MLP20X100, 32, per_step_loop=True),
    Case("mlp20x100_b128", MLP20X100, 128),
    # The cost of per-layer diagnostics: compare this row's ratio with mlp20x100_b32's (same limit loop).
    Case("mlp20x100_b32_diagnostics100", MLP20X100 + ("trainer.diagnostics_every=100",), 32),
    Case("mlp5x300_bn_dropout", ("model.depth=5", "model.width=300"), 128),
    Case("cnn", ("model=cnn",), 128, max_examples=1024),
]

# Tiny sizes for tests: small nets (compiling is most of a smoke run), batches shrunk to fit the examples.
SMOKE = {"examples": 16, "epochs": 1, "eval_examples": EVAL_BATCH_SIZE,
         "overrides": ("model.depth=2", "model.width=16", "model.channels=[4,8]")}  # channels: cnn only


def compose_config(*overrides: str) -> DictConfig:
    """The validated config `python -m runner <overrides>` would run."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    validate(cfg)
    return cfg


def synthetic_data(seed: int, n: int, shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Standard-normal inputs labelled by a random linear teacher: learnable; made on the host, kept on device."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), np.float32)
    teacher = rng.standard_normal((math.prod(shape), NUM_CLASSES), np.float32)
    return jax.device_put(x), jax.device_put(np.argmax(x.reshape(n, -1) @ teacher, -1).astype(np.int32))


def run_once(fn: Callable, *args) -> Any:
    """`fn(*args)` as one program compiled without optimization (XLA's optimizing compile of the threefry
    RNG takes ~0.4 s per random draw on CPU, far more than an initializer runs)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


# ---- the limit: the same nets and update, written by hand ----

class LimitSpec(NamedTuple):
    """What the hand-written net needs to know: the layers, and the techniques on each hidden layer."""

    channels: tuple[int, ...]  # 3x3 convolutions, each followed by 2x2 max pooling
    depth: int
    width: int
    batch_norm: tuple[float, float] | None  # (momentum, epsilon), before the activation
    dropout_rate: float
    adam: dict[str, float]


class LimitState(NamedTuple):
    """Everything one limit step reads and writes."""

    params: tuple[list, list]  # ([(W, b) per layer, head last], [(scale, offset) per normalized layer])
    stats: list  # (running mean, running variance) per normalized layer
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def limit_spec(cfg: DictConfig) -> LimitSpec:
    """The limit's description of `cfg`'s net; raises for choices the hand-written loop does not model."""
    modelled = {"activation": "jax.nn.elu", "initializer": "jax.nn.initializers.he_normal",
                "optimizer": "optax.adam", "schedule": "runner.techniques.schedules.constant",
                "clip": "optax.identity"}
    for group, target in modelled.items():
        if cfg[group]._target_ != target:
            raise ValueError(f"the limit models {group} {target} only, not {cfg[group]._target_}")
    if cfg.activation.get("alpha", 1.0) != 1.0:
        raise ValueError(f"the limit models elu with alpha 1 only, not {cfg.activation.alpha}")
    regularizers = dict(cfg.get("regularizer") or {})
    if set(regularizers) - {"dropout"} or (regularizers and regularizers["dropout"].on_inputs):
        raise ValueError(f"the limit models hidden dropout only, not regularizer={list(regularizers)}")
    layer = cfg.normalization.layer
    if layer is not None and (layer._target_ != "flax.linen.BatchNorm" or cfg.normalization.position != "pre"):
        raise ValueError(f"the limit models batch norm before the activation only, not {layer._target_}")
    return LimitSpec(
        channels=tuple(cfg.model.channels) if cfg.model.name == "cnn" else (),
        depth=cfg.model.depth,
        width=cfg.model.width,
        batch_norm=None if layer is None else (layer.momentum, layer.epsilon),
        dropout_rate=regularizers["dropout"].rate if regularizers else 0.0,
        adam={k: cfg.optimizer[k] for k in ("learning_rate", "b1", "b2", "eps")},
    )


def _pools(spatial: Sequence[int]) -> bool:
    return all(size >= 2 for size in spatial)  # the runner's CNN skips pooling once a side is 1


def init_limit(key: jax.Array, spec: LimitSpec, input_shape: Sequence[int]) -> LimitState:
    """He-normal weights, zero biases, unit scales: the runner's initialization, by hand."""
    return run_once(lambda key: _init_limit(key, spec, input_shape), key)


def _init_limit(key: jax.Array, spec: LimitSpec, input_shape: Sequence[int]) -> LimitState:
    he_normal = jax.nn.initializers.he_normal()
    shapes, spatial, channels = [], list(input_shape[:-1]), input_shape[-1]
    for features in spec.channels:
        shapes.append((3,) * len(spatial) + (channels, features))
        channels = features
        spatial = [s // 2 for s in spatial] if _pools(spatial) else spatial
    fan_in = math.prod(spatial) * channels
    for _ in range(spec.depth):
        shapes.append((fan_in, spec.width))
        fan_in = spec.width
    shapes.append((fan_in, NUM_CLASSES))
    keys = jax.random.split(key, len(shapes) + 1)
    layers = [(he_normal(k, s), jnp.zeros(s[-1])) for k, s in zip(keys, shapes)]
    hidden = [s[-1] for s in shapes[:-1]] if spec.batch_norm else []
    norms = [(jnp.ones(n), jnp.zeros(n)) for n in hidden]
    stats = [(jnp.zeros(n), jnp.ones(n)) for n in hidden]
    params = (layers, norms)
    return LimitState(params, stats, limit_optimizer(spec).init(params), jnp.zeros((), jnp.int32), keys[-1])


def limit_optimizer(spec: LimitSpec) -> optax.GradientTransformation:
    """optax.adam with the config's constant learning rate, as a float rather than a schedule."""
    a = spec.adam
    return optax.adam(a["learning_rate"], b1=a["b1"], b2=a["b2"], eps=a["eps"])


def _batch_norm(h, scale, offset, running, momentum, epsilon):
    """Flax BatchNorm in training mode: batch statistics (fast variance), running averages updated."""
    axes = tuple(range(h.ndim - 1))
    mean = jnp.mean(h, axes)
    var = jnp.maximum(0.0, jnp.mean(h * h, axes) - mean * mean)
    running_mean, running_var = running
    updated = (momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var)
    return (h - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + offset, updated


def limit_forward(spec: LimitSpec, params, stats, x: jax.Array, key: jax.Array):
    """Logits and updated batch-norm statistics of one training-mode pass."""
    layers, norms = params
    hidden = layers[:-1]
    keys = jax.random.split(key, len(hidden)) if spec.dropout_rate else [None] * len(hidden)
    new_stats, h = [], x
    for i, (w, b) in enumerate(hidden):
        convolution = i < len(spec.channels)
        if convolution:
            h = conv(h, w, ((1, 1), (1, 1))) + b  # the fast kernel gradient, as the runner's model uses
        else:
            h = h.reshape(h.shape[0], -1) @ w + b
        if spec.batch_norm:
            h, updated = _batch_norm(h, *norms[i], stats[i], *spec.batch_norm)
            new_stats.append(updated)
        h = jax.nn.elu(h)
        if spec.dropout_rate:
            keep = 1.0 - spec.dropout_rate
            h = jnp.where(jax.random.bernoulli(keys[i], keep, h.shape), h / keep, 0.0)
        if convolution and _pools(h.shape[1:-1]):
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    w, b = layers[-1]
    return h.reshape(h.shape[0], -1) @ w + b, new_stats


def make_limit_step(spec: LimitSpec) -> Callable:
    """`step(state, x, y) -> (state, loss)`: one Adam step on softmax cross-entropy."""
    optimizer = limit_optimizer(spec)

    def step(state: LimitState, x: jax.Array, y: jax.Array):
        def loss_fn(params):
            logits, stats = limit_forward(spec, params, state.stats, x, jax.random.fold_in(state.rng, state.step))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state)
        return LimitState(optax.apply_updates(state.params, updates), stats, opt_state, state.step + 1,
                          state.rng), loss

    return step


def _batch_order(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


def make_limit_epoch(spec: LimitSpec, batch_size: int) -> Callable:
    """`epoch(state, x, y, key) -> (state, mean loss)`: shuffled batches, one `lax.scan`."""
    step = make_limit_step(spec)

    def epoch(state: LimitState, x: jax.Array, y: jax.Array, key: jax.Array):
        state, losses = jax.lax.scan(lambda s, i: step(s, x[i], y[i]), state, _batch_order(key, len(x), batch_size))
        return state, losses.mean()

    return epoch


def make_per_step_epoch(spec: LimitSpec, state: LimitState, x: jax.Array, y: jax.Array,
                        batch_size: int) -> Callable:
    """The limit's step dispatched once per batch from Python, batches shuffled on device per epoch."""
    step = make_limit_step(spec)

    @jax.jit
    def shuffle(x, y, key):
        order = _batch_order(key, len(x), batch_size)
        return x[order], y[order]

    xs, ys = shuffle(x, y, jax.random.PRNGKey(0))
    indexed = jax.jit(lambda s, xs, ys, i: step(s, xs[i], ys[i])).lower(state, xs, ys, np.int32(0)).compile()

    def epoch(state: LimitState, x: jax.Array, y: jax.Array, key: jax.Array):
        xs, ys = shuffle(x, y, key)
        losses = []
        for i in range(len(xs)):
            state, loss = indexed(state, xs, ys, np.int32(i))
            losses.append(loss)
        return state, jnp.mean(jnp.stack(losses))

    return epoch


# ---- timing ----

class Loop:
    """A compiled epoch that carries its own state from one timed call to the next."""

    def __init__(self, epoch: Callable, state: Any, x: jax.Array, y: jax.Array, key: jax.Array):
        self.epoch, self.state, self.x, self.y, self.key, self.count = epoch, state, x, y, key, 0

    def __call__(self) -> Any:
        self.count += 1
        self.state, metrics = self.epoch(self.state, self.x, self.y, jax.random.fold_in(self.key, self.count))
        return jax.block_until_ready((self.state, metrics))[1]


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
    """The runner's compiled epoch, built as `runner.run.train_and_evaluate` builds it."""
    experiment = build_experiment(cfg, NUM_CLASSES, len(x) // batch_size)
    init_key, data_key, _ = jax.random.split(jax.random.PRNGKey(cfg.trainer.seed), 3)
    state = create_train_state(init_key, experiment, x[:batch_size])
    train_epoch, seconds = compiled(make_train_epoch(experiment, batch_size, cfg.trainer.diagnostics_every),
                                    state, x, y, data_key)
    return Loop(train_epoch, state, x, y, data_key), seconds


def measure_case(case: Case, examples: int, epochs: int) -> dict[str, Any]:
    """Examples/s of the runner and of the limit (and of the per-step loop, if asked) for one case."""
    cfg = compose_config(*case.overrides, f"trainer.batch_size={case.batch_size}")
    spec = limit_spec(cfg)
    examples = min(examples, case.max_examples or examples)
    x, y = synthetic_data(0, examples, case.input_shape)
    runner, runner_compile_s = runner_loop(cfg, x, y, case.batch_size)
    state = init_limit(jax.random.PRNGKey(cfg.trainer.seed), spec, case.input_shape)
    limit_epoch, limit_compile_s = compiled(make_limit_epoch(spec, case.batch_size), state, x, y,
                                            jax.random.PRNGKey(1))
    loops = {"runner": runner, "limit": Loop(limit_epoch, state, x, y, jax.random.PRNGKey(1))}
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
    return row


def measure_evaluation(overrides: Sequence[str], examples: int, epochs: int) -> float:
    """Examples/s of the runner's compiled evaluation at eval batch `EVAL_BATCH_SIZE`."""
    cfg = compose_config(*overrides)
    n = max(1, -(-examples // EVAL_BATCH_SIZE)) * EVAL_BATCH_SIZE
    x, y = synthetic_data(2, n, IMAGE_SHAPE)
    mask = jnp.ones(n, bool)
    experiment = build_experiment(cfg, NUM_CLASSES, 1)
    state = create_train_state(jax.random.PRNGKey(0), experiment, x[:1])
    key = jax.random.PRNGKey(3)
    evaluate, _ = compiled(make_evaluate(EVAL_BATCH_SIZE), state, x, y, mask, key)
    jax.block_until_ready(evaluate(state, x, y, mask, key))
    times = []
    for _ in range(max(3, epochs)):
        start = time.perf_counter()
        jax.block_until_ready(evaluate(state, x, y, mask, key))
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


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
    compile_time = json.loads((run_dir / "summary.json").read_text())["compile_time_s"]
    return DefaultRun(first_step, compile_time, _kib_or_bytes_to_mib(int(peak_file.read_text())))


def _kib_or_bytes_to_mib(ru_maxrss: int) -> float:
    """getrusage's ru_maxrss in MiB: it counts KiB on Linux, bytes on macOS."""
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 2**10


def machine() -> dict[str, Any]:
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": str(jax.devices()),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


# ---- the command ----

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[c.name for c in CASES], metavar="NAME",
                        help=f"cases to run (default all): {' '.join(c.name for c in CASES)}")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="N",
                        help="run every chosen case at each of these batch sizes instead of its own")
    parser.add_argument("--epochs", type=int, help="timed epochs per loop; the median is reported (default 5)")
    parser.add_argument("--examples", type=int, help="synthetic training examples (default 4096)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny nets and sizes ({SMOKE['examples']} examples, 1 epoch), no time-to-first-step run")
    parser.add_argument("--first-step", action=argparse.BooleanOptionalAction, default=None,
                        help="time `python -m runner` to its first epoch (default: on, off with --smoke)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="base dir of the results")
    args = parser.parse_args(argv)
    if args.examples is None:
        args.examples = SMOKE["examples"] if args.smoke else 4096
    if args.epochs is None:
        args.epochs = SMOKE["epochs"] if args.smoke else 5
    args.eval_examples = SMOKE["eval_examples"] if args.smoke else 10 * EVAL_BATCH_SIZE
    args.first_step = (not args.smoke) if args.first_step is None else args.first_step
    for name in ("examples", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(b < 1 for b in args.batch_sizes or ()):
        parser.error("--batch-sizes must be >= 1")
    return args


def chosen_cases(args: argparse.Namespace) -> list[Case]:
    cases = [c for c in CASES if not args.models or c.name in args.models]
    if args.batch_sizes:
        cases = [dataclasses.replace(c, batch_size=b) for c in cases for b in args.batch_sizes]
    if args.smoke:
        cases = [dataclasses.replace(c, overrides=c.overrides + SMOKE["overrides"],
                                     batch_size=min(c.batch_size, args.examples)) for c in cases]
    too_big = [c.name for c in cases if c.batch_size > min(args.examples, c.max_examples or args.examples)]
    if too_big:
        raise SystemExit(f"error: fewer examples than one batch for {', '.join(too_big)}; "
                         "raise --examples or lower --batch-sizes")
    return cases


def main(argv: Sequence[str] | None = None) -> Path:
    """Measure everything and write results.json; returns its path."""
    args = parse_args(argv)
    console = Console()
    out_dir = args.out / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    console.info(f"bench: {args.examples} synthetic examples, median of {args.epochs} epochs, "
                 f"devices {jax.devices()}")
    results: dict[str, Any] = {"machine": machine(), "examples": args.examples, "epochs": args.epochs,
                               "cases": []}
    for case in chosen_cases(args):
        results["cases"].append(measure_case(case, args.examples, args.epochs))
    smoke_overrides = SMOKE["overrides"] if args.smoke else ()
    results["eval_examples_per_s"] = measure_evaluation(MLP20X100 + smoke_overrides, args.eval_examples, args.epochs)
    if args.first_step:
        results.update(measure_first_step())
    results["peak_host_memory_mib"] = _kib_or_bytes_to_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    path = out_dir / "results.json"
    write_json(path, results)
    show(console, results)
    console.info(f"results in {path}")
    return path


def show(console: Console, results: dict[str, Any]) -> None:
    """The throughput table, then the single measurements."""
    console.table("training throughput (examples/s, median epoch)",
                  ["case", "batch", "runner", "limit", "runner/limit", "per-step loop"],
                  [[c["name"], c["batch_size"], c["runner_examples_per_s"], c["limit_examples_per_s"],
                    c["ratio"], c.get("per_step_examples_per_s")] for c in results["cases"]])
    labels = {"time_to_first_step_s": "time to first step (s)", "compile_time_s": "compile time (s)",
              "time_to_first_step_cached_s": "time to first step, compilation cached (s)",
              "compile_time_cached_s": "compile time, compilation cached (s)",
              "eval_examples_per_s": f"evaluation (examples/s, batch {EVAL_BATCH_SIZE})",
              "peak_host_memory_mib": "peak host memory, bench (MiB)",
              "runner_peak_host_memory_mib": "peak host memory, python -m runner (MiB)"}
    console.table("runner", ["measure", "value"], [[label, results[k]] for k, label in labels.items() if k in results])


if __name__ == "__main__":
    main()
