"""The compiled epoch and evaluation against their step-by-step definitions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runner.training.build import build_parts
from runner.training.train import create_train_state, make_evaluate, make_train_epoch, make_train_step
from tests.conftest import compose_config

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("train_module")


@functools.cache
def _setup(*overrides, n=100):
    """(parts, state, x, y) on n random 8x8 inputs, built once per config for the module's tests, which only read
    them. 100 examples: 6 batches of 16, and 4 left over."""
    cfg = compose_config("trainer.batch_size=16", *overrides)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=n // 16)
    state = create_train_state(jax.random.PRNGKey(0), parts, jnp.asarray(x[:16]))
    return parts, state, jnp.asarray(x), jnp.asarray(y)


@functools.cache
def _program(overrides):
    """The compiled epoch of `_setup(*overrides)`'s parts, compiled once for the module's tests."""
    return jax.jit(make_train_epoch(_setup(*overrides)[0], 16))


# The default net (Adam, batch norm, dropout); and one whose step also carries a momentum trace, an L2 penalty and
# a rate decayed per step (the schedule's count in the optimizer state).
@pytest.mark.parametrize("overrides", [
    (), ("regularizer=[l2,dropout]", "optimizer=momentum", "schedule=exponential", "schedule.decay_every=2",
         "schedule.unit=step")])
def test_scanned_epoch_equals_one_step_at_a_time(overrides):
    parts, state, x, y = _setup(*overrides)
    key = jax.random.PRNGKey(3)
    scanned, metrics = _program(overrides)(state, x, y, key)

    step = jax.jit(make_train_step(parts))
    order = np.asarray(jax.random.permutation(key, x.shape[0]))[:96].reshape(-1, 16)  # the last 4 left out
    losses = []
    for indices in order:
        state, m = step(state, x[indices], y[indices])
        losses.append(float(m["loss"]))
    assert int(scanned.step) == int(state.step) == len(order)
    for a, b in zip(jax.tree_util.tree_leaves(scanned.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(metrics["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert int(metrics["first_nonfinite_step"]) == -1


def test_epoch_drops_only_the_last_partial_batch_and_visits_each_example_once():
    _, state, x, y = _setup()
    after, _ = _program(())(state, x, y, jax.random.PRNGKey(0))
    assert int(after.step) == 100 // 16


def test_divergence_is_reported_with_its_first_step():
    parts, state, x, y = _setup("optimizer=sgd", "optimizer.learning_rate=1e12", "normalization=none",
                                     "initializer=normal")
    _, metrics = jax.jit(make_train_epoch(parts, 16))(state, x * 1e3, y, jax.random.PRNGKey(0))
    assert 0 <= int(metrics["first_nonfinite_step"]) < 6


def test_evaluate_with_padding_equals_a_direct_computation():
    _, state, x, y = _setup()
    x, y = x[:50], y[:50]
    batch = 16
    total = 64
    xp = jnp.concatenate([x, jnp.zeros((total - 50, *x.shape[1:]))])
    yp = jnp.concatenate([y, jnp.zeros((total - 50,), jnp.int32)])
    mask = jnp.arange(total) < 50
    got = jax.jit(make_evaluate(batch))(state, xp, yp, mask, jax.random.PRNGKey(0))
    logits = np.asarray(jax.jit(state.apply_fn, static_argnames="train")(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False), np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    expected_loss = -log_probs[np.arange(50), np.asarray(y)].mean()
    expected_acc = np.mean(logits.argmax(1) == np.asarray(y))
    assert float(got["loss"]) == pytest.approx(float(expected_loss), rel=1e-5)
    assert float(got["accuracy"]) == pytest.approx(float(expected_acc))


def test_mc_dropout_averages_stochastic_passes_and_differs_from_deterministic():
    _, state, x, y = _setup()  # dropout 0.2 after each hidden layer
    x, y, mask = x[:32], y[:32], jnp.ones(32, bool)
    key = jax.random.PRNGKey(1)
    deterministic = jax.jit(make_evaluate(16))(state, x, y, mask, key)
    mc = jax.jit(make_evaluate(16, mc_samples=8))(state, x, y, mask, key)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    one_pass = jax.jit(lambda xb, k: jax.nn.softmax(state.apply_fn(variables, xb, train=False, dropout=True,
                                                                   rngs={"dropout": k})))
    losses = []
    for i in range(2):  # batch i: 8 passes, keyed by split(fold_in(key, i), 8)
        batch = slice(16 * i, 16 * (i + 1))
        keys = jax.random.split(jax.random.fold_in(key, i), 8)
        probs = jnp.mean(jnp.stack([one_pass(x[batch], k) for k in keys]), 0)
        losses.append(-jnp.log(probs[jnp.arange(16), y[batch]] + 1e-12))
    assert float(mc["loss"]) != pytest.approx(float(deterministic["loss"]))
    assert float(mc["loss"]) == pytest.approx(float(jnp.concatenate(losses).mean()), rel=1e-5)
