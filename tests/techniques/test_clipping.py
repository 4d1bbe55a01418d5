"""Tests for runner/techniques/clipping.py: per-tensor norm clipping (Keras clipnorm)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from runner.techniques.clipping import clip_by_norm


def _clip(transform, updates):
    return jax.jit(transform.update)(updates, transform.init(updates))[0]


def test_clip_by_norm_bounds_each_leaf_and_keeps_its_direction():
    keys = jax.random.split(jax.random.key(0), 3)
    grads = {"a": 10 * jax.random.normal(keys[0], (4, 5)), "b": 50 * jax.random.normal(keys[1], (7,)),
             "c": {"kernel": 3 * jax.random.normal(keys[2], (3, 3, 2))}}
    clipped = _clip(clip_by_norm(2.0), grads)
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(clipped)):
        assert np.linalg.norm(g) > 2.0
        np.testing.assert_allclose(np.linalg.norm(c), 2.0, rtol=1e-6)
        np.testing.assert_allclose(c, g * 2.0 / np.linalg.norm(g), rtol=1e-5)


def test_clip_by_norm_leaves_small_leaves_untouched():
    grads = {"small": jnp.array([0.3, -0.4]), "zero": jnp.zeros(3), "edge": jnp.array([0.6, 0.8])}
    clipped = _clip(clip_by_norm(1.0), grads)
    for name in grads:
        np.testing.assert_array_equal(clipped[name], grads[name])


def test_clip_by_norm_differs_from_clip_by_global_norm_on_two_leaves():
    # Leaf norms 5 and 0.5: per leaf, only the first is clipped; globally (norm sqrt(25.25))
    # both shrink by the same factor.
    grads = {"big": jnp.array([3.0, 4.0]), "small": jnp.array([0.3, 0.4])}
    per_leaf = _clip(clip_by_norm(1.0), grads)
    np.testing.assert_allclose(per_leaf["big"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(per_leaf["small"], grads["small"])
    global_ = _clip(optax.clip_by_global_norm(1.0), grads)
    factor = 1.0 / np.sqrt(25.25)
    np.testing.assert_allclose(global_["big"], np.array([3.0, 4.0]) * factor, rtol=1e-6)
    np.testing.assert_allclose(global_["small"], np.array([0.3, 0.4]) * factor, rtol=1e-6)


def test_clip_by_norm_chains_before_an_optimizer():
    params = {"w": jnp.zeros(2)}
    opt = optax.chain(clip_by_norm(1.0), optax.sgd(0.5))
    updates, _ = opt.update({"w": jnp.array([30.0, 40.0])}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.3, -0.4], rtol=1e-6)
