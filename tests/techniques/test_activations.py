"""Tests for runner/techniques/activations.py: PReLU's learned slope, RReLU's random slope."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.techniques.activations import PReLU, RReLU

X = jnp.array([[-2.0, -1.0, 0.5, 3.0], [1.0, -0.5, -4.0, 2.0], [-1.5, 2.5, -0.25, -3.0]])


@pytest.mark.parametrize(
    "per_unit, x, shape",
    [
        (True, jnp.ones((2, 5)), (5,)),
        (False, jnp.ones((2, 5)), ()),
        (True, jnp.ones((2, 4, 4, 3)), (3,)),  # one slope per conv channel
    ],
)
def test_prelu_has_one_slope_per_unit_or_one_per_layer(per_unit, x, shape):
    params = PReLU(per_unit=per_unit, alpha_init=0.3).init(jax.random.key(0), x, train=True)["params"]
    assert params["alpha"].shape == shape
    np.testing.assert_array_equal(params["alpha"], np.full(shape, 0.3, np.float32))


def test_prelu_is_x_on_positives_and_alpha_times_x_on_negatives():
    layer = PReLU()
    params = {"params": {"alpha": jnp.array([0.1, 0.2, 0.3, 0.4])}}
    y = layer.apply(params, X, train=False)
    expected = np.where(X > 0, X, np.array([0.1, 0.2, 0.3, 0.4]) * X)
    np.testing.assert_allclose(y, expected, rtol=1e-7)


def test_prelu_slope_gets_the_gradient_of_negative_inputs_and_moves_under_sgd():
    layer = PReLU()
    params = layer.init(jax.random.key(0), X, train=True)

    def loss(params):
        return jnp.sum(layer.apply(params, X, train=True))

    grads = jax.grad(loss)(params)
    # d/d alpha_j of sum_i f(x_ij) is the sum of the negative x_ij in column j.
    expected = np.sum(np.where(X > 0, 0.0, X), axis=0)
    np.testing.assert_allclose(grads["params"]["alpha"], expected, rtol=1e-6)
    assert np.all(grads["params"]["alpha"] != 0.0)

    opt = optax.sgd(0.1)
    updates, _ = opt.update(grads, opt.init(params), params)
    moved = optax.apply_updates(params, updates)
    np.testing.assert_allclose(moved["params"]["alpha"], 0.25 - 0.1 * expected, rtol=1e-6)


def test_rrelu_at_evaluation_is_exactly_the_mean_slope():
    layer = RReLU(lower=0.1, upper=0.3)
    y = layer.apply({}, X, train=False)
    np.testing.assert_array_equal(y, jnp.where(X > 0, X, jnp.float32(0.2) * X))


def _train_rrelu(key, layer=RReLU(), x=None):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 16)), jnp.float32) if x is None else x
    return x, layer.apply({}, x, train=True, rngs={"dropout": key})


def test_rrelu_at_training_draws_one_slope_per_unit_within_bounds():
    layer = RReLU(lower=0.1, upper=0.3)
    x, y = _train_rrelu(jax.random.key(1), layer)
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_array_equal(y[x > 0], x[x > 0])  # positive inputs untouched
    slopes = np.where(x <= 0, y / np.where(x == 0, 1.0, x), np.nan)
    assert np.nanmin(slopes) >= 0.1 and np.nanmax(slopes) <= 0.3
    # Within a unit (column), every example has the same slope ...
    np.testing.assert_allclose(np.nanmax(slopes, 0), np.nanmin(slopes, 0), rtol=1e-6)
    # ... and the units have different ones.
    assert np.unique(np.round(np.nanmax(slopes, 0), 6)).size == x.shape[1]


def test_rrelu_at_training_differs_between_rngs_and_steps():
    x, y1 = _train_rrelu(jax.random.key(1))
    _, y2 = _train_rrelu(jax.random.key(2))
    _, y1_again = _train_rrelu(jax.random.key(1))
    np.testing.assert_array_equal(y1, y1_again)
    assert not np.allclose(y1, y2)
    np.testing.assert_array_equal(y1[x > 0], y2[x > 0])


def test_rrelu_slopes_are_uniform_over_the_range():
    # Many units in one call: their slopes should fill [lower, upper] with mean (lower + upper) / 2.
    x = -jnp.ones((1, 20000))
    _, y = _train_rrelu(jax.random.key(3), RReLU(lower=0.125, upper=1 / 3), x)
    slopes = -np.asarray(y[0])
    assert abs(slopes.mean() - (0.125 + 1 / 3) / 2) < 0.003
    assert abs(slopes.std() - (1 / 3 - 0.125) / np.sqrt(12)) < 0.003
