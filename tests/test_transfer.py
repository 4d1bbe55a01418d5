"""Reuse: weights written as safetensors read back to the same logits; a PyTorch-layout file grafts to the same
features; grafting checks every shape; transfer stages freeze and scale what they say."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.data.splits import TrainTest, keep_classes
from runner.errors import UserError
from runner.net import weights
from runner.reuse.transfer import graft, read_source, reused_layers, transfer_stages
from runner.training.build import build_parts
from runner.training.stages import Stage, stage_optimizer
from runner.training.train import create_train_state
from tests.conftest import compose_config

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32))


def _state(*overrides, seed=0):
    cfg = compose_config("model.depth=3", "model.width=16", *overrides)
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=1)
    return parts, create_train_state(jax.random.PRNGKey(seed), parts, X)


def _logits(parts, params, batch_stats, **kwargs):
    return parts.model.apply({"params": params, "batch_stats": batch_stats}, X, train=False, **kwargs)


def test_model_safetensors_reads_back_to_identical_logits(tmp_path):
    parts, state = _state()  # batch norm: parameters and running statistics both travel
    weights.save(tmp_path / "model.safetensors", state.params, state.batch_stats)
    flat = weights.load(tmp_path / "model.safetensors")
    assert {"dense_0.kernel", "block_0.norm.scale", "block_0.norm.mean", "head.bias"} <= set(flat)
    params, stats = weights.nested_weights(flat, state.params)
    np.testing.assert_array_equal(_logits(parts, params, stats), _logits(parts, state.params, state.batch_stats))


def _torch_file(path, params, layers):
    """What `torch.save_file(nn.Sequential(Linear, ELU, Linear, ...).state_dict())` holds: [out, in] weights."""
    from safetensors.numpy import save_file

    tensors = {}
    for i, name in enumerate(layers):
        tensors[f"{2 * i}.weight"] = np.ascontiguousarray(np.asarray(params[name]["kernel"]).T)
        tensors[f"{2 * i}.bias"] = np.asarray(params[name]["bias"])
    save_file(tensors, str(path))


@pytest.mark.parametrize("layout", ["torch", "flax"])
def test_a_file_in_another_frameworks_layout_grafts_to_the_same_features(tmp_path, layout):
    parts, trained = _state("normalization=none", "regularizer=[]", seed=1)
    layers = parts.model.hidden_layers
    if layout == "torch":
        _torch_file(tmp_path / "w.safetensors", trained.params, layers)
    else:
        weights.save(tmp_path / "w.safetensors", trained.params, trained.batch_stats)
    source = read_source(OmegaConf.create({"source": str(tmp_path / "w.safetensors"), "layout": layout}))
    assert len(source.layers) == 3  # a runner file's head is no hidden layer; the torch file has none
    _, fresh = _state("normalization=none", "regularizer=[]", seed=2)
    params, stats = graft(fresh.params, fresh.batch_stats, source, layers)
    for name in layers:
        for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(trained.params[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_logits(parts, params, stats, stop=2),  # the features below the last layer
                                  _logits(parts, trained.params, trained.batch_stats, stop=2))
    np.testing.assert_array_equal(params["head"]["kernel"], fresh.params["head"]["kernel"])  # a fresh head


def test_a_torch_convolution_is_transposed_from_oihw():
    weight = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)  # out, in, H, W
    (layer,) = weights.weight_layers({"conv.weight": weight, "conv.bias": np.zeros(2, np.float32)}, "torch")
    assert layer.kernel.shape == (5, 4, 3, 2)
    assert layer.kernel[4, 3, 2, 1] == weight[1, 2, 4, 3]


def test_layers_are_matched_in_natural_name_order():
    tensors = {f"{i}.weight": np.full((2, 2), i, np.float32) for i in (0, 2, 10)}
    assert [w.name for w in weights.weight_layers(tensors, "keras")] == ["0.weight", "2.weight", "10.weight"]


def test_a_shape_that_does_not_fit_is_one_line_naming_both_tensors(tmp_path):
    _, small = _state("model.width=16")
    weights.save(tmp_path / "model.safetensors", small.params, small.batch_stats)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model: {_target_: runner.net.model.Net}\n")
    source = read_source(OmegaConf.create({"source": str(tmp_path), "layout": "flax"}))
    _, wide = _state("model.width=32")
    with pytest.raises(UserError, match=r"dense_0 .* kernel has shape \(64, 16\), this model's dense_0.kernel \(64, 32\)"):
        graft(wide.params, wide.batch_stats, source, ("dense_0",))
    _, no_norm = _state("normalization=none")
    with pytest.raises(UserError, match="block_0.norm.bias is in the source only"):
        graft(no_norm.params, no_norm.batch_stats, source, ("dense_0",))
    with pytest.raises(UserError, match="reuse_layers: 5, but the source has 3 hidden layers"):
        reused_layers(OmegaConf.create({"reuse_layers": 5}), source, ("dense_0", "dense_1", "dense_2"))


def test_transfer_stages_freeze_then_scale_the_reused_layers():
    cfg = OmegaConf.create({"freeze": True, "unfreeze_after": 3, "reused_lr_scale": 0.1})
    frozen, fine_tune = transfer_stages(cfg, 10, ("dense_0",))
    assert frozen == Stage("reused_frozen", 3, frozen=frozenset({"dense_0"}))
    assert fine_tune == Stage("fine_tune", 7, scaled=frozenset({"dense_0"}), scale=0.1)
    with pytest.raises(UserError, match="unfreeze_after"):
        transfer_stages(OmegaConf.create({**cfg, "unfreeze_after": 10}), 10, ("dense_0",))


def test_a_scaled_stage_scales_exactly_the_reused_layers_and_their_blocks_steps():
    parts, state = _state("optimizer=sgd", "optimizer.learning_rate=0.5")
    grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
    plain = stage_optimizer(parts.optimizer, Stage("all", 1))
    scaled = stage_optimizer(parts.optimizer, Stage("tune", 1, scaled=frozenset({"dense_0"}), scale=0.1))
    full, _ = plain.update(grads, plain.init(state.params), state.params)
    part, _ = scaled.update(grads, scaled.init(state.params), state.params)
    for key in full:
        factor = 0.1 if key in ("dense_0", "block_0") else 1.0
        for a, b in zip(jax.tree.leaves(part[key]), jax.tree.leaves(full[key])):
            np.testing.assert_allclose(a, factor * b, rtol=1e-6)


def test_keep_classes_relabels_in_the_order_given():
    data = TrainTest(np.arange(6)[:, None], np.array([0, 1, 2, 3, 2, 1]), np.arange(3)[:, None],
                     np.array([3, 0, 2]), 4)
    kept = keep_classes(data, [2, 0], "toy")
    assert kept.num_classes == 2
    assert kept.x_train[:, 0].tolist() == [0, 2, 4] and kept.y_train.tolist() == [1, 0, 0]
    assert kept.x_test[:, 0].tolist() == [1, 2] and kept.y_test.tolist() == [1, 0]
    with pytest.raises(UserError, match="no class 7"):
        keep_classes(data, [0, 7], "toy")
    with pytest.raises(UserError, match="at least 2 distinct"):
        keep_classes(data, [1, 1], "toy")
