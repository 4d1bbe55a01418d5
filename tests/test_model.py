"""The MLP and CNN: layer layout, per-layer copies of activation/normalization, train vs eval behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runner.training.build import build_model, build_regularizer
from tests.conftest import compose_config


def _init(*overrides, shape=(4, 8, 8, 1)):
    cfg = compose_config(*overrides)
    model = build_model(cfg, num_classes=10, regularizer=build_regularizer(cfg))
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    return model, model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x), x


def test_mlp_has_depth_hidden_layers_of_width_and_a_head():
    model, variables, x = _init("model.depth=20", "model.width=100")
    params = variables["params"]
    assert [f"dense_{i}" for i in range(20)] == sorted((k for k in params if k.startswith("dense_")),
                                                      key=lambda k: int(k.split("_")[1]))
    assert params["dense_0"]["kernel"].shape == (64, 100)
    assert params["dense_19"]["kernel"].shape == (100, 100)
    assert params["head"]["kernel"].shape == (100, 10)
    assert model.apply(variables, x).shape == (4, 10)


def test_biases_start_at_zero():
    _, variables, _ = _init()
    assert all(float(jnp.abs(p["bias"]).max()) == 0.0 for k, p in variables["params"].items() if "bias" in p)


def test_each_layer_gets_its_own_prelu_slope():
    _, variables, _ = _init("activation=prelu", "model.depth=3")
    slopes = [variables["params"][f"block_{i}"]["act"]["alpha"] for i in range(3)]
    assert len(slopes) == 3 and all(s.shape == (100,) for s in slopes)


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_at_evaluation():
    model, variables, x = _init("regularizer=[]", "model.depth=1")
    x = x * 5 + 3
    train_out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, x, train=False)
    assert not np.allclose(train_out, eval_out)
    # Running stats start at mean 0, var 1: at evaluation the layer is the affine identity (up to epsilon).
    stats = variables["batch_stats"]["block_0"]["norm"]
    np.testing.assert_allclose(stats["mean"], 0.0)
    moved = updates["batch_stats"]["block_0"]["norm"]["mean"]
    assert float(jnp.abs(moved).max()) > 0  # and training moves them


@pytest.mark.parametrize("position", ["pre", "post"])
def test_normalization_position_orders_norm_and_activation(position):
    model, variables, x = _init("regularizer=[]", "model.depth=1", "activation=relu",
                                "normalization=layer_norm", f"normalization.position={position}")
    _, inter = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    out = inter["intermediates"]["block_0"]["__call__"][0]
    if position == "pre":
        assert float(out.min()) >= 0.0  # relu last
    else:
        assert float(out.min()) < 0.0  # layer norm last: zero-mean rows


def test_cnn_works_on_images_and_1d_signals():
    model, variables, x = _init("model=cnn")
    assert model.apply(variables, x).shape == (4, 10)
    assert variables["params"]["conv_0"]["kernel"].shape == (3, 3, 1, 32)
    model, variables, x = _init("model=cnn", shape=(4, 40, 1))
    assert variables["params"]["conv_0"]["kernel"].shape == (3, 1, 32)
    assert model.apply(variables, x).shape == (4, 10)


def test_the_head_starts_from_model_head_init_and_the_hidden_layers_keep_theirs():
    _, plain, _ = _init("regularizer=[]", "normalization=none")
    _, glorot, _ = _init("regularizer=[]", "normalization=none", "+initializer@model.head_init=glorot_uniform")
    head = np.asarray(glorot["params"]["head"]["kernel"])  # (100, 10)
    limit = np.sqrt(6 / (100 + 10))  # Glorot & Bengio 2010: U(-r, r), r = sqrt(6 / (fan_in + fan_out))
    assert np.abs(head).max() <= limit and np.abs(head).max() > 0.9 * limit
    np.testing.assert_allclose(head.var(), limit**2 / 3, rtol=0.2)  # a uniform's variance, r^2 / 3
    for name in ("dense_0", "dense_1", "dense_2"):  # He normal, as without head_init: the same draws
        np.testing.assert_array_equal(plain["params"][name]["kernel"], glorot["params"][name]["kernel"])


def test_without_head_init_the_head_starts_as_the_hidden_layers_do():
    _, plain, _ = _init("model=cnn")
    _, named, _ = _init("model=cnn", "+initializer@model.head_init=he_normal")  # the hidden layers' (config.yaml)
    np.testing.assert_array_equal(plain["params"]["head"]["kernel"], named["params"]["head"]["kernel"])


def test_head_init_takes_its_initializers_parameters():
    _, variables, _ = _init("+initializer@model.head_init=normal", "model.head_init.stddev=1.0e-3")
    assert float(np.std(variables["params"]["head"]["kernel"])) == pytest.approx(1e-3, rel=0.2)
