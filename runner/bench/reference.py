"""The limit: the runner's nets and update written by hand in plain JAX, the yardstick the bench times against.

Params as lists of (W, b), elu, he_normal, optional batch norm and dropout, optax.adam, softmax
cross-entropy, the epoch as one `lax.scan` over batches gathered by index. `limit_spec` refuses a config
it does not model, so a new bench case cannot silently compare different nets.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
from hydra.utils import get_object
from omegaconf import DictConfig

from runner.net.conv import conv
from runner.net.model import Net
from runner.techniques import schedules
from runner.training import stages

NUM_CLASSES = 10


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
    modelled = {"model": Net, "activation": jax.nn.elu, "initializer": jax.nn.initializers.he_normal,
                "optimizer": optax.adam, "schedule": schedules.constant, "clip": optax.identity,
                "stages": stages.single}
    for group, callable_ in modelled.items():
        if get_object(cfg[group]._target_) is not callable_:  # the callable itself, not its name
            raise ValueError(f"the limit models {group} {callable_.__name__} only, not {cfg[group]._target_}")
    if cfg.activation.get("alpha", 1.0) != 1.0:
        raise ValueError(f"the limit models elu with alpha 1 only, not {cfg.activation.alpha}")
    regularizers = dict(cfg.get("regularizer") or {})
    if set(regularizers) - {"dropout"} or (regularizers and regularizers["dropout"].on_inputs):
        raise ValueError(f"the limit models hidden dropout only, not regularizer={list(regularizers)}")
    layer = cfg.normalization.layer
    if layer is not None and (get_object(layer._target_) is not nn.BatchNorm or cfg.normalization.position != "pre"):
        raise ValueError(f"the limit models batch norm before the activation only, not {layer._target_}")
    widths = cfg.model.widths
    if widths is not None and len(set(widths)) > 1:
        raise ValueError(f"the limit models dense layers of one width only, not model.widths={list(widths)}")
    return LimitSpec(
        channels=tuple(cfg.model.channels),
        depth=cfg.model.depth if widths is None else len(widths),
        width=cfg.model.width if not widths else widths[0],
        batch_norm=None if layer is None else (layer.momentum, layer.epsilon),
        dropout_rate=regularizers["dropout"].rate if regularizers else 0.0,
        adam={k: cfg.optimizer[k] for k in ("learning_rate", "b1", "b2", "eps")},
    )


def run_once(fn: Callable, *args) -> Any:
    """`fn(*args)` as one program compiled without optimization (XLA's optimizing compile of the threefry
    RNG takes ~0.4 s per random draw on CPU, far more than an initializer runs)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def _pools(spatial: Sequence[int]) -> bool:
    return all(size >= 2 for size in spatial)  # the runner's CNN skips pooling once a side is 1


def init_limit(key: jax.Array, spec: LimitSpec, input_shape: Sequence[int]) -> LimitState:
    """He-normal weights, zero biases, unit scales: the runner's initialization, by hand."""
    return run_once(lambda key: _init_limit(key, spec, input_shape), key)


def _layer_shapes(spec: LimitSpec, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernel shapes, convolutions first, the head last."""
    shapes, spatial, channels = [], list(input_shape[:-1]), input_shape[-1]
    for features in spec.channels:
        shapes.append((3,) * len(spatial) + (channels, features))
        channels = features
        spatial = [s // 2 for s in spatial] if _pools(spatial) else spatial
    fan_in = math.prod(spatial) * channels
    for _ in range(spec.depth):
        shapes.append((fan_in, spec.width))
        fan_in = spec.width
    return shapes + [(fan_in, NUM_CLASSES)]


def _init_limit(key: jax.Array, spec: LimitSpec, input_shape: Sequence[int]) -> LimitState:
    he_normal = jax.nn.initializers.he_normal()
    shapes = _layer_shapes(spec, input_shape)
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
