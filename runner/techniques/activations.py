"""Activations with parameters or noise, which jax.nn cannot express as plain functions.

Every entry is a Flax linen Module called as ``layer(x, train)``; the plain activations (relu, elu,
selu, gelu, leaky_relu, swish, ...) are used straight from :mod:`jax.nn`. A stochastic one draws from
the ``"dropout"`` RNG stream the model already feeds its dropout layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class PReLU(nn.Module):
    r"""Parametric ReLU: :math:`f(x) = x` for :math:`x > 0`, else :math:`\alpha x`, :math:`\alpha` learned.

    :class:`flax.linen.PReLU` learns one slope per layer; this one can also learn one per unit (the
    paper's channel-wise form), and takes ``train`` like the other layers here.

    Attributes:
        per_unit: one slope per feature along the last axis if true, else one for the layer.
        alpha_init: the starting slope (0.25 in the paper). Not ``init``, which would hide
            :meth:`flax.linen.Module.init`.

    References:
        He et al., `Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet
        Classification <https://arxiv.org/abs/1502.01852>`_, 2015
    """

    per_unit: bool = True
    alpha_init: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the activation; ``train`` changes nothing."""
        del train
        shape = (x.shape[-1],) if self.per_unit else ()
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), shape, jnp.float32)
        return jnp.where(x > 0, x, alpha.astype(x.dtype) * x)


class RReLU(nn.Module):
    r"""Randomized leaky ReLU: :math:`f(x) = x` for :math:`x > 0`, else :math:`a x`.

    At training :math:`a \sim U[\text{lower}, \text{upper}]`, drawn afresh at each call, one draw per
    unit (feature along the last axis) shared by the whole batch; at evaluation :math:`a` is its mean
    :math:`(\text{lower} + \text{upper}) / 2`. (The paper draws one slope per example and channel, and
    divides by :math:`(l + u) / 2` of the reciprocal slopes at test time; the mean slope here is the
    expectation of the training-time layer, as in PyTorch.)

    Attributes:
        lower: the smallest slope drawn.
        upper: the largest slope drawn.

    References:
        Xu et al., `Empirical Evaluation of Rectified Activations in Convolutional Network
        <https://arxiv.org/abs/1505.00853>`_, 2015
    """

    lower: float = 1.0 / 8.0
    upper: float = 1.0 / 3.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the activation with a random slope if ``train``, the mean slope otherwise."""
        if train:
            slope = jax.random.uniform(
                self.make_rng("dropout"),
                (x.shape[-1],),
                x.dtype,
                minval=self.lower,
                maxval=self.upper,
            )
        else:
            slope = jnp.asarray((self.lower + self.upper) / 2.0, x.dtype)
        return jnp.where(x > 0, x, slope * x)
