"""Pretraining: one CD update is the textbook formula; autoencoders' reconstruction loss falls layer by layer; the
generated labels are the rotations they name; scarce labels keep every input; bad settings are one line; a
pretrained source grafts into a state that trains."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.data.splits import TrainTest, split_and_scale
from runner.errors import UserError
from runner.reuse.pretraining.methods import (RBM, Context, cd_update, fold_input_map, generated_task, pretrain,
                                              rbm_update, train_layer)
from runner.reuse.transfer import graft, reused_layers, transfer_stages
from runner.training.build import build_parts
from runner.training.stages import stage_optimizer
from runner.training.train import TrainState, create_train_state, make_train_epoch
from tests.conftest import compose_config

TINY = ("model.depth=2", "model.width=16", "trainer.batch_size=16")


class _Quiet:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _numpy_cd(w, b, c, v0, uniforms, lr):
    """CD-k as Hinton (2010) writes it, in float64: sampled hidden states, probabilities for the reconstructions."""
    ph0 = _sigmoid(v0 @ w + c)
    ph, v = ph0, v0
    reconstructions = []
    for u in uniforms:
        h0 = (u < ph).astype(np.float64)          # a sample of h given the current v
        v = _sigmoid(h0 @ w.T + b)                # p(v | h): the reconstruction, as probabilities
        ph = _sigmoid(v @ w + c)                  # p(h | reconstruction)
        reconstructions.append(v)
    n = len(v0)
    dw = lr * (v0.T @ ph0 - v.T @ ph) / n
    db = lr * (v0 - v).sum(0) / n
    dc = lr * (ph0 - ph).sum(0) / n
    return w + dw, b + db, c + dc, ((v0 - reconstructions[0]) ** 2).mean()


@pytest.mark.parametrize("k", [1, 2])
def test_one_cd_k_update_equals_a_numpy_transcription_with_the_same_draws(k):
    rng = np.random.default_rng(0)
    w, b, c = rng.normal(0, 0.5, (4, 3)), rng.normal(0, 0.5, 4), rng.normal(0, 0.5, 3)
    v0 = rng.uniform(0, 1, (5, 4))
    uniforms = jax.random.uniform(jax.random.PRNGKey(7), (k, 5, 3))  # the same draws reach both versions
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    updated, error = cd_update(RBM(f32(w), f32(b), f32(c)), f32(v0), uniforms, 0.1)
    expected = _numpy_cd(w, b, c, v0, np.asarray(uniforms, np.float64), 0.1)
    for got, want in zip((*updated, error), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(updated.weights), w)  # the update moved something


def test_the_rbm_input_map_folded_into_a_layer_computes_the_same_preactivations():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5))
    lo, scale = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    kernel, bias = rng.normal(size=(5, 3)), rng.normal(size=3)
    folded_kernel, folded_bias = fold_input_map(kernel, bias, lo, scale)
    np.testing.assert_allclose(x @ folded_kernel + folded_bias, ((x - lo) / scale) @ kernel + bias, rtol=1e-12)


def test_generated_labels_are_the_rotations_they_name():
    image = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    x, y, views = generated_task(np.concatenate([image, image + 10]))
    assert views == 4 and list(y) == [0, 0, 1, 1, 2, 2, 3, 3]
    by_hand = {0: [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
               1: [[3, 6, 9], [2, 5, 8], [1, 4, 7]],   # 90 degrees counter-clockwise
               2: [[9, 8, 7], [6, 5, 4], [3, 2, 1]],   # 180
               3: [[7, 4, 1], [8, 5, 2], [9, 6, 3]]}   # 270 counter-clockwise
    for label, rows in by_hand.items():
        np.testing.assert_array_equal(x[2 * label, :, :, 0], rows)
        np.testing.assert_array_equal(x[2 * label + 1, :, :, 0], np.asarray(rows) + 10)


def test_non_square_images_get_two_turns_and_signals_a_time_reversal():
    wide = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    x, y, views = generated_task(wide)
    assert views == 2 and list(y) == [0, 1]
    np.testing.assert_array_equal(x[1, :, :, 0], [[5, 4, 3], [2, 1, 0]])
    signal = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    x, y, views = generated_task(signal)
    assert views == 2 and list(y) == [0, 1]
    np.testing.assert_array_equal(x[1, :, 0], [3, 2, 1, 0])


def test_labeled_examples_keeps_n_labels_and_every_other_training_input_unlabeled():
    rng = np.random.default_rng(0)
    data = TrainTest(rng.normal(3, 2, (40, 2, 2, 1)), np.arange(40) % 4, rng.normal(size=(8, 2, 2, 1)),
                     np.arange(8) % 4, 4)
    every = split_and_scale(data, name="t", val_fraction=0.25, seed=3)
    scarce = split_and_scale(data, name="t", val_fraction=0.25, seed=3, labeled_examples=7)
    assert len(scarce.x_train) == len(scarce.y_train) == 7 and len(scarce.x_unlabeled) == 23
    np.testing.assert_array_equal(scarce.y_train, every.y_train[:7])
    np.testing.assert_array_equal(scarce.all_train_inputs, every.x_train)  # the same inputs, the same scaling
    np.testing.assert_array_equal(scarce.x_val, every.x_val)
    assert every.x_unlabeled is None and every.all_train_inputs is every.x_train
    with pytest.raises(UserError, match=r"^dataset.labeled_examples=31 is out of range; valid: 1..30"):
        split_and_scale(data, name="t", val_fraction=0.25, seed=3, labeled_examples=31)


def _losses(run_dir):
    by_layer = {}
    for line in (run_dir / "pretraining.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_layer.setdefault(record["layer"], []).append(record["loss"])
    return by_layer


def test_autoencoder_reconstruction_loss_falls_in_every_layer(tfds_dir, tmp_path):
    cfg = compose_config(*TINY, "pretraining=autoencoder", "pretraining.epochs=3", "dataset.labeled_examples=50")
    source = pretrain(cfg, tmp_path, _Quiet())
    losses = _losses(tmp_path)
    assert list(losses) == ["dense_0", "dense_1"] and all(len(v) == 3 for v in losses.values())
    for layer, values in losses.items():
        assert values[-1] < values[0], (layer, values)
    assert [layer.layer["kernel"].shape for layer in source.layers] == [(64, 16), (16, 16)]
    assert source.layers[0].block_stats and source.scaling is not None  # batch norm statistics travel


def test_rbm_reconstruction_error_falls_in_every_layer(tfds_dir, tmp_path):
    cfg = compose_config(*TINY, "pretraining=rbm", "pretraining.epochs=3", "activation=sigmoid",
                         "normalization=none")
    source = pretrain(cfg, tmp_path, _Quiet())
    for layer, values in _losses(tmp_path).items():
        assert values[-1] < values[0], (layer, values)
    assert not source.layers[0].block_params and not source.layers[0].block_stats


@pytest.mark.parametrize("overrides, message", [
    (("pretraining=rbm",),
     "pretraining=rbm: needs activation=sigmoid (an RBM's hidden units are sigmoid), got elu"),
    (("pretraining=rbm", "activation=sigmoid"),
     "pretraining=rbm: needs normalization=none (an RBM layer is weights then a sigmoid), got a BatchNorm layer"),
    (("pretraining=autoencoder", "model=cnn"),
     "pretraining=autoencoder: greedy layer-wise pretraining trains dense layers, and model.channels=[32, 64]"),
    (("pretraining=supervised",), "pretraining=supervised: needs the run's task to be some classes"),
    (("pretraining=supervised", "dataset.classes=[3,4]", "pretraining.classes=[1,2,3]"),
     "pretraining.classes: [1, 2, 3] shares class 3 with dataset.classes [3, 4]"),
    (("pretraining=supervised", "dataset.classes=[3,4]", "pretraining.classes=[1,12]"),
     "pretraining.classes: digits has no class 12"),
    (("pretraining=supervised", "dataset.classes=[3,4]", "pretraining.classes=[0,1]", "trainer.batch_size=400"),
     "trainer.batch_size: 400 is larger than pretraining=supervised's training set"),
    (("pretraining=auxiliary", "regularizer=[augmentation]"),
     "pretraining=auxiliary: regularizer augmentation flips, shifts and rotates the inputs"),
    (("pretraining=autoencoder", "transfer.source=/some/run"),
     "pretraining=autoencoder: reuses its own pretrained layers, and transfer.source names another net's"),
    (("pretraining=autoencoder", "dataset.labeled_examples=5000"), "dataset.labeled_examples=5000 is out of range"),
])
def test_a_setting_pretraining_cannot_use_is_one_line_naming_it(overrides, message, tfds_dir, tmp_path):
    with pytest.raises(UserError) as refused:
        pretrain(compose_config(*TINY, *overrides), tmp_path, _Quiet())
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())  # refused before pretraining.jsonl is started


def test_none_pretrains_nothing(tmp_path):
    assert pretrain(compose_config(*TINY), tmp_path, _Quiet()) is None
    assert not any(tmp_path.iterdir())


def test_a_supervised_source_grafts_into_a_state_that_trains_with_its_layers_frozen(tfds_dir, tmp_path):
    task_b = ("dataset.classes=[5,6,7]", "pretraining.classes=[0,1,2,3]", "transfer.reuse_layers=1")
    cfg = compose_config(*TINY, "pretraining=supervised", "pretraining.epochs=1", *task_b)
    source = pretrain(cfg, tmp_path, _Quiet())
    assert source.layers[0].layer["kernel"].shape == (64, 16) and len(source.layers) == 2
    parts = build_parts(cfg, num_classes=3, steps_per_epoch=4)
    reused = reused_layers(cfg.transfer, source, parts.model.hidden_layers)
    (stage,) = transfer_stages(cfg.transfer, 1, reused)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(np.arange(64) % 3, jnp.int32)
    state = create_train_state(jax.random.PRNGKey(0), parts, x[:16], tx=stage_optimizer(parts.optimizer, stage))
    params, batch_stats = graft(state.params, state.batch_stats, source, reused)
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))
    trained, metrics = jax.jit(make_train_epoch(parts, 16, frozen=stage.frozen))(state, x, y, jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["loss"]))
    np.testing.assert_array_equal(trained.params["dense_0"]["kernel"], source.layers[0].layer["kernel"])
    np.testing.assert_array_equal(trained.batch_stats["block_0"]["norm"]["mean"],
                                  source.layers[0].block_stats["norm.mean"])
    assert not np.array_equal(trained.params["dense_1"]["kernel"], state.params["dense_1"]["kernel"])
    assert not np.array_equal(trained.params["head"]["kernel"], state.params["head"]["kernel"])


def test_an_rbm_layer_trained_in_the_loop_is_cd_update_applied_by_hand_over_the_same_batches(tmp_path):
    """train_layer runs rbm_update in the run's loop: epoch e's batches are permutation(fold_in(key, e)), step i's
    uniforms come from fold_in(that epoch key, i), each step is exactly `cd_update`, and each epoch's
    pretraining.jsonl loss is the mean of its steps' reconstruction errors."""
    n, batch, visible, hidden, k, lr, epochs = 40, 8, 12, 6, 2, 0.1, 2
    rng = np.random.default_rng(0)
    v = rng.random((n, visible)).astype(np.float32)
    start = RBM(jnp.asarray(rng.normal(0, 0.1, (visible, hidden)), jnp.float32), jnp.zeros(visible), jnp.zeros(hidden))
    key = jax.random.PRNGKey(7)
    context = Context(compose_config(*TINY, f"trainer.batch_size={batch}"), tmp_path, _Quiet(), "rbm")
    state = TrainState.create(apply_fn=None, params=start, tx=optax.identity(), batch_stats={})
    trained = train_layer(context, "dense_0", rbm_update(k, lr), state, lr, v, key, epochs, "reconstruction error")

    machine, means, by_hand = start, [], jax.jit(cd_update)  # one program, not op by op
    for epoch in range(1, epochs + 1):
        epoch_key = jax.random.fold_in(key, epoch)
        order = np.asarray(jax.random.permutation(epoch_key, n)).reshape(n // batch, batch)
        errors = []
        for i, indices in enumerate(order):
            uniforms = jax.random.uniform(jax.random.fold_in(epoch_key, i), (k, batch, hidden))
            machine, error = by_hand(machine, jnp.asarray(v[indices]), uniforms, lr)
            errors.append(float(error))
        means.append(np.mean(errors))
    for got, want in zip(trained.params, machine, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert int(trained.step) == epochs * n // batch
    logged = [json.loads(line) for line in (tmp_path / "pretraining.jsonl").read_text().splitlines()]
    assert [(r["layer"], r["epoch"]) for r in logged] == [("dense_0", 1), ("dense_0", 2)]
    np.testing.assert_allclose([r["loss"] for r in logged], means, rtol=1e-5)
    assert "accuracy" not in logged[0]  # a greedy layer does not classify
