"""runner.net.conv computes exactly lax.conv_general_dilated and its gradients; only the program differs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from runner.net.conv import _dimension_numbers, conv_general_dilated


@pytest.mark.parametrize("x_shape,w_shape,padding", [
    ((4, 8, 8, 3), (3, 3, 3, 5), "SAME"),
    ((4, 40, 2), (3, 2, 6), "SAME"),
    ((2, 7, 9, 1), (3, 3, 1, 4), "VALID"),
    ((2, 6, 6, 2), (3, 3, 2, 3), ((2, 0), (1, 1))),
])
def test_values_and_both_gradients_equal_lax(x_shape, w_shape, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    w = jax.random.normal(jax.random.PRNGKey(1), w_shape)
    strides = (1,) * (len(x_shape) - 2)
    dn = _dimension_numbers(len(x_shape))

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, dimension_numbers=dn)))

    np.testing.assert_allclose(loss(conv_general_dilated)(x, w), loss(lax.conv_general_dilated)(x, w), rtol=1e-6)
    for ours, reference in zip(jax.grad(loss(conv_general_dilated), (0, 1))(x, w),
                               jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_strided_convolutions_fall_back_to_lax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    plain = nn.Conv(3, (3, 3), strides=2)
    ours = nn.Conv(3, (3, 3), strides=2, conv_general_dilated=conv_general_dilated)
    variables = plain.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(ours.apply(variables, x), plain.apply(variables, x))
