"""Regularizers: small records of optional hooks that the train step calls in fixed places.

Every factory here returns a :class:`Regularizer`; ``combine`` merges several into one. The step
calls each hook that is not ``None`` in one place: ``penalty`` is added to the training loss,
``perturb`` replaces the params the training forward pass sees, ``augment`` replaces the training
inputs, ``transform`` ends the optimizer chain, and the model applies ``input_dropout`` to its inputs
and a copy of ``hidden_dropout`` after each hidden activation, as ``layer(x, deterministic=not train)``.

Params are Flax param dicts; "connection weights" are the leaves named ``kernel`` (Dense and Conv
weights), never biases, normalization scales or PReLU slopes.
"""

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.scipy import ndimage

from runner.errors import UserError

# Klambauer et al. 2017: the SELU constants (alpha_01, lambda_01) whose fixed point is mean 0, variance 1.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946


class Regularizer(NamedTuple):
    """Optional hooks a regularizer plugs into the train step; a ``None`` hook is skipped."""

    # Added to the training loss.
    penalty: Callable[[optax.Params], jax.Array] | None = None
    # (params, rng) -> the params the training forward pass sees (dropconnect).
    perturb: Callable[[optax.Params, jax.Array], optax.Params] | None = None
    # (batch_x, rng) -> batch_x, for training inputs only, on device.
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    # Appended at the end of the optimizer chain (max-norm).
    transform: optax.GradientTransformation | None = None
    # Applied after each hidden layer's activation; the model copies it per layer.
    hidden_dropout: nn.Module | None = None
    # Applied to the model's inputs.
    input_dropout: nn.Module | None = None


def _is_kernel(path) -> bool:
    """Whether a key path ends at a connection-weight leaf."""
    return bool(path) and getattr(path[-1], "key", None) == "kernel"


def _kernels(params: optax.Params) -> list[jax.Array]:
    """The connection-weight leaves of a param tree."""
    return [x for path, x in jax.tree_util.tree_leaves_with_path(params) if _is_kernel(path)]


def _require(ok: bool, name: str, key: str, value, valid: str) -> None:
    """Raises a UserError naming the factory, the key and what is valid, unless ok."""
    if not ok:
        raise UserError(f"regularizer {name}: {key} must be {valid}; got {value!r}")


def l1(strength: float = 1e-4) -> Regularizer:
    r"""L1 weight penalty :math:`\lambda \sum |w|` over connection weights (Keras convention)."""
    _require(strength >= 0, "l1", "strength", strength, ">= 0")
    return l1_l2(l1=strength, l2=0.0)


def l2(strength: float = 1e-4) -> Regularizer:
    r"""L2 weight penalty :math:`\lambda \sum w^2` over connection weights (Keras convention, no 1/2)."""
    _require(strength >= 0, "l2", "strength", strength, ">= 0")
    return l1_l2(l1=0.0, l2=strength)


def l1_l2(l1: float = 1e-4, l2: float = 1e-4) -> Regularizer:
    r"""Elastic-net penalty :math:`\lambda_1 \sum |w| + \lambda_2 \sum w^2` over connection weights."""
    _require(l1 >= 0, "l1_l2", "l1", l1, ">= 0")
    _require(l2 >= 0, "l1_l2", "l2", l2, ">= 0")

    def penalty(params):
        kernels = _kernels(params)
        return sum(
            (l1 * jnp.sum(jnp.abs(w)) + l2 * jnp.sum(jnp.square(w)) for w in kernels),
            jnp.zeros([], jnp.float32),
        )

    return Regularizer(penalty=penalty)


class AlphaDropout(nn.Module):
    r"""Dropout for SELU networks: keeps the mean and variance of standardized activations.

    A dropped unit is set to :math:`\alpha' = -\lambda\alpha \approx -1.7581`, the SELU's negative
    saturation value, and the result is mapped by :math:`a x + b` with keep probability :math:`q`,

    .. math::

        a = \left(q + \alpha'^2 q (1 - q)\right)^{-1/2}, \qquad b = -a (1 - q) \alpha',

    so inputs of mean 0 and variance 1 leave with mean 0 and variance 1. Called like
    :class:`flax.linen.Dropout`, drawing from the ``"dropout"`` RNG stream.

    Attributes:
        rate: the dropout probability (not the keep rate).
        deterministic: if true, the inputs are returned as is.
        rng_collection: the RNG collection the mask is drawn from.

    References:
        Klambauer et al., `Self-Normalizing Neural Networks <https://arxiv.org/abs/1706.02515>`_,
        2017 (alpha dropout)
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Applies alpha dropout unless deterministic."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        # Every unit dropped: a is infinite; 0 is the target mean (flax Dropout does the same).
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep = 1.0 - self.rate
        alpha_prime = -SELU_LAMBDA * SELU_ALPHA
        a = (keep + alpha_prime**2 * keep * (1.0 - keep)) ** -0.5
        b = -a * (1.0 - keep) * alpha_prime
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        mask = jax.random.bernoulli(rng, p=keep, shape=inputs.shape)
        return (a * jnp.where(mask, inputs, alpha_prime) + b).astype(inputs.dtype)


def dropout(rate: float = 0.2, on_inputs: bool = False) -> Regularizer:
    """Dropout (Srivastava et al. 2014) after each hidden activation, and on the inputs if asked."""
    _require(0 <= rate < 1, "dropout", "rate", rate, "in [0, 1)")
    layer = nn.Dropout(rate)
    return Regularizer(hidden_dropout=layer, input_dropout=layer if on_inputs else None)


def alpha_dropout(rate: float = 0.1, on_inputs: bool = False) -> Regularizer:
    """Alpha dropout (Klambauer et al. 2017) after each hidden activation, and on the inputs if asked."""
    _require(0 <= rate < 1, "alpha_dropout", "rate", rate, "in [0, 1)")
    layer = AlphaDropout(rate)
    return Regularizer(hidden_dropout=layer, input_dropout=layer if on_inputs else None)


def dropconnect(rate: float = 0.5) -> Regularizer:
    r"""DropConnect: each connection weight dropped with probability ``rate`` at training.

    Kept weights are scaled by :math:`1 / (1 - \text{rate})` so the pre-activations keep their
    expectation and evaluation uses the plain weights (the paper instead samples a moment-matched
    Gaussian at inference). Biases and other non-kernel params are untouched.

    References:
        Wan et al., `Regularization of Neural Networks using DropConnect
        <https://proceedings.mlr.press/v28/wan13.html>`_, ICML 2013
    """
    _require(0 <= rate < 1, "dropconnect", "rate", rate, "in [0, 1)")
    keep = 1.0 - rate

    def perturb(params, rng):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        keys = jax.random.split(rng, len(leaves))
        out = []
        for (path, x), key in zip(leaves, keys):
            if _is_kernel(path) and rate > 0.0:
                mask = jax.random.bernoulli(key, p=keep, shape=x.shape)
                x = jnp.where(mask, x / keep, jnp.zeros_like(x))
            out.append(x)
        return jax.tree_util.tree_unflatten(treedef, out)

    return Regularizer(perturb=perturb)


def max_norm_constraint(max_value: float) -> optax.GradientTransformation:
    r"""Projects each unit's incoming weight vector back into the l2 ball of radius ``max_value``.

    Put at the end of an optimizer chain: with :math:`w` the params and :math:`u` the incoming
    update, each kernel column (a Dense kernel's axis 0, a Conv kernel's every axis but the last)
    of :math:`w + u` is rescaled by :math:`c / \max(\|w + u\|_2, c)`, and the returned update is
    the projected value minus :math:`w`, so :func:`optax.apply_updates` lands inside the ball.
    Columns already inside keep the incoming update unchanged; non-kernel params are untouched.

    Args:
        max_value: :math:`c > 0`, the largest norm of a unit's incoming weights.

    Returns:
        A :class:`optax.GradientTransformation`; its ``update`` needs ``params``.

    References:
        Srivastava et al., `Dropout: A Simple Way to Prevent Neural Networks from Overfitting
        <https://jmlr.org/papers/v15/srivastava14a.html>`_, JMLR 2014 (section 5.1)
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "max_norm_constraint needs the current parameters: "
                "call update(updates, state, params)."
            )

        def project(path, u, w):
            if not _is_kernel(path):
                return u
            new = w + u
            norms = jnp.sqrt(jnp.sum(jnp.square(new), axis=tuple(range(new.ndim - 1)), keepdims=True))
            projected = new * (max_value / jnp.maximum(norms, max_value))
            # Inside the ball, pass u itself: (w + u) - w need not round back to u.
            return jnp.where(norms > max_value, projected - w, u).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(project, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def max_norm(max_value: float = 1.0) -> Regularizer:
    """Max-norm constraint (Srivastava et al. 2014) on each unit's incoming weights, after every step."""
    _require(max_value > 0, "max_norm", "max_value", max_value, "> 0")
    return Regularizer(transform=max_norm_constraint(max_value))


def _warp_image(image: jax.Array, offset: jax.Array, angle: jax.Array, flip: jax.Array) -> jax.Array:
    """Flips (H, W, C) if flip, rotates by angle (radians) about the centre, moves by offset (rows, cols)."""
    h, w = image.shape[:2]
    centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Each output pixel reads the input at the inverse transform of its own position.
    dy = rows - centre[0] - offset[0]
    dx = cols - centre[1] - offset[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_rows = cos * dy + sin * dx + centre[0]
    src_cols = -sin * dy + cos * dx + centre[1]
    src_cols = jnp.where(flip, (w - 1) - src_cols, src_cols)

    def sample(channel):
        # "nearest" fills with edge values, which are background whether or not inputs are standardized.
        return ndimage.map_coordinates(channel, [src_rows, src_cols], order=1, mode="nearest")

    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image).astype(image.dtype)


def _warp_signal(signal: jax.Array, offset: jax.Array, factor: jax.Array) -> jax.Array:
    """Moves (L, C) later by offset samples (linear interpolation) and multiplies it by factor."""
    src = jnp.arange(signal.shape[0], dtype=jnp.float32) - offset

    def sample(channel):
        return ndimage.map_coordinates(channel, [src], order=1, mode="nearest")

    return (factor * jax.vmap(sample, in_axes=-1, out_axes=-1)(signal)).astype(signal.dtype)


def augmentation(
    shift: float = 0.1, flip: bool = False, rotate_degrees: float = 10.0, scale: float = 0.1
) -> Regularizer:
    """Random per-example data augmentation of training inputs, on device.

    Images (N, H, W, C): a translation of up to ``shift`` of the height and width, a horizontal flip
    with probability 1/2 if ``flip``, and a rotation of up to ``rotate_degrees``, all drawn uniformly
    and sampled bilinearly. Signals (N, L, C): a translation of up to ``shift * L`` samples and an
    amplitude factor in ``[1 - scale, 1 + scale]``. ``scale`` applies to signals only; ``flip`` and
    ``rotate_degrees`` to images only.
    """
    _require(0 <= shift < 1, "augmentation", "shift", shift, "in [0, 1)")
    _require(0 <= rotate_degrees <= 180, "augmentation", "rotate_degrees", rotate_degrees, "in [0, 180]")
    _require(0 <= scale < 1, "augmentation", "scale", scale, "in [0, 1)")
    max_angle = jnp.deg2rad(rotate_degrees)

    def augment_image(image, rng):
        k_shift, k_angle, k_flip = jax.random.split(rng, 3)
        size = jnp.array(image.shape[:2], jnp.float32)
        offset = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * shift * size
        angle = jax.random.uniform(k_angle, (), minval=-1.0, maxval=1.0) * max_angle
        flipped = jax.random.bernoulli(k_flip) & flip
        return _warp_image(image, offset, angle, flipped)

    def augment_signal(signal, rng):
        k_shift, k_scale = jax.random.split(rng)
        offset = jax.random.uniform(k_shift, (), minval=-1.0, maxval=1.0) * shift * signal.shape[0]
        factor = jax.random.uniform(k_scale, (), minval=1.0 - scale, maxval=1.0 + scale)
        return _warp_signal(signal, offset, factor)

    def augment(x, rng):
        if x.ndim == 4:
            one = augment_image
        elif x.ndim == 3:
            one = augment_signal
        else:
            raise UserError(
                "regularizer augmentation: inputs must be images (N, H, W, C) or signals (N, L, C);"
                f" got shape {x.shape}"
            )
        return jax.vmap(one)(x, jax.random.split(rng, x.shape[0]))

    return Regularizer(augment=augment)


def none() -> Regularizer:
    """No regularization."""
    return Regularizer()


def _single_dropout(modules: list[nn.Module], where: str) -> nn.Module | None:
    """The one dropout module set for a place, raising UserError if several are."""
    if len(modules) > 1:
        # Factory names from class names: Dropout -> dropout, AlphaDropout -> alpha_dropout.
        names = [re.sub(r"(?<!^)(?=[A-Z])", "_", type(m).__name__).lower() for m in modules]
        raise UserError(
            f"regularizer: {' and '.join(names)} both set {where} dropout; pick one"
        )
    return modules[0] if modules else None


def combine(regularizers: Sequence[Regularizer]) -> Regularizer:
    """Merges regularizers: sums penalties, composes perturbs and augments, chains transforms.

    At most one of them may set hidden dropout, and one input dropout; more is a UserError.
    """
    regularizers = list(regularizers)

    def present(field):
        return [getattr(r, field) for r in regularizers if getattr(r, field) is not None]

    def add(penalties):
        return lambda params: sum(p(params) for p in penalties)

    def compose(hooks):
        def composed(value, rng):
            # One key per hook, so no two hooks draw the same randomness.
            for hook, key in zip(hooks, jax.random.split(rng, len(hooks))):
                value = hook(value, key)
            return value

        return composed

    def merge(hooks, build):
        if not hooks:
            return None
        return hooks[0] if len(hooks) == 1 else build(hooks)

    return Regularizer(
        penalty=merge(present("penalty"), add),
        perturb=merge(present("perturb"), compose),
        augment=merge(present("augment"), compose),
        transform=merge(present("transform"), lambda transforms: optax.chain(*transforms)),
        hidden_dropout=_single_dropout(present("hidden_dropout"), "hidden"),
        input_dropout=_single_dropout(present("input_dropout"), "input"),
    )
