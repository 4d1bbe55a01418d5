"""Train state, the pure train and eval steps, and the epoch as one compiled loop of an `Update`.

Nothing here reads the config, prints, or returns to the host: `make_epoch_programs`, `make_train_epoch` and
`make_evaluate` close over an `Update` or `Parts` and return functions of arrays only, which the caller jits.
The epoch program is generic over its step: the classifier's train step is one `Update` (`classifier_update`),
a greedy pretraining layer's another (runner/reuse/pretraining/methods.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from runner.training.diagnostics import (StepTrace, capacity, empty_buffer, kernel_grads_finite, layer_names,
                                         lowest_nonfinite, make_layer_stats, record)

if TYPE_CHECKING:
    from runner.net.model import Model
    from runner.techniques.regularizers import Regularizer
    from runner.techniques.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class Parts:
    """The parts of a run built from its config (runner/training/build.py): everything the train step closes over."""

    model: Model
    optimizer: optax.GradientTransformation
    regularizer: Regularizer
    schedule: Schedule


class TrainState(train_state.TrainState):
    """Params, optimizer state and step, plus batch-norm statistics and the run's RNG."""

    batch_stats: Any = None
    rng: jax.Array = None  # never split in place: each step uses fold_in(rng, step)


def create_train_state(rng: jax.Array, parts: Parts, example_x: jax.Array,
                       tx: optax.GradientTransformation | None = None,
                       sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """Initialize the model on one example batch and the optimizer (`tx`, default the run's chain) on its params.

    `sharding`: where the state is placed (replicated over a run's devices); default, where JAX puts it.
    """
    return init_program(parts, tx, sharding)(rng, example_x)


def init_program(parts: Parts, tx: optax.GradientTransformation | None = None,
                 sharding: jax.sharding.Sharding | None = None) -> Callable:
    """`create(rng, example_x) -> TrainState`, jitted: create_train_state's program."""
    placed = {} if sharding is None else {"out_shardings": sharding}

    # One compiled program: run eagerly, every initializer op would compile on its own (seconds at start-up).
    # It runs once, so XLA's optimizations cost more than they save (2.3 s -> 0.4 s to compile on 2 CPU cores).
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0}, **placed)
    def create(rng, example_x):
        init_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
        variables = parts.model.init({"params": init_rng, "dropout": dropout_rng}, example_x, train=False)
        return TrainState.create(
            apply_fn=parts.model.apply,
            params=variables["params"],
            tx=parts.optimizer if tx is None else tx,
            batch_stats=variables.get("batch_stats", {}),
            rng=run_rng,
        )

    return create


def make_train_step_with_trace(parts: Parts, frozen: frozenset = frozenset()) -> Callable:
    """`step_with_trace(state, x, y) -> (state, metrics, trace)`: the train step, also returning its `StepTrace`.

    Layers named in `frozen` run in inference mode (batch statistics fixed, no dropout); the optimizer
    chain of their stage leaves their parameters where they are.

    The trace (inputs as seen, RNG, gradients, updates) is what per-layer diagnostics and divergence checks
    need; where nothing reads it, XLA drops it from the compiled program.
    """
    regularizer = parts.regularizer

    def step_with_trace(state: TrainState, x: jax.Array, y: jax.Array):
        augment_rng, perturb_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
        if regularizer.augment is not None:
            x = regularizer.augment(x, augment_rng)

        def loss_fn(params):
            seen = params if regularizer.perturb is None else regularizer.perturb(params, perturb_rng)
            logits, updates = state.apply_fn(
                {"params": seen, "batch_stats": state.batch_stats}, x, train=True, frozen=frozen,
                rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            penalty = 0.0 if regularizer.penalty is None else regularizer.penalty(params)
            return loss + penalty, (loss, logits, updates.get("batch_stats", {}), seen)

        grads, (loss, logits, batch_stats, seen) = jax.grad(loss_fn, has_aux=True)(state.params)
        # value=: what reduce_on_plateau's update takes; in the chain it only applies the scale (runner/training/optim.py).
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, batch_stats=batch_stats)
        metrics = {"loss": loss, "correct": jnp.sum(jnp.argmax(logits, -1) == y)}
        return new_state, metrics, StepTrace(x, seen, dropout_rng, grads, updates)

    return step_with_trace


def make_train_step(parts: Parts) -> Callable:
    """`train_step(state, x, y) -> (state, metrics)` with every choice closed over."""
    step_with_trace = make_train_step_with_trace(parts)

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        state, metrics, _ = step_with_trace(state, x, y)
        return state, metrics

    return train_step


class Update(NamedTuple):
    """One step of training: what an epoch's program (`make_epoch_programs`) applies to its state, batch by batch.

    `apply(state, x, y, key) -> (state, metrics, trace)`: the state after one batch, x its inputs, y its labels
    (None for a training without labels), key the batch's own key, fold_in(the epoch's key, the step's index in
    the epoch). metrics: "loss" (float32) and, where the step classifies, "correct" (how many of the batch).
    trace: a `StepTrace` (a checked epoch checks its gradients), or None for an update that is not a gradient
    step (an RBM's contrastive divergence: a checked epoch checks its loss alone). The state needs `step`
    (which `apply` counts) and `params` (checked finite at the epoch's end).

    `layer_stats(names)`: the per-layer statistics diagnostics record (`make_layer_stats`); None: none.
    The classifier's train step is one (`classifier_update`); greedy pretraining's layers are others.
    """

    apply: Callable
    layer_stats: Callable[[list[str]], Callable] | None = None


def classifier_update(parts: Parts, frozen: frozenset = frozenset()) -> Update:
    """The run's train step (`make_train_step_with_trace`) as an `Update`."""
    step_with_trace = make_train_step_with_trace(parts, frozen)

    def apply(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        del key  # the classifier draws from its state's rng, fold_in(rng, step): a resumed run draws alike
        return step_with_trace(state, x, y)

    return Update(apply, lambda names: make_layer_stats(parts.model.activation, names, frozen))


class EpochCarry(NamedTuple):
    """What an epoch carries from step to step (and from one chunk of steps to the next)."""

    state: Any
    key: jax.Array  # the epoch's key: step i's batch key is fold_in(key, i)
    loss_sum: jax.Array
    correct: jax.Array
    first_bad: jax.Array  # the first step whose loss (or, checked, a kernel gradient) was not finite; -1 if none
    bad_layer: jax.Array  # checked: the lowest non-finite layer at that step; -1 if none
    buffer: Any  # per-layer diagnostics (None when diagnostics are off)
    losses: jax.Array | None  # with step_losses: each step's loss, NaN for steps not taken yet; else None


def make_epoch_programs(update: Update, batch_size: int, diagnostics_every: int = 0, checked: bool = False,
                        batch_sharding: jax.sharding.Sharding | None = None,
                        step_losses: bool = False) -> tuple[Callable, Callable]:
    """`begin(state, x, key) -> (carry, order)` and `train_steps(carry, x, y, order, start, stop) -> (carry, metrics)`.

    The one epoch program: `update` (`Update`; the classifier's is `classifier_update`) over shuffled batches.
    An epoch is `begin` (the batch order, permutation(key), and empty accumulators), then `train_steps` over
    steps [start, stop) — once over the whole epoch or in chunks, to the same bits: the chunk program is one
    compiled loop whose bounds are arguments, so any split runs the same executable step by step. The data
    stay on device; each step gathers its batch by index. The last partial batch is dropped.

    metrics (of the steps so far): mean loss, accuracy (0 for an update that does not classify),
    `first_nonfinite_step` (the first step whose loss was not finite, -1 if none) and `params_finite` (whether
    every parameter is finite at the epoch's end; true before it). With `step_losses`, also `step_losses`: the
    loss of each step of the epoch (NaN for those not taken yet), for a caller that judges step by step (the LR
    range test) without a host round-trip per step.

    `checked` (for replaying an epoch that went non-finite): each step also checks every kernel gradient;
    `first_nonfinite_step` is the first step whose loss or a kernel gradient was not finite,
    `nonfinite_layer` the lowest such layer then (an index into `layer_names`, -1 if only the loss), and
    from that step on the state stays the last finite one. The checks cost a reduction per kernel per step
    (+10-25% per epoch for a small MLP on CPU), which is why healthy epochs run without them.

    With `diagnostics_every` N > 0 (an update with `layer_stats`), also `diagnostics`: a `Buffer` of per-layer
    statistics of the steps that are multiples of N. With N = 0 the program has no branch and no buffer.

    `batch_sharding` (data parallel, runner/scale/distributed.py): each step's gathered batch is constrained to it,
    split over the devices, while the dataset and the state stay replicated; None on one device.
    """
    batch_of = _batch_gatherer(batch_sharding)

    def begin(state: Any, x: jax.Array, key: jax.Array) -> tuple[EpochCarry, jax.Array]:
        steps = x.shape[0] // batch_size
        order = jax.random.permutation(key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)
        buffer = (empty_buffer(capacity(steps, diagnostics_every), len(layer_names(state.params)))
                  if diagnostics_every else None)
        losses = jnp.full((steps,), jnp.nan, jnp.float32) if step_losses else None
        minus_one = jnp.asarray(-1, jnp.int32)
        # Copies: the chunks update the carry in place (their caller donates it), and `state` and `key` must
        # survive them (an epoch stopped mid-way or replayed starts again from them).
        state, key = jax.tree_util.tree_map(jnp.copy, (state, key))
        return EpochCarry(state, key, jnp.zeros(()), jnp.zeros((), jnp.int32), minus_one, minus_one, buffer,
                          losses), order

    def train_steps(carry: EpochCarry, x: jax.Array, y: jax.Array | None, order: jax.Array, start: jax.Array,
                    stop: jax.Array) -> tuple[EpochCarry, dict]:
        steps = order.shape[0]
        diagnose_next = None
        if diagnostics_every:  # the epoch's first step; every later one is diagnosed by the step before it
            stats = update.layer_stats(layer_names(carry.state.params))
            diagnose_next = _make_diagnoser(update.apply, stats, diagnostics_every, x, y, batch_of)
            carry = carry._replace(buffer=diagnose_next(start == 0, carry.state, order[start],
                                                        jax.random.fold_in(carry.key, start), carry.buffer))
        body = _make_step_body(update.apply, x, y, order, checked, batch_of, diagnose_next)
        carry = jax.lax.fori_loop(start, stop, body, carry)
        metrics = {"loss": carry.loss_sum / stop, "accuracy": carry.correct / (stop * batch_size),
                   "first_nonfinite_step": carry.first_bad,
                   # at the epoch's end only: a reduction over every parameter would cost each chunk a pass
                   "params_finite": jax.lax.cond(stop == steps, _all_finite, lambda _: jnp.asarray(True),
                                                 carry.state.params)}
        if checked:
            metrics["nonfinite_layer"] = carry.bad_layer
        if diagnostics_every:
            metrics["diagnostics"] = carry.buffer
        if step_losses:
            metrics["step_losses"] = carry.losses
        return carry, metrics

    return begin, train_steps


def _make_step_body(apply: Callable, x: jax.Array, y: jax.Array | None, order: jax.Array, checked: bool,
                    batch_of: Callable, diagnose_next: Callable | None) -> Callable:
    """`body(i, carry) -> carry`: step i of the epoch (the loop body of `make_epoch_programs`)."""
    steps = order.shape[0]

    def body(i, carry: EpochCarry) -> EpochCarry:
        state, key, loss_sum, correct, first_bad, bad_layer, buffer, losses = carry
        step, healthy = state.step, first_bad < 0
        new_state, m, trace = apply(state, *batch_of(x, y, order[i]), jax.random.fold_in(key, i))
        ok = jnp.isfinite(m["loss"])
        if checked and trace is not None:
            finite = kernel_grads_finite(trace.grads, layer_names(state.params))
            ok = ok & jnp.all(finite)
            bad_layer = jnp.where(healthy & ~ok, lowest_nonfinite(finite), bad_layer)
        first_bad = jnp.where(healthy & ~ok, step, first_bad)
        if checked:  # keep the last finite state, so checkpoints and test metrics stay usable
            new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(first_bad < 0, new, old),
                                               new_state, state)
        if diagnose_next is not None:
            following = jnp.minimum(i + 1, steps - 1)
            buffer = diagnose_next((first_bad < 0) & (i + 1 < steps), new_state, order[following],
                                   jax.random.fold_in(key, following), buffer)
        if losses is not None:
            losses = losses.at[i].set(m["loss"])
        return EpochCarry(new_state, key, loss_sum + m["loss"], correct + m.get("correct", 0), first_bad,
                          bad_layer, buffer, losses)

    return body


def nonfinite(metrics: dict) -> bool:
    """Whether an epoch's metrics (on the host, so far) say a step's loss or the parameters went non-finite."""
    return metrics["first_nonfinite_step"] >= 0 or not metrics["params_finite"]


def finite_members(metrics: dict) -> np.ndarray:
    """Per member of a stacked epoch's metrics (trainer.replicas): whether its loss and parameters stayed finite."""
    return (np.asarray(metrics["first_nonfinite_step"]) < 0) & np.asarray(metrics["params_finite"])


def whole_epoch(programs: tuple[Callable, Callable]) -> Callable:
    """`train_epoch(state, x, y, key) -> (state, metrics)`: the epoch of `make_epoch_programs` run whole."""
    begin, train_steps = programs

    def train_epoch(state: Any, x: jax.Array, y: jax.Array | None, key: jax.Array):
        carry, order = begin(state, x, key)
        carry, metrics = train_steps(carry, x, y, order, 0, order.shape[0])
        return carry.state, metrics

    return train_epoch


def make_train_epoch(parts: Parts, batch_size: int, diagnostics_every: int = 0, checked: bool = False,
                     frozen: frozenset = frozenset(), batch_sharding: jax.sharding.Sharding | None = None) -> Callable:
    """`train_epoch(state, x, y, key) -> (state, metrics)`: one pass of the run's train step over shuffled batches,
    one program (`make_epoch_programs` of `classifier_update`, see there for the metrics and options)."""
    return whole_epoch(make_epoch_programs(classifier_update(parts, frozen), batch_size, diagnostics_every, checked,
                                           batch_sharding))


def _batch_gatherer(sharding: jax.sharding.Sharding | None) -> Callable:
    """`batch_of(x, y, indices) -> (x[indices], y[indices])` (y None stays None), constrained to `sharding` when
    there is one.

    The dataset is replicated, so each device gathers its own share of the batch: nothing crosses devices
    until the loss and gradients are reduced.
    """
    def batch_of(x: jax.Array, y: jax.Array | None, indices: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        batch = x[indices], None if y is None else y[indices]
        if sharding is None:
            return batch
        return tuple(None if a is None else jax.lax.with_sharding_constraint(a, sharding) for a in batch)

    return batch_of


def _make_diagnoser(apply: Callable, layer_stats: Callable, every: int, x: jax.Array, y: jax.Array | None,
                    batch_of: Callable) -> Callable:
    """`diagnose_next(due, state, indices, key, buffer) -> buffer`: diagnose the step `state` is about to take on
    batch `indices` (with its key) by redoing it without applying it, when `due` and the step is a multiple of
    `every`.

    It runs at the end of the previous iteration, where it reads only the new state: a branch that reads a
    step's gradients or the params it overwrites makes XLA keep and copy them at every step (measured +15-25%
    per epoch), while redoing the step costs one step in N.
    """

    def diagnose_next(due, state, indices, key, buffer):
        def measure(buffer):
            _, _, trace = apply(state, *batch_of(x, y, indices), key)
            return record(buffer, state.step, layer_stats(state, trace))

        return jax.lax.cond(due & (state.step % every == 0), measure, lambda b: b, buffer)

    return diagnose_next

def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(tree)]))


def predictive_passes(apply_fn: Callable, variables: dict, x: jax.Array, keys: jax.Array) -> jax.Array:
    """Class probabilities of one stochastic pass per key, (len(keys), N, K): MC dropout (Gal & Ghahramani 2016),
    dropout active, normalization on its running statistics."""
    return jax.vmap(lambda k: jax.nn.softmax(apply_fn(variables, x, train=False, dropout=True,
                                                      rngs={"dropout": k})))(keys)


def make_evaluate(batch_size: int, mc_samples: int = 0,
                  batch_sharding: jax.sharding.Sharding | None = None) -> Callable:
    """`evaluate(state, x, y, mask, key) -> metrics`: loss and accuracy over padded batches, one program.

    `mask` marks real examples (inputs are padded to a whole number of batches). With `mc_samples` > 0
    the prediction is MC dropout (Gal & Ghahramani 2016): the mean class probabilities of that many passes
    with dropout active (seeded by `key`), normalization still on its running statistics.
    `batch_sharding`: each batch is split over the devices as in training (runner/scale/distributed.py).
    """
    split = (lambda a: a) if batch_sharding is None else (  # noqa: E731
        lambda a: jax.lax.with_sharding_constraint(a, batch_sharding))

    def log_probs(state: TrainState, x: jax.Array, key: jax.Array) -> jax.Array:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if mc_samples == 0:
            return jax.nn.log_softmax(state.apply_fn(variables, x, train=False))
        passes = predictive_passes(state.apply_fn, variables, x, jax.random.split(key, mc_samples))
        return jnp.log(passes.mean(0) + 1e-12)

    def evaluate(state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array, key: jax.Array):
        batches = x.shape[0] // batch_size

        def body(carry, batch):
            loss_sum, correct = carry
            bx, by, bm, i = batch
            bx, by, bm = split(bx), split(by), split(bm)
            logp = log_probs(state, bx, jax.random.fold_in(key, i))
            losses = -jnp.take_along_axis(logp, by[:, None], axis=-1)[:, 0]
            hits = (jnp.argmax(logp, -1) == by) & bm
            return (loss_sum + jnp.sum(jnp.where(bm, losses, 0.0)), correct + jnp.sum(hits)), None

        as_batches = lambda a: a.reshape((batches, batch_size) + a.shape[1:])  # noqa: E731
        (loss_sum, correct), _ = jax.lax.scan(
            body, (jnp.zeros(()), jnp.zeros((), jnp.int32)),
            (as_batches(x), as_batches(y), as_batches(mask), jnp.arange(batches)))
        count = jnp.maximum(jnp.sum(mask), 1)
        return {"loss": loss_sum / count, "accuracy": correct / count}

    return evaluate
