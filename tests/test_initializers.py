"""The initializers a user gets from conf/initializer/*.yaml match their definitions.

Each is instantiated from its config file, as the runner does, and sampled on a large layer: with
10^6 weights the sample variance is within ~0.3% of the true one, far inside the tolerances here.
The layer is not square, so a fan_in rule and a fan_out rule give different variances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runner.config.compose import CONF_DIR
from runner.training.build import build_model, build_regularizer, instantiate
from tests.conftest import compose_config

FAN_IN, FAN_OUT = 800, 1250  # a Dense kernel is (fan_in, fan_out)
FAN = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "fan_avg": (FAN_IN + FAN_OUT) / 2}
RTOL = 0.03


def sample(name: str, *overrides: str) -> np.ndarray:
    """A (FAN_IN, FAN_OUT) kernel drawn by the initializer that `initializer=<name>` builds."""
    cfg = compose_config(f"initializer={name}", *overrides)
    init = instantiate(cfg.initializer, "initializer")
    return np.asarray(init(jax.random.PRNGKey(0), (FAN_IN, FAN_OUT), jnp.float32), np.float64)


def test_normal_has_mean_0_and_std_1():
    w = sample("normal")
    assert abs(w.mean()) < 0.005
    assert w.std() == pytest.approx(1.0, rel=RTOL)


def test_he_normal_variance_is_2_over_fan_in():
    w = sample("he_normal")
    assert abs(w.mean()) < 0.005 * np.sqrt(2 / FAN_IN)
    assert w.var() == pytest.approx(2 / FAN_IN, rel=RTOL)


def test_he_uniform_is_bounded_by_sqrt_6_over_fan_in_with_variance_2_over_fan_in():
    w = sample("he_uniform")
    bound = np.sqrt(6 / FAN_IN)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert w.var() == pytest.approx(2 / FAN_IN, rel=RTOL)


def test_glorot_uniform_is_bounded_by_sqrt_6_over_fan_in_plus_fan_out_and_reaches_it():
    w = sample("glorot_uniform")
    bound = np.sqrt(6 / (FAN_IN + FAN_OUT))
    assert np.abs(w).max() <= bound
    assert w.max() > 0.99 * bound and w.min() < -0.99 * bound
    assert w.var() == pytest.approx(2 / (FAN_IN + FAN_OUT), rel=RTOL)


def test_glorot_normal_variance_is_2_over_fan_in_plus_fan_out():
    w = sample("glorot_normal")
    assert w.var() == pytest.approx(2 / (FAN_IN + FAN_OUT), rel=RTOL)


def test_lecun_normal_variance_is_1_over_fan_in():
    w = sample("lecun_normal")
    assert w.var() == pytest.approx(1 / FAN_IN, rel=RTOL)


@pytest.mark.parametrize("distribution", ["normal", "truncated_normal", "uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_variance_scaling_variance_is_scale_over_fan(mode, distribution):
    scale = compose_config("initializer=variance_scaling").initializer.scale
    w = sample("variance_scaling", f"initializer.mode={mode}", f"initializer.distribution={distribution}")
    variance = scale / FAN[mode]
    assert w.var() == pytest.approx(variance, rel=RTOL)
    if distribution == "uniform":
        assert np.abs(w).max() <= np.sqrt(3 * variance)
    if distribution == "truncated_normal":  # cut at two standard deviations of the untruncated normal
        assert np.abs(w).max() <= 2 * np.sqrt(variance) / 0.87962566103423978


def test_variance_scaling_scale_multiplies_the_variance():
    one = sample("variance_scaling", "initializer.scale=1.0", "initializer.mode=fan_in")
    three = sample("variance_scaling", "initializer.scale=3.0", "initializer.mode=fan_in")
    assert three.var() / one.var() == pytest.approx(3.0, rel=1e-6)  # same key, same draws, rescaled


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "initializer").glob("*.yaml")))
def test_built_model_biases_start_at_zero_and_kernels_follow_the_initializer(name):
    cfg = compose_config(f"initializer={name}", "model.depth=2", "model.width=400", "normalization=none")
    model = build_model(cfg, num_classes=10, regularizer=build_regularizer(cfg))
    params = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                        jnp.zeros((2, 8, 8, 1)), train=False)["params"]
    layers = [params[k] for k in params if "bias" in params[k]]
    assert len(layers) == 3  # dense_0, dense_1, head
    for layer in layers:
        np.testing.assert_array_equal(layer["bias"], 0.0)
    kernel = np.asarray(params["dense_1"]["kernel"], np.float64)  # 400 x 400
    expected = np.asarray(instantiate(cfg.initializer, "initializer")(jax.random.PRNGKey(7), (400, 400)), np.float64).var()
    assert kernel.var() == pytest.approx(expected, rel=0.05)
