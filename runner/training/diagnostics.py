"""Per-layer diagnostics of training: what each weight layer's inputs, outputs, gradients and updates look like.

Layers are the ones with a connection weight (`dense_<i>`, `conv_<i>`, `head`), ordered from the input up.
For a diagnosed step, every statistic is measured on that step's own batch, RNG draws and parameters
(before its update), so it describes exactly the update training made:

    preact_mean, preact_std   mean and std of the layer's output before normalization and activation
                              (for the head: the logits), over examples and units
    act_mean, act_std         the same for the output of the layer's activation function (null for the head)
    saturated_fraction        the fraction of activation outputs (examples x units) within 5% of the output range
                              of an asymptote: sigmoid a < 0.05 or a > 0.95, tanh |a| > 0.9. There both
                              derivatives are below 19% of their peak (tanh(x) = 2 sigmoid(2x) - 1). Null for
                              activations without two asymptotes and for the head.
    dead_fraction             the fraction of units (features; channels for a convolution) whose activation is
                              <= 0 for every example of the batch (and every position): for ReLU, units that pass
                              no gradient at all. Measured for every activation; for sigmoid it is 0 by construction.
    grad_norm                 l2 norm of the loss gradient with respect to the kernel (the penalty included)
    grad_norm_per_input       grad_norm / sqrt(fan_in), fan_in = the kernel's size over its output units
                              (inputs x receptive field for a convolution); see "The gradient ratio" below
    weight_norm               l2 norm of the kernel before the step
    update_ratio              ||kernel update|| / ||kernel||: the relative size of the step actually taken

Inside the compiled epoch the diagnosed step is traced (runner.training.train.make_train_step_with_trace, the step's own code)
and the statistics of up to `ceil(steps_per_epoch / every)` steps are written into a fixed-size buffer; the host
turns it into one diagnostics.jsonl record per diagnosed step.

The gradient ratio. summary.json's `grad_norm_ratio` is the first layer's grad_norm_per_input over the head's:

    grad_norm_ratio = (||dL/dW_first|| / sqrt(fan_in_first)) / (||dL/dW_head|| / sqrt(fan_in_head))

For a dense layer z = h W, dL/dW = h^T dL/dz, so ||dL/dW||^2 ~= fan_in * rms(h)^2 * ||dL/dz||^2: dividing by
sqrt(fan_in) leaves rms(h) * ||dL/dz||, the backpropagated signal that reaches the layer (what vanishes in Glorot
& Bengio 2010) times the size of the layer's inputs (~1: the data are standardized, and He-initialized hidden
layers keep their activations' scale). The whole-kernel norm grows with sqrt(fan_in) instead, so the first
layer's input width alone moved the old ratio (||dL/dW_first|| / ||dL/dW_head||): a healthy 20x50 He + ELU net
read 0.77 on 8x8 digits and 3.5 on synthetic 28x28 images; this ratio reads 0.68 and 0.88 (the default net: 1.3
on both). Far below 1, the gradient vanishes on the way down; far above 1, it grows. For an MLP the two ratios
differ by the constant sqrt(fan_in_head / fan_in_first). Per-parameter RMS (||dL/dW|| / sqrt(size)) would also
divide by fan_out, which penalizes the head's few outputs: a healthy net then reads about 0.3-0.4.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from runner.net.layers import HEAD, block_of, weight_layers
from runner.rundir.outputs import finite_or_none

STATS = ("preact_mean", "preact_std", "act_mean", "act_std", "saturated_fraction", "dead_fraction",
         "grad_norm", "grad_norm_per_input", "weight_norm", "update_ratio")
SATURATION_MARGIN = 0.05  # as a fraction of the activation's output range
# The activations with two horizontal asymptotes, by the function jax.nn defines them with.
ASYMPTOTES = ((jax.nn.sigmoid, (0.0, 1.0)), (jax.nn.tanh, (-1.0, 1.0)))


class StepTrace(NamedTuple):
    """What one train step saw and computed: what per-layer diagnostics and divergence checks read."""

    x: jax.Array  # the batch as the model saw it (after augmentation)
    params: Any  # the params the forward pass used (after any perturbation, e.g. DropConnect)
    dropout_rng: jax.Array  # the step's draw for dropout and random activations
    grads: Any
    updates: Any  # what the optimizer chain added to the params


class Buffer(NamedTuple):
    """The diagnosed steps of one epoch: rows [0, count) are valid."""

    steps: jax.Array  # (capacity,) int32
    values: jax.Array  # (capacity, len(STATS), layers) float32
    count: jax.Array  # () int32


def layer_names(params: Any) -> list[str]:
    """The layers with a connection weight, from the input up (`dense_<i>`/`conv_<i>` by i, then `head`)."""
    return weight_layers(name for name, leaf in params.items() if "kernel" in leaf)


def capacity(steps_per_epoch: int, every: int) -> int:
    """The most multiples of `every` that any `steps_per_epoch` consecutive steps can hold."""
    return math.ceil(steps_per_epoch / every)


def saturation_bounds(activation: Any) -> tuple[float, float] | None:
    """The asymptotes of a sigmoid or tanh activation (also when wrapped in functools.partial), else None."""
    fn = getattr(activation, "func", activation)
    return next((bounds for known, bounds in ASYMPTOTES if fn is known), None)


def kernel_grads_finite(grads: Any, names: list[str]) -> jax.Array:
    """(layers,) bool: whether each layer's kernel gradient is entirely finite; one reduction per kernel."""
    return jnp.stack([jnp.all(jnp.isfinite(grads[name]["kernel"])) for name in names])


def lowest_nonfinite(finite: jax.Array) -> jax.Array:
    """The index of the first layer (from the input) whose gradient is not finite, -1 if none."""
    return jnp.where(jnp.all(finite), -1, jnp.argmin(finite))


def make_layer_stats(activation: Any, names: list[str], frozen: frozenset = frozenset()) -> Callable:
    """`layer_stats(state, trace) -> (len(STATS), layers) array` for a model with this activation and layers.

    The model `sow`s each hidden weight layer's output (`preact`, in layer order), the head's (`head_preact`)
    and each block's activation output (`block_<i>/activated`: before any normalization placed after it and before
    dropout); the diagnosed forward pass replays the step's own inputs, params, RNG and frozen layers.
    """
    bounds = saturation_bounds(activation)

    def activation_stats(a: jax.Array) -> list[jax.Array]:
        if bounds is None:
            saturated = jnp.asarray(jnp.nan)
        else:
            low, high = bounds
            margin = SATURATION_MARGIN * (high - low)
            saturated = jnp.mean((a < low + margin) | (a > high - margin))
        dead = jnp.mean(jnp.all(a.reshape(-1, a.shape[-1]) <= 0, axis=0))
        return [jnp.mean(a), jnp.std(a), saturated, dead]

    def layer_stats(state: Any, trace: StepTrace) -> jax.Array:
        _, variables = state.apply_fn(
            {"params": trace.params, "batch_stats": state.batch_stats}, trace.x, train=True, frozen=frozen,
            rngs={"dropout": trace.dropout_rng}, mutable=["batch_stats", "intermediates"])
        seen = variables["intermediates"]
        preacts = list(seen.get("preact", ())) + [seen["head_preact"][0]]
        columns = []
        for i, name in enumerate(names):
            if name == HEAD:  # no activation after the logits
                act = [jnp.asarray(jnp.nan)] * 4
            else:  # the weight layer at depth i feeds block_<i>
                act = activation_stats(seen[block_of(name)]["activated"][0])
            kernel = state.params[name]["kernel"]
            weight_norm = jnp.linalg.norm(kernel.ravel())
            grad_norm = jnp.linalg.norm(trace.grads[name]["kernel"].ravel())
            columns.append(jnp.stack([
                jnp.mean(preacts[i]), jnp.std(preacts[i]), *act,
                grad_norm, grad_norm / math.sqrt(fan_in(kernel)), weight_norm,
                jnp.linalg.norm(trace.updates[name]["kernel"].ravel()) / weight_norm,
            ]).astype(jnp.float32))
        return jnp.stack(columns, axis=1)

    return layer_stats


def empty_buffer(capacity: int, layers: int) -> Buffer:
    return Buffer(jnp.full((capacity,), -1, jnp.int32), jnp.full((capacity, len(STATS), layers), jnp.nan),
                  jnp.zeros((), jnp.int32))


def record(buffer: Buffer, step: jax.Array, values: jax.Array) -> Buffer:
    """The buffer with one more diagnosed step in its next free row."""
    return Buffer(buffer.steps.at[buffer.count].set(step), buffer.values.at[buffer.count].set(values),
                  buffer.count + 1)


def to_records(epoch: int, buffer: Buffer, names: list[str]) -> list[dict]:
    """The diagnostics.jsonl records of one epoch's buffer (fetched to the host); undefined or non-finite is None."""
    values = np.asarray(buffer.values)
    return [{"step": int(buffer.steps[row]), "epoch": epoch,
             "layers": [{"name": name, **{stat: finite_or_none(float(values[row, s, i]))
                                          for s, stat in enumerate(STATS)}}
                        for i, name in enumerate(names)]}
            for row in range(int(buffer.count))]


def fan_in(kernel: Any) -> int:
    """The inputs each output unit of a kernel sums over: in-features, or in-channels x window for a convolution."""
    return math.prod(kernel.shape[:-1])


def grad_norm_ratio(record: dict) -> float | None:
    """The first layer's grad_norm_per_input over the head's (the module docstring's definition): near 1 in a
    healthy net whatever its input width, far below 1 when gradients vanish on the way down. None where either
    is missing or not finite, or the head's is 0; records written before the field existed have no ratio."""
    low = record["layers"][0].get("grad_norm_per_input")
    top = record["layers"][-1].get("grad_norm_per_input")
    return None if low is None or not top else low / top


def summarize(records: list[dict]) -> dict[str, float | None]:
    """summary.json's diagnostics: the gradient-norm ratio at the first diagnosed step and its median."""
    ratios = [r for r in (grad_norm_ratio(rec) for rec in records) if r is not None]
    return {"grad_norm_ratio": grad_norm_ratio(records[0]) if records else None,
            "grad_norm_ratio_median": float(np.median(ratios)) if ratios else None}
