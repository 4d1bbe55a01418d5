"""Gradient clipping that optax lacks; optax has ``clip`` (by value) and ``clip_by_global_norm``."""

import jax
import jax.numpy as jnp
import optax


def clip_by_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformation:
    r"""Clips each update tensor to its own l2 norm, independently of the others (Keras ``clipnorm``).

    Each leaf :math:`g` of the updates becomes

    .. math::

        g \cdot \frac{c}{\max(\|g\|_2, c)}

    so a leaf already within the norm :math:`c` passes unchanged and a larger one keeps its
    direction with norm :math:`c`. Unlike :func:`optax.clip_by_global_norm`, a large gradient in one
    layer does not shrink the others.

    Args:
        max_norm: :math:`c > 0`, the largest l2 norm each leaf may have.

    Returns:
        A :class:`optax.GradientTransformation` object.

    References:
        Pascanu et al., `On the difficulty of training Recurrent Neural Networks
        <https://arxiv.org/abs/1211.5063>`_, 2012
    """

    def clip_leaf(g, params):
        del params
        norm = optax.tree.norm(g)
        # c / max(norm, c) is exactly 1 within the ball, so small leaves come back bit-for-bit.
        return (g * (max_norm / jnp.maximum(norm, max_norm))).astype(g.dtype)

    return optax.stateless_with_tree_map(clip_leaf)
