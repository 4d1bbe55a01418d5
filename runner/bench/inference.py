"""Run-time cost: what one prediction costs, for the chapter's advice on fast models.

"If you need a lightning-fast model at runtime, drop batch norm, possibly replace ELU with leaky ReLU; a sparse
model will also help", and batch norm "adds a runtime penalty". Each row is a net built as `python -m runner` builds
it for its default dataset (digits, 8x8x1 inputs), predicting in inference mode (dropout off, batch norm on its
running statistics):

    default          the default net: 3x100, ELU, batch norm before each activation, dropout
    default_folded   the same, its batch norm folded into the dense layers (runner/export.py:fold_batch_norm)
    fast             +experiment=fast: no batch norm, leaky ReLU
    sparse           +experiment=sparse (FTRL + l1, no batch norm, no dropout, ELU), trained on digits for its
                     trainer.epochs and zeroed below its trainer.sparsify_threshold (runner/cli/run.py:sparsify), as a
                     run of the preset ends: its zeros come from training (FTRL's weights are functions of its
                     accumulators; random data drives every weight to 0), so they are measured, not assumed; dense
                     kernels
    sparse_bcoo      the same net with a kernel in jax.experimental.sparse's BCOO format only where that layer's
                     product x @ W is faster in BCOO at the row's batch size (timed layer by layer); where no
                     layer gains, it is the dense program and the row says so

The other nets keep their initialized weights: the time of a dense product does not depend on the values.
Latency: one example per call (batch 1), each call blocked on its result; p50 and p99 over `calls` calls after a
warm-up. Throughput: examples/s of the median of `throughput_calls` calls at batch `throughput_batch`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import sparse

from runner.bench.harness import validated_config
from runner.bench.reference import NUM_CLASSES, run_once
from runner.cli.run import sparsify, weight_sparsity
from runner.data import load_data
from runner.export import fold_batch_norm
from runner.training.build import build_parts
from runner.training.train import create_train_state, make_train_epoch

SPARSE = ("+experiment=sparse",)
NETS = {  # row: (overrides, the guideline it checks)
    "default": ((), "the baseline: ELU, batch norm, dropout"),
    "default_folded": ((), "batch norm adds a runtime penalty: the same net, batch norm folded"),
    "fast": (("+experiment=fast",), "drop batch norm, replace ELU with leaky ReLU"),
    "sparse": (SPARSE, "a sparse model will also help: its zeros in dense kernels"),
    "sparse_bcoo": (SPARSE, "a sparse model will also help: in BCOO where a layer gains"),
}
FULL = {"calls": 1000, "throughput_batch": 1024, "throughput_calls": 20, "sparse_epochs": None, "layer_calls": 200,
        "overrides": ()}  # sparse_epochs None: the preset's trainer.epochs
SMOKE = {"calls": 20, "throughput_batch": 64, "throughput_calls": 3, "sparse_epochs": 1, "layer_calls": 5,
         "overrides": ("model.depth=2", "model.width=16")}


def built_net(overrides: Sequence[str], input_shape: Sequence[int]) -> tuple[Any, dict]:
    """(model, initialized variables) of the net `python -m runner <overrides>` trains."""
    parts = build_parts(validated_config(*overrides), NUM_CLASSES, 1)
    variables = run_once(lambda x: parts.model.init(jax.random.PRNGKey(0), x, train=False),
                         jnp.zeros((1, *input_shape), jnp.float32))
    return parts.model, variables


def trained_sparse_net(overrides: Sequence[str], epochs: int | None) -> tuple[tuple[Any, dict], tuple[int, ...]]:
    """((model, variables), example shape): the preset's net trained on its dataset for `epochs` (None: its
    trainer.epochs), sparsified as a run ends."""
    cfg = validated_config(*overrides)
    splits = load_data(cfg)
    batch = cfg.trainer.batch_size
    parts = build_parts(cfg, splits.num_classes, len(splits.x_train) // batch)
    x, y = jax.device_put((splits.x_train, splits.y_train))
    state = create_train_state(jax.random.PRNGKey(cfg.trainer.seed), parts, x[:batch])
    train_epoch = jax.jit(make_train_epoch(parts, batch))
    for epoch in range(cfg.trainer.epochs if epochs is None else epochs):
        state, _ = train_epoch(state, x, y, jax.random.fold_in(jax.random.PRNGKey(1), epoch))
    params = sparsify(state.params, cfg.trainer.sparsify_threshold)
    return (parts.model, {"params": params, "batch_stats": state.batch_stats}), tuple(splits.x_train.shape[1:])


def latencies(predict: Callable, variables: Any, x: jax.Array, calls: int) -> list[float]:
    """Seconds of each of `calls` calls, each blocked on its result, after one warm-up call (and the compile)."""
    jax.block_until_ready(predict(variables, x))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(predict(variables, x))
        times.append(time.perf_counter() - start)
    return times


def kernels(variables: dict) -> dict[tuple, jax.Array]:
    """Every weight kernel of the net by its path: the products a sparse format could take over."""
    return {path: w for path, w in traverse_util.flatten_dict(variables["params"]).items() if path[-1] == "kernel"}


def bcoo_layers(variables: dict, batch: int, calls: int) -> tuple[list[str], list[dict]]:
    """(the layers whose x @ W is faster with W in BCOO at `batch`, each layer's times in microseconds)."""
    product = jax.jit(lambda w, x: x @ w)
    chosen, timings = [], []
    for path, w in kernels(variables).items():
        w = w.reshape(-1, w.shape[-1])  # a convolution's kernel as its (patch, out) matrix: the same count of zeros
        x = jax.random.normal(jax.random.PRNGKey(0), (batch, w.shape[0]))
        dense = statistics.median(latencies(product, w, x, calls))
        bcoo = statistics.median(latencies(product, sparse.BCOO.fromdense(w), x, calls))
        name = path[0]
        timings.append({"layer": name, "batch": batch, "sparsity": float(jnp.mean(w == 0)), "dense_us": 1e6 * dense,
                        "bcoo_us": 1e6 * bcoo})
        if bcoo < dense:
            chosen.append(name)
    return chosen, timings


def with_bcoo(variables: dict, layers: Sequence[str]) -> dict:
    """The variables with the kernels of `layers` in BCOO."""
    flat = traverse_util.flatten_dict(variables["params"])
    params = {p: sparse.BCOO.fromdense(w) if p[-1] == "kernel" and p[0] in layers else w for p, w in flat.items()}
    return {**variables, "params": traverse_util.unflatten_dict(params)}


def measure_net(model: Any, variables: dict, settings: dict, bcoo: Sequence[str] | None = None,
                bcoo_wide: Sequence[str] | None = None) -> dict[str, float]:
    """p50/p99 latency at batch 1 and throughput at the throughput batch; `bcoo`/`bcoo_wide`: the layers in BCOO
    at each (None: all dense)."""
    variables = jax.device_put(variables)  # on the device once, as a server keeps them (folding gives NumPy arrays)

    def apply(v, x):
        return model.apply(v, x, train=False)

    def program(layers):
        if not layers:
            return jax.jit(apply), variables
        return jax.jit(sparse.sparsify(apply)), with_bcoo(variables, layers)

    shape = settings["input_shape"]
    predict, placed = program(bcoo)
    one = latencies(predict, placed, jnp.ones((1, *shape), jnp.float32), settings["calls"])
    predict, placed = program(bcoo_wide)
    batch = settings["throughput_batch"]
    wide = latencies(predict, placed, jnp.ones((batch, *shape), jnp.float32), settings["throughput_calls"])
    return {"latency_p50_us": 1e6 * float(np.percentile(one, 50)),
            "latency_p99_us": 1e6 * float(np.percentile(one, 99)), "examples_per_s": batch / statistics.median(wide)}


def measure_inference(smoke: bool = False) -> dict[str, Any]:
    """Every row of NETS (see the module doc); results as results.json holds them."""
    settings = SMOKE if smoke else FULL
    extra = settings["overrides"]
    sparse_net, shape = trained_sparse_net(SPARSE + extra, settings["sparse_epochs"])
    settings = {**settings, "input_shape": shape}
    default = built_net(extra, shape)
    folded = fold_batch_norm(*default)
    one, one_times = bcoo_layers(sparse_net[1], 1, settings["layer_calls"])
    wide, wide_times = bcoo_layers(sparse_net[1], settings["throughput_batch"], settings["layer_calls"])
    nets = {"default": (default, {}), "default_folded": ((folded.model, folded.variables), {}),
            "fast": (built_net(NETS["fast"][0] + extra, shape), {}), "sparse": (sparse_net, {}),
            "sparse_bcoo": (sparse_net, {"bcoo": one, "bcoo_wide": wide})}
    rows = []
    for name, ((model, variables), formats) in nets.items():
        if name == "sparse_bcoo" and not one and not wide:
            rows.append({"name": name, "guideline": NETS[name][1], "note": "BCOO pays in no layer: the sparse row"})
            continue
        rows.append({"name": name, "guideline": NETS[name][1], "parameters": _size(variables),
                     **measure_net(model, variables, settings, **formats)})
    return {"input_shape": list(shape), "calls": settings["calls"], "throughput_batch": settings["throughput_batch"],
            "rows": rows, "folded_layers": list(folded.folded),
            "weight_sparsity": weight_sparsity(sparse_net[1]["params"]),
            "bcoo_layers": {"1": one, str(settings["throughput_batch"]): wide}, "bcoo_timings": one_times + wide_times}


def _size(variables: dict) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(variables)))
