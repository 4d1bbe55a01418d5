"""Optimizers that optax lacks, written the way optax writes its own.

Every entry returns an :class:`optax.GradientTransformation` whose ``update(updates, state, params)``
returns the step to add with :func:`optax.apply_updates`, so it chains after clipping, takes a
schedule for ``learning_rate`` and fits inside :func:`optax.inject_hyperparams` like any optax alias.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class FtrlState(NamedTuple):
    """State for the FTRL-Proximal optimizer."""

    count: jax.Array  # shape=(), dtype=jnp.int32; the step a learning-rate schedule is read at.
    z: optax.Updates  # per-coordinate sum of g - sigma * w
    n: optax.Updates  # per-coordinate sum of g^2


def ftrl(
    learning_rate: optax.ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 1.0,
    l1: jax.typing.ArrayLike = 0.0,
    l2: jax.typing.ArrayLike = 0.0,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformation:
    r"""FTRL-Proximal (Follow The Regularized Leader) with per-coordinate learning rates.

    For each coordinate, with gradient :math:`g` at the current weight :math:`w` and
    :math:`\alpha` the learning rate:

    .. math::

        \sigma &= (\sqrt{n + g^2} - \sqrt{n}) / \alpha \\
        z &\leftarrow z + g - \sigma w \\
        n &\leftarrow n + g^2 \\
        w &\leftarrow \begin{cases}
            0 & \text{if } |z| \le \lambda_1 \\
            -\left(\frac{\beta + \sqrt{n}}{\alpha} + \lambda_2\right)^{-1}
                (z - \operatorname{sign}(z)\,\lambda_1) & \text{otherwise.}
        \end{cases}

    The :math:`\lambda_1` term sets weights to exactly zero, which is the point of FTRL for sparse
    models. The new weight is a function of :math:`(z, n)` alone, as in the paper and in
    TensorFlow/Keras: the initial parameters enter only through the first :math:`\sigma w` term, and
    a coordinate whose gradients have all been zero sits at 0. With a schedule, the step's
    :math:`\alpha_t` is used in both :math:`\sigma` and the closed form (as TensorFlow does).

    Args:
        learning_rate: :math:`\alpha`, fixed or a schedule of the step count.
        beta: :math:`\beta`, added to :math:`\sqrt{n}`; smooths the first steps of a coordinate.
        l1: :math:`\lambda_1 \ge 0`, the L1 regularization strength.
        l2: :math:`\lambda_2 \ge 0`, the L2 regularization strength.
        initial_accumulator_value: starting value of :math:`n`, ``>= 0``.

    Returns:
        The corresponding :class:`optax.GradientTransformation`; its ``update`` needs ``params``.

    References:
        McMahan et al., `Ad Click Prediction: a View from the Trenches
        <https://research.google/pubs/pub41159/>`_, KDD 2013 (Algorithm 1).
    """

    def init_fn(params):
        return FtrlState(
            count=jnp.zeros([], jnp.int32),
            z=optax.tree.zeros_like(params),
            n=optax.tree.full_like(params, initial_accumulator_value),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "ftrl needs the current parameters: call update(grads, state, params)."
            )
        alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def accumulate_z(z, g, n_old, n_new, w):
            # McMahan et al. 2013, Alg. 1: sigma = (sqrt(n + g^2) - sqrt(n)) / alpha.
            sigma = (jnp.sqrt(n_new) - jnp.sqrt(n_old)) / alpha
            return (z + g - sigma * w).astype(z.dtype)

        def solve(z, n, w):
            # Alg. 1 closed form; |z| <= l1 is where the L1 term pins the weight at exactly 0.
            inactive = jnp.abs(z) <= l1
            denominator = (beta + jnp.sqrt(n)) / alpha + l2
            # The guard keeps 0/0 out of the unused branch when beta = l2 = n = 0.
            denominator = jnp.where(inactive, 1.0, denominator)
            w_new = jnp.where(inactive, 0.0, -(z - jnp.sign(z) * l1) / denominator)
            return w_new.astype(w.dtype)

        n = jax.tree.map(lambda n, g: (n + jnp.square(g)).astype(n.dtype), state.n, updates)
        z = jax.tree.map(accumulate_z, state.z, updates, state.n, n, params)
        new_params = jax.tree.map(solve, z, n, params)
        updates = optax.tree.sub(new_params, params)
        return updates, FtrlState(count=optax.safe_increment(state.count), z=z, n=n)

    return optax.GradientTransformation(init_fn, update_fn)
