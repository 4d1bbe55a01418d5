"""Tests for runner/techniques/regularizers.py: each hook against its definition."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.errors import UserError
from runner.techniques import regularizers as reg
from runner.techniques.activations import PReLU


class ConvNet(nn.Module):
    """Every kind of param leaf: conv and dense kernels, biases, a norm scale, PReLU slopes."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.LayerNorm()(x)
        x = PReLU()(x, train=True)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


@functools.cache
def _params():
    @jax.jit
    def make(key):
        params = ConvNet().init(key, jnp.ones((1, 4, 4, 2)))["params"]
        # Non-trivial values everywhere, so a penalty that touched biases or scales would show.
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])

    return make(jax.random.key(0))


def _kernels(params):
    return [params["Conv_0"]["kernel"], params["Dense_0"]["kernel"]]


def _not_kernels(tree):
    return [tree["Conv_0"]["bias"], tree["Dense_0"]["bias"], tree["LayerNorm_0"]["scale"],
            tree["LayerNorm_0"]["bias"], tree["PReLU_0"]["alpha"]]


def test_l2_penalty_is_strength_times_sum_of_squared_kernels_only():
    params = _params()
    penalty = reg.l2(strength=0.03).penalty
    expected = 0.03 * sum(np.sum(np.square(w)) for w in _kernels(params))
    np.testing.assert_allclose(penalty(params), expected, rtol=1e-6)
    grads = jax.jit(jax.grad(penalty))(params)
    for g, w in zip(_kernels(grads), _kernels(params)):
        np.testing.assert_allclose(g, 2 * 0.03 * w, rtol=1e-6)
    for g in _not_kernels(grads):
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_l1_penalty_is_strength_times_sum_of_absolute_kernels_only():
    params = _params()
    penalty = reg.l1(strength=0.02).penalty
    expected = 0.02 * sum(np.sum(np.abs(w)) for w in _kernels(params))
    np.testing.assert_allclose(penalty(params), expected, rtol=1e-6)
    grads = jax.jit(jax.grad(penalty))(params)
    for g, w in zip(_kernels(grads), _kernels(params)):
        np.testing.assert_allclose(g, 0.02 * np.sign(w), rtol=1e-6)
    for g in _not_kernels(grads):
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_l1_l2_penalty_is_the_sum_of_both_terms():
    params = _params()
    expected = reg.l1(0.01).penalty(params) + reg.l2(0.05).penalty(params)
    np.testing.assert_allclose(reg.l1_l2(l1=0.01, l2=0.05).penalty(params), expected, rtol=1e-6)


def test_penalty_of_the_full_variables_dict_counts_the_same_kernels():
    params = _params()
    np.testing.assert_allclose(
        reg.l2(0.1).penalty({"params": params}), reg.l2(0.1).penalty(params), rtol=1e-7
    )


def _samples(layer, x, n):
    keys = jax.random.split(jax.random.key(0), n)
    return jax.jit(jax.vmap(lambda k: layer.apply({}, x, deterministic=False, rngs={"dropout": k})))(keys)


def test_dropout_keeps_the_expected_activation_and_is_identity_at_evaluation():
    r = reg.dropout(rate=0.3)
    x = jnp.linspace(0.5, 2.0, 50)
    samples = np.asarray(_samples(r.hidden_dropout, x, 8000))
    assert abs(np.mean(samples == 0.0) - 0.3) < 0.01
    np.testing.assert_allclose(samples.mean(axis=0), x, rtol=0.04)
    np.testing.assert_array_equal(r.hidden_dropout.apply({}, x, deterministic=True), x)
    assert r.input_dropout is None
    assert reg.dropout(rate=0.3, on_inputs=True).input_dropout is not None


def test_alpha_dropout_keeps_zero_mean_and_unit_variance_of_standard_normal_inputs():
    r = reg.alpha_dropout(rate=0.2)
    x = jax.random.normal(jax.random.key(5), (200_000,))
    y = np.asarray(r.hidden_dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(6)}))
    assert abs(y.mean()) < 0.01
    assert abs(y.var() - 1.0) < 0.02
    # Dropped units all land on a * alpha' + b, a fraction `rate` of them.
    alpha_prime = -reg.SELU_LAMBDA * reg.SELU_ALPHA
    a = (0.8 + alpha_prime**2 * 0.8 * 0.2) ** -0.5
    dropped_value = a * alpha_prime - a * 0.2 * alpha_prime
    assert abs(np.mean(np.isclose(y, dropped_value, atol=1e-6)) - 0.2) < 0.005
    np.testing.assert_array_equal(r.hidden_dropout.apply({}, x, deterministic=True), x)


@pytest.mark.parametrize("factory", [reg.dropout, reg.alpha_dropout])
def test_dropout_copies_in_a_model_draw_independent_masks(factory):
    # How the model uses hidden_dropout: one copy per layer, called with deterministic=not train.
    template = factory(rate=0.5).hidden_dropout

    class TwoLayers(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            first = template.copy()(x, deterministic=not train)
            return first, template.copy()(x, deterministic=not train)

    x = jnp.ones((1, 64))
    model = TwoLayers()
    variables = model.init(jax.random.key(0), x, train=False)
    first, second = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.array_equal(first, second)
    evaluated = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(evaluated[0], x)


def test_dropconnect_drops_about_rate_of_kernel_entries_and_keeps_biases():
    params = {"Dense_0": {"kernel": jnp.ones((200, 100)), "bias": jnp.ones(100)},
              "LayerNorm_0": {"scale": jnp.ones(100)}}
    perturbed = reg.dropconnect(rate=0.4).perturb(params, jax.random.key(0))
    kernel = np.asarray(perturbed["Dense_0"]["kernel"])
    assert abs(np.mean(kernel == 0.0) - 0.4) < 0.01
    np.testing.assert_allclose(kernel[kernel != 0.0], 1 / 0.6, rtol=1e-6)
    np.testing.assert_array_equal(perturbed["Dense_0"]["bias"], params["Dense_0"]["bias"])
    np.testing.assert_array_equal(perturbed["LayerNorm_0"]["scale"], params["LayerNorm_0"]["scale"])


def test_dropconnect_preserves_the_expected_kernel_and_differs_per_rng():
    params = _params()
    perturb = reg.dropconnect(rate=0.5).perturb
    keys = jax.random.split(jax.random.key(0), 2000)
    draws = jax.jit(jax.vmap(perturb, in_axes=(None, 0)))(params, keys)
    for draw, w in zip(_kernels(draws), _kernels(params)):
        np.testing.assert_allclose(draw.mean(axis=0), w, atol=0.15)
        assert not np.array_equal(draw[0], draw[1])


def _column_norms(kernel):
    return np.sqrt(np.sum(np.square(kernel), axis=tuple(range(kernel.ndim - 1))))


def test_max_norm_bound_holds_after_every_step_of_sgd_with_large_gradients():
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    x = jax.random.normal(jax.random.key(0), (32, 5))
    y = jax.random.normal(jax.random.key(1), (32, 3))
    params = model.init(jax.random.key(2), x)["params"]
    loss = lambda p: 100.0 * jnp.mean((model.apply({"params": p}, x) - y) ** 2)
    constrained = optax.chain(optax.sgd(1.0), reg.max_norm(max_value=0.5).transform)
    state = constrained.init(params)
    plain = optax.sgd(1.0)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = constrained.update(grads, state, params)
        unconstrained, _ = plain.update(grads, plain.init(params), params)
        return optax.apply_updates(params, updates), state, optax.apply_updates(params, unconstrained)

    projected = 0
    for _ in range(10):
        params, state, unconstrained = step(params, state)
        for layer in ("layers_0", "layers_2"):
            kernel = np.asarray(params[layer]["kernel"])
            assert np.all(_column_norms(kernel) <= 0.5 * (1 + 1e-6))
            # Projection, not shrinkage: a column sgd took out of the ball is put back on its
            # surface, in the direction sgd moved it to.
            free = np.asarray(unconstrained[layer]["kernel"])
            outside = _column_norms(free) > 0.5
            projected += outside.sum()
            np.testing.assert_allclose(
                kernel[:, outside], free[:, outside] * 0.5 / _column_norms(free)[outside],
                rtol=1e-5, atol=1e-7,
            )
            # Biases follow plain sgd.
            np.testing.assert_array_equal(params[layer]["bias"], unconstrained[layer]["bias"])
    assert projected > 10


def test_max_norm_leaves_updates_of_columns_inside_the_ball_untouched():
    params = {"kernel": jnp.array([[0.1, 3.0], [0.2, 4.0]]), "bias": jnp.array([10.0, 10.0])}
    updates = {"kernel": jnp.array([[0.01, 0.0], [-0.02, 0.0]]), "bias": jnp.array([5.0, 5.0])}
    transform = reg.max_norm_constraint(1.0)
    out, _ = transform.update(updates, transform.init(params), params)
    np.testing.assert_array_equal(out["kernel"][:, 0], updates["kernel"][:, 0])
    np.testing.assert_array_equal(out["bias"], updates["bias"])
    # The second column (norm 5) is projected onto the unit ball.
    np.testing.assert_allclose(optax.apply_updates(params, out)["kernel"][:, 1], [0.6, 0.8], rtol=1e-6)


def test_max_norm_of_a_conv_kernel_is_over_all_axes_but_the_last():
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 4)) * jnp.array([0.01, 1.0, 2.0, 3.0])
    params = {"Conv_0": {"kernel": kernel}}
    transform = reg.max_norm_constraint(1.0)
    updates, _ = transform.update(jax.tree.map(jnp.zeros_like, params), transform.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["Conv_0"]["kernel"])
    norms = _column_norms(np.asarray(kernel))
    np.testing.assert_allclose(_column_norms(new), np.minimum(norms, 1.0), rtol=1e-5)
    np.testing.assert_allclose(new, kernel * np.minimum(1.0, 1.0 / norms), rtol=1e-5, atol=1e-7)


def test_max_norm_without_params_raises_value_error():
    transform = reg.max_norm_constraint(1.0)
    with pytest.raises(ValueError, match="needs the current parameters"):
        transform.update({"kernel": jnp.ones((2, 2))}, transform.init(None))


def test_augmentation_of_images_preserves_shape_changes_input_and_is_deterministic_per_rng():
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    augment = jax.jit(reg.augmentation(shift=0.2, flip=True, rotate_degrees=15.0).augment)
    a = augment(x, jax.random.key(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.allclose(a, x)
    np.testing.assert_array_equal(a, augment(x, jax.random.key(1)))
    assert not np.allclose(a, augment(x, jax.random.key(2)))
    # Per example: two copies of one image are transformed differently.
    twins = augment(jnp.stack([x[0], x[0]]), jax.random.key(3))
    assert not np.allclose(twins[0], twins[1])


def test_warp_by_an_integer_offset_moves_a_one_hot_pixel_by_that_offset():
    image = jnp.zeros((9, 9, 1)).at[4, 3, 0].set(1.0)
    moved = reg._warp_image(image, jnp.array([2.0, -1.0]), jnp.array(0.0), jnp.array(False))
    np.testing.assert_array_equal(moved, jnp.zeros((9, 9, 1)).at[6, 2, 0].set(1.0))


def test_warp_flips_horizontally_and_rotates_a_quarter_turn_like_numpy():
    image = jax.random.uniform(jax.random.key(0), (5, 5, 2))
    flipped = reg._warp_image(image, jnp.zeros(2), jnp.array(0.0), jnp.array(True))
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    turned = reg._warp_image(image, jnp.zeros(2), jnp.array(np.pi / 2), jnp.array(False))
    np.testing.assert_allclose(turned, np.rot90(image, k=1, axes=(0, 1)), atol=1e-5)


def test_augmentation_without_rotation_moves_mass_by_at_most_shift():
    # A one-hot pixel, shifted bilinearly, keeps its mass and its centroid moves by the offset,
    # which is at most shift * size in each direction.
    image = jnp.zeros((16, 16, 1)).at[8, 8, 0].set(1.0)
    batch = jnp.broadcast_to(image, (64, 16, 16, 1))
    augment = jax.jit(reg.augmentation(shift=0.25, rotate_degrees=0.0).augment)
    out = np.asarray(augment(batch, jax.random.key(0)))
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    mass = out.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(mass, 1.0, rtol=1e-5)
    dy = (out[..., 0] * rows).sum(axis=(1, 2)) - 8
    dx = (out[..., 0] * cols).sum(axis=(1, 2)) - 8
    assert np.all(np.abs(dy) <= 4 + 1e-4) and np.all(np.abs(dx) <= 4 + 1e-4)
    assert np.abs(dy).max() > 2 and np.abs(dx).max() > 2  # the range is used, not a no-op


def test_warp_of_a_signal_by_an_integer_offset_delays_it_and_scales_it():
    signal = jax.random.normal(jax.random.key(0), (20, 2))
    out = reg._warp_signal(signal, jnp.array(3.0), jnp.array(1.5))
    np.testing.assert_allclose(out[3:], 1.5 * signal[:-3], rtol=1e-6)


def test_augmentation_of_signals_scales_amplitude_within_range_per_example():
    x = jax.random.normal(jax.random.key(0), (32, 40, 1))
    augment = jax.jit(reg.augmentation(shift=0.0, scale=0.2).augment)
    out = augment(x, jax.random.key(1))
    assert out.shape == x.shape
    factors = np.asarray(out / x)[..., 0]
    np.testing.assert_allclose(factors, factors[:, :1].repeat(40, axis=1), rtol=1e-5)
    assert factors.min() >= 0.8 and factors.max() <= 1.2 and factors[:, 0].std() > 0.05
    shifted = reg.augmentation(shift=0.1, scale=0.0).augment(x, jax.random.key(1))
    assert shifted.shape == x.shape and not np.allclose(shifted, x)


def test_augmentation_of_flat_inputs_is_a_user_error():
    with pytest.raises(UserError, match="images"):
        reg.augmentation().augment(jnp.ones((4, 64)), jax.random.key(0))


def test_combine_sums_penalties_and_chains_the_other_hooks():
    params = _params()
    combined = reg.combine([reg.l1(0.01), reg.l2(0.05), reg.max_norm(1.0), reg.dropout(0.1), reg.none()])
    np.testing.assert_allclose(
        combined.penalty(params), reg.l1_l2(l1=0.01, l2=0.05).penalty(params), rtol=1e-6
    )
    assert isinstance(combined.hidden_dropout, nn.Dropout) and combined.hidden_dropout.rate == 0.1
    assert combined.perturb is None and combined.augment is None
    updates, _ = combined.transform.update(params, combined.transform.init(params), params)
    for kernel in _kernels(optax.apply_updates(params, updates)):
        assert np.all(_column_norms(np.asarray(kernel)) <= 1.0 + 1e-6)


def test_combine_composes_perturbs_with_independent_rngs():
    params = {"kernel": jnp.ones((100, 100))}
    combined = reg.combine([reg.dropconnect(0.5), reg.dropconnect(0.5)])
    kernel = np.asarray(combined.perturb(params, jax.random.key(0))["kernel"])
    # Two independent draws keep 1/4 of the weights, each scaled twice.
    assert abs(np.mean(kernel != 0.0) - 0.25) < 0.02
    np.testing.assert_allclose(kernel[kernel != 0.0], 4.0, rtol=1e-6)


def test_combine_raises_when_two_regularizers_set_hidden_dropout():
    with pytest.raises(UserError, match="dropout and alpha_dropout both set hidden dropout; pick one"):
        reg.combine([reg.dropout(0.2), reg.alpha_dropout(0.1)])


def test_none_and_empty_combine_have_no_hooks():
    assert reg.none() == reg.Regularizer()
    assert reg.combine([]) == reg.Regularizer()


@pytest.mark.parametrize(
    "make",
    [lambda: reg.dropout(rate=1.0), lambda: reg.l2(strength=-1.0), lambda: reg.max_norm(max_value=0.0),
     lambda: reg.dropconnect(rate=-0.1), lambda: reg.augmentation(shift=1.5)],
)
def test_out_of_range_settings_are_user_errors(make):
    with pytest.raises(UserError, match="must be"):
        make()
