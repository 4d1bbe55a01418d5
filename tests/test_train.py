"""The compiled epoch and evaluation against their step-by-step definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.training.build import build_parts
from runner.training.train import create_train_state, make_evaluate, make_train_epoch, make_train_step
from tests.conftest import compose_config


def _setup(*overrides, n=96, shape=(8, 8, 1)):
    cfg = compose_config("trainer.batch_size=16", *overrides)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=n // 16)
    state = create_train_state(jax.random.PRNGKey(0), parts, jnp.asarray(x[:16]))
    return parts, state, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("overrides", [
    (), ("regularizer=[l2,dropout]", "optimizer=momentum"),
    ("schedule=exponential", "schedule.decay_every=2", "schedule.unit=step")])
def test_scanned_epoch_equals_one_step_at_a_time(overrides):
    parts, state, x, y = _setup(*overrides)
    key = jax.random.PRNGKey(3)
    scanned, metrics = jax.jit(make_train_epoch(parts, 16))(state, x, y, key)

    step = jax.jit(make_train_step(parts))
    order = np.asarray(jax.random.permutation(key, x.shape[0])).reshape(-1, 16)
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
    parts, state, x, y = _setup(n=100)
    _, metrics = jax.jit(make_train_epoch(parts, 16))(state, x, y, jax.random.PRNGKey(0))
    assert int(_.step) == 100 // 16


def test_divergence_is_reported_with_its_first_step():
    parts, state, x, y = _setup("optimizer=sgd", "optimizer.learning_rate=1e12", "normalization=none",
                                     "initializer=normal")
    _, metrics = jax.jit(make_train_epoch(parts, 16))(state, x * 1e3, y, jax.random.PRNGKey(0))
    assert 0 <= int(metrics["first_nonfinite_step"]) < 6


def test_evaluate_with_padding_equals_a_direct_computation():
    parts, state, x, y = _setup(n=50)
    batch = 16
    total = 64
    xp = jnp.concatenate([x, jnp.zeros((total - 50, *x.shape[1:]))])
    yp = jnp.concatenate([y, jnp.zeros((total - 50,), jnp.int32)])
    mask = jnp.arange(total) < 50
    got = jax.jit(make_evaluate(batch))(state, xp, yp, mask, jax.random.PRNGKey(0))
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    expected_acc = jnp.mean(jnp.argmax(logits, -1) == y)
    assert float(got["loss"]) == pytest.approx(float(expected_loss), rel=1e-5)
    assert float(got["accuracy"]) == pytest.approx(float(expected_acc))


def test_mc_dropout_averages_stochastic_passes_and_differs_from_deterministic():
    parts, state, x, y = _setup("regularizer.dropout.rate=0.5", n=32)
    mask = jnp.ones(32, bool)
    key = jax.random.PRNGKey(1)
    deterministic = jax.jit(make_evaluate(16))(state, x, y, mask, key)
    mc = jax.jit(make_evaluate(16, mc_samples=8))(state, x, y, mask, key)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    keys = jax.random.split(jax.random.fold_in(key, 0), 8)
    probs = jnp.mean(jnp.stack([jax.nn.softmax(state.apply_fn(variables, x[:16], train=False, dropout=True,
                                                              rngs={"dropout": k})) for k in keys]), 0)
    first_batch_loss = -jnp.log(probs[jnp.arange(16), y[:16]] + 1e-12)
    assert float(mc["loss"]) != pytest.approx(float(deterministic["loss"]))
    mc_first = jax.jit(make_evaluate(16, mc_samples=8))(state, x[:16], y[:16], mask[:16], key)
    assert float(mc_first["loss"]) == pytest.approx(float(first_batch_loss.mean()), rel=1e-5)
