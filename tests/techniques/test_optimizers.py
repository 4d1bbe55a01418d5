"""Tests for runner/techniques/optimizers.py: FTRL against the paper, and as an optax citizen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.techniques.optimizers import FtrlState, ftrl


def ftrl_reference(w0, grad_fn, steps, alpha, beta, l1, l2, n0):
    """McMahan et al. 2013, Algorithm 1, one coordinate at a time, in float64 NumPy.

    grad_fn(w, t) gives the gradient at the current weights; returns the weights after each step.
    """
    w = np.array(w0, np.float64).ravel()
    z = np.zeros_like(w)
    n = np.full_like(w, n0)
    history = []
    for t in range(steps):
        g = np.asarray(grad_fn(w.reshape(np.shape(w0)), t), np.float64).ravel()
        for i in range(w.size):
            sigma = (np.sqrt(n[i] + g[i] ** 2) - np.sqrt(n[i])) / alpha
            z[i] += g[i] - sigma * w[i]
            n[i] += g[i] ** 2
            if abs(z[i]) <= l1:
                w[i] = 0.0
            else:
                w[i] = -(z[i] - np.sign(z[i]) * l1) / ((beta + np.sqrt(n[i])) / alpha + l2)
        history.append(w.reshape(np.shape(w0)).copy())
    return history


def test_ftrl_matches_numpy_transcription_of_mcmahan_algorithm_1():
    rng = np.random.default_rng(0)
    hp = dict(alpha=0.3, beta=0.5, l1=2.0, l2=0.2, n0=0.1)
    w0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
    target = {k: rng.normal(size=v.shape) for k, v in w0.items()}
    noise = [{k: rng.normal(size=v.shape) for k, v in w0.items()} for _ in range(20)]

    def grad_fn(w, t, key):
        # A gradient that depends on the current weights, so both sides must track w.
        return (w - target[key]) + noise[t][key]

    expected = {
        key: ftrl_reference(w0[key], lambda w, t, key=key: grad_fn(w, t, key), 20, **hp)
        for key in w0
    }
    with jax.enable_x64(True):
        opt = ftrl(hp["alpha"], beta=hp["beta"], l1=hp["l1"], l2=hp["l2"],
                   initial_accumulator_value=hp["n0"])
        params = jax.tree.map(jnp.asarray, w0)
        state = opt.init(params)
        update = jax.jit(opt.update)
        for t in range(20):
            grads = {key: jnp.asarray(grad_fn(np.asarray(params[key]), t, key)) for key in params}
            updates, state = update(grads, state, params)
            params = optax.apply_updates(params, updates)
            for key in params:
                assert params[key].dtype == jnp.float64
                np.testing.assert_allclose(params[key], expected[key][t], rtol=1e-6, atol=1e-9)
    final = np.concatenate([expected[k][-1].ravel() for k in expected])
    # Both branches of the closed form were exercised.
    assert (final == 0.0).any() and (final != 0.0).any()


def _sparse_regression(l1):
    """FTRL on least squares where only 3 of 40 features matter; returns the final weights."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(256, 40)), jnp.float32)
    true_w = np.zeros(40, np.float32)
    true_w[:3] = [2.0, -3.0, 1.5]
    y = x @ true_w + 0.1 * jnp.asarray(rng.normal(size=256), jnp.float32)
    loss = lambda w: jnp.mean((x @ w - y) ** 2)
    opt = ftrl(0.5, l1=l1)

    @jax.jit
    def run(w):
        def body(_, carry):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state, w)
            return optax.apply_updates(w, updates), state

        return jax.lax.fori_loop(0, 300, body, (w, opt.init(w)))[0]

    return np.asarray(run(jnp.full(40, 0.01, jnp.float32)))


def test_ftrl_l1_sets_irrelevant_weights_to_exactly_zero():
    sparse = _sparse_regression(l1=30.0)
    dense = _sparse_regression(l1=0.0)
    assert np.mean(sparse[3:] == 0.0) >= 0.9
    assert np.all(sparse[:3] != 0.0)
    np.testing.assert_allclose(sparse[:3], [2.0, -3.0, 1.5], atol=0.1)
    # Without l1 nothing is pinned at zero, so the zeros above come from l1.
    assert np.all(dense != 0.0)


def _parabola():
    return (
        jnp.array([-1.0, 10.0, 1.0]),
        jnp.array([1.0, -1.0, 1.0]),
        lambda p: jnp.sum((p - jnp.array([1.0, -1.0, 1.0])) ** 2),
    )


def _rosenbrock():
    a, b = 1.0, 100.0
    return (
        jnp.array([0.0, 0.0]),
        jnp.array([a, a**2]),
        lambda p: (a - p[0]) ** 2 + b * (p[1] - p[0] ** 2) ** 2,
    )


@pytest.mark.parametrize("target", [_parabola, _rosenbrock], ids=["parabola", "rosenbrock"])
def test_ftrl_converges_under_jit(target):
    # The pattern of optax/_src/alias_test.py: a jitted step, many calls, close to the minimum.
    initial, final, objective = target()
    opt = ftrl(learning_rate=0.3)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(objective)(params), state, params)
        return optax.apply_updates(params, updates), state

    params, state = initial, opt.init(initial)
    for _ in range(3000):
        params, state = step(params, state)
    np.testing.assert_allclose(params, final, rtol=3e-2, atol=3e-2)


def _run(opt, steps=6):
    """Updates of opt over a few steps of fixed pseudo-random gradients on a small pytree."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])}
    state = opt.init(params)
    update = jax.jit(opt.update)
    out = []
    for t in range(steps):
        grads = jax.tree.map(
            lambda p: jax.random.normal(jax.random.fold_in(jax.random.key(0), t), p.shape), params
        )
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def test_ftrl_in_inject_hyperparams_with_schedule_follows_the_schedule():
    schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
    injected, state = _run(optax.inject_hyperparams(ftrl)(learning_rate=schedule, l1=0.01))
    direct, _ = _run(ftrl(learning_rate=schedule, l1=0.01))
    constant, _ = _run(ftrl(learning_rate=0.5, l1=0.01))
    for a, b in zip(injected, direct):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
    # The schedule was read at each step: the last learning rate is 0.5 * 0.5**5.
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.5 * 0.5**5, rtol=1e-6)
    assert not np.allclose(injected[-1]["w"], constant[-1]["w"])


def test_ftrl_in_inject_hyperparams_with_float_equals_plain_ftrl():
    injected, _ = _run(optax.inject_hyperparams(ftrl)(learning_rate=0.2, beta=0.5, l2=0.1))
    plain, _ = _run(ftrl(learning_rate=0.2, beta=0.5, l2=0.1))
    for a, b in zip(injected, plain):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def test_ftrl_after_clip_by_global_norm_sees_clipped_gradients():
    params = jnp.array([1.0, -2.0, 0.5])
    grads = jnp.array([30.0, -40.0, 0.0])  # global norm 50
    chained = optax.chain(optax.clip_by_global_norm(1.0), ftrl(0.1, l1=0.01))
    updates, _ = chained.update(grads, chained.init(params), params)
    alone = ftrl(0.1, l1=0.01)
    expected, _ = alone.update(grads / 50.0, alone.init(params), params)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_ftrl_state_keeps_structure_and_dtypes_across_steps():
    # lax.scan carries the optimizer state, so an update must not change its types.
    params = {"w": jnp.ones((2, 2), jnp.float32)}
    opt = ftrl(optax.linear_schedule(0.1, 0.01, 10))
    state = opt.init(params)
    _, new_state = opt.update({"w": jnp.ones((2, 2))}, state, params)
    assert isinstance(new_state, FtrlState)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert int(new_state.count) == 1


def test_ftrl_without_params_raises_value_error():
    opt = ftrl(0.1)
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match="needs the current parameters"):
        opt.update(jnp.ones(3), opt.init(params))
