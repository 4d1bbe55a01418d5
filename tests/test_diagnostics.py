"""Per-layer diagnostics against hand computations on tiny models, and what turning them on must not change."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.data import load_splits
from runner.training.build import build_parts
from runner.training.diagnostics import (capacity, empty_buffer, fan_in, layer_names, lowest_nonfinite,
                                         make_layer_stats, record, summarize, to_records)
from runner.training.train import create_train_state, make_train_epoch, make_train_step, make_train_step_with_trace
from tests.conftest import compose_config

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("diagnostics_module")

BATCH, N, KEY = 16, 96, jax.random.PRNGKey(3)  # 6 steps per epoch
# Plain SGD at lr 10 on an ELU net: finite for 4 steps, then the loss and every gradient are NaN.
DIVERGING = ("optimizer=sgd", "optimizer.learning_rate=10", "normalization=none", "regularizer=[]", "model.depth=4")
# The MLPs by hand below: no normalization, dropout or penalty.
PLAIN = ("normalization=none", "regularizer=[]")


@functools.cache
def _setup(*overrides):
    """(parts, state, x, y) of a small net on random 8x8 inputs: built once per config for the module's tests,
    which only read them (a state is changed by `replace`, into a new one)."""
    cfg = compose_config(f"trainer.batch_size={BATCH}", "model.depth=2", "model.width=8", *overrides)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, N).astype(np.int32))
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=N // BATCH)
    state = create_train_state(jax.random.PRNGKey(0), parts, x[:BATCH])
    return parts, state, x, y


@functools.cache
def _program(overrides, every, checked=False):
    """The compiled epoch of `_setup(*overrides)`'s parts, compiled once for the module's tests (a fresh closure
    would compile again)."""
    return jax.jit(make_train_epoch(_setup(*overrides)[0], BATCH, every, checked))


def _epoch(overrides, state, every, key=KEY, checked=False):
    _, _, x, y = _setup(*overrides)
    state, metrics = _program(overrides, every, checked)(state, x, y, key)
    return state, jax.device_get(metrics)


def _records(overrides, state, every, epoch=1, key=KEY):
    _, metrics = _epoch(overrides, state, every, key)
    return to_records(epoch, metrics["diagnostics"], layer_names(state.params))


def _batches(x, key=KEY):
    """Each step's batch indices in an epoch, as the compiled epoch draws them."""
    return np.asarray(jax.random.permutation(key, x.shape[0]))[: (x.shape[0] // BATCH) * BATCH].reshape(-1, BATCH)


@functools.cache
def _states(overrides, steps):
    """The state before each of the epoch's first `steps` steps, stepping one at a time from `_setup`'s state."""
    parts, state, x, y = _setup(*overrides)
    step, states = jax.jit(make_train_step(parts)), [state]
    for indices in _batches(x)[: steps - 1]:
        states.append(step(states[-1], x[indices], y[indices])[0])
    return states


def _layer(record, name):
    return next(layer for layer in record["layers"] if layer["name"] == name)


def _hand_forward(params, x, activation):
    """Pre-activations and activations of an MLP without normalization or dropout, by hand in NumPy."""
    params = jax.device_get(params)
    h, pre, act = np.asarray(x).reshape(x.shape[0], -1), {}, {}
    for name in layer_names(params):
        pre[name] = h @ params[name]["kernel"] + params[name]["bias"]
        h = act[name] = activation(pre[name]) if name != "head" else None
    return pre, act


def test_grad_norm_is_the_l2_norm_of_the_kernel_gradient_of_that_step():
    # Batch norm and dropout on: the diagnostics must see the step's own batch statistics and dropout mask.
    _, state, x, y = _setup()
    records = _records((), state, every=4)
    states = _states((), steps=5)

    @jax.jit
    def kernel_grads(s, xb, yb):
        dropout_rng = jax.random.split(jax.random.fold_in(s.rng, s.step), 3)[2]

        def loss(params):
            logits, _ = s.apply_fn({"params": params, "batch_stats": s.batch_stats}, xb, train=True,
                                   rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        return jax.grad(loss)(s.params)

    assert [logged["step"] for logged in records] == [0, 4]
    for logged in records:
        indices = _batches(x)[logged["step"]]
        grads = jax.device_get(kernel_grads(states[logged["step"]], x[indices], y[indices]))
        for name in layer_names(state.params):
            expected = float(np.linalg.norm(grads[name]["kernel"]))
            assert _layer(logged, name)["grad_norm"] == pytest.approx(expected, rel=1e-4), (logged["step"], name)


def test_update_ratio_is_the_change_of_the_kernel_over_its_norm_before_the_step():
    _, state, *_ = _setup()
    records = _records((), state, every=4)
    states = _states((), steps=6)
    for logged in records:  # steps 0 and 4
        before, after = states[logged["step"]], states[logged["step"] + 1]
        for name in layer_names(state.params):
            w0, w1 = np.asarray(before.params[name]["kernel"]), np.asarray(after.params[name]["kernel"])
            layer = _layer(logged, name)
            assert layer["weight_norm"] == pytest.approx(float(np.linalg.norm(w0)), rel=1e-5)
            assert layer["update_ratio"] == pytest.approx(float(np.linalg.norm(w1 - w0) / np.linalg.norm(w0)),
                                                          rel=1e-3)


TANH = (*PLAIN, "activation=tanh", "initializer=normal")


def test_activation_statistics_are_those_of_a_hand_forward_pass_and_tanh_saturates_beyond_0_9():
    _, state, x, _ = _setup(*TANH)
    [record, *_] = _records(TANH, state, every=4)
    pre, act = _hand_forward(state.params, x[_batches(x)[0]], np.tanh)
    for name in layer_names(state.params):
        layer = _layer(record, name)
        assert layer["preact_mean"] == pytest.approx(float(pre[name].mean()), rel=1e-4, abs=1e-6)
        assert layer["preact_std"] == pytest.approx(float(pre[name].std()), rel=1e-4)
        if name == "head":  # logits: no activation follows
            assert [layer[k] for k in ("act_mean", "act_std", "saturated_fraction", "dead_fraction")] == [None] * 4
            continue
        assert layer["act_mean"] == pytest.approx(float(act[name].mean()), rel=1e-4, abs=1e-6)
        assert layer["act_std"] == pytest.approx(float(act[name].std()), rel=1e-4)
        assert layer["saturated_fraction"] == pytest.approx(float(np.mean(np.abs(act[name]) > 0.9)))
    assert _layer(record, "dense_0")["saturated_fraction"] > 0.1  # N(0, 1) weights on 64 inputs saturate tanh


def test_sigmoid_outputs_below_0_05_or_above_0_95_count_as_saturated():
    sigmoid = (*PLAIN, "activation=sigmoid", "initializer=normal")
    _, state, x, _ = _setup(*sigmoid)
    [record, *_] = _records(sigmoid, state, every=4)
    _, act = _hand_forward(state.params, x[_batches(x)[0]], lambda z: 1 / (1 + np.exp(-z)))
    for name in ("dense_0", "dense_1"):
        expected = float(np.mean((act[name] < 0.05) | (act[name] > 0.95)))
        assert 0 < expected and _layer(record, name)["saturated_fraction"] == pytest.approx(expected)
        assert _layer(record, name)["dead_fraction"] == 0.0  # a sigmoid is never <= 0


RELU = (*PLAIN, "activation=relu")


def test_saturation_is_null_for_an_activation_without_two_asymptotes():
    _, state, *_ = _setup(*RELU)
    [record, *_] = _records(RELU, state, every=4)
    assert all(layer["saturated_fraction"] is None for layer in record["layers"])


def test_a_unit_is_dead_when_its_activation_is_at_most_0_for_the_whole_batch():
    _, state, x, _ = _setup(*RELU)
    params = jax.tree_util.tree_map(lambda p: p, state.params)
    params["dense_1"]["bias"] = jnp.full_like(params["dense_1"]["bias"], -1e4)  # every unit of dense_1 forced dead
    params["dense_0"]["bias"] = params["dense_0"]["bias"].at[:3].set(-1e4)  # 3 of dense_0's 8 units dead
    state = state.replace(params=params)
    [record, *_] = _records(RELU, state, every=4)
    _, act = _hand_forward(params, x[_batches(x)[0]], lambda z: np.maximum(z, 0))
    assert _layer(record, "dense_1")["dead_fraction"] == 1.0
    expected = float(np.mean(np.all(act["dense_0"] <= 0, axis=0)))
    assert _layer(record, "dense_0")["dead_fraction"] == pytest.approx(expected) and expected >= 3 / 8


def test_diagnosed_steps_are_exactly_the_multiples_of_n_across_epochs():
    _, state, x, y = _setup()
    train_epoch = _program((), 4)
    steps = []
    for epoch in range(1, 4):  # 6 steps per epoch: the multiples of 4 fall at different places in each
        state, metrics = train_epoch(state, x, y, jax.random.fold_in(KEY, epoch))
        steps += [r["step"] for r in to_records(epoch, jax.device_get(metrics["diagnostics"]),
                                                layer_names(state.params))]
    assert steps == [0, 4, 8, 12, 16]


def test_diagnostics_do_not_change_training():
    # Every 4th of 6 steps: the epoch holds diagnosed steps (0, 4) and steps that are not, in one program.
    _, state, *_ = _setup()
    off_state, off = _epoch((), state, every=0)
    on_state, on = _epoch((), state, every=4)
    assert len(to_records(1, on["diagnostics"], layer_names(state.params))) == 2
    assert (on["loss"], on["accuracy"]) == (off["loss"], off["accuracy"])
    for a, b in zip(jax.tree_util.tree_leaves(on_state), jax.tree_util.tree_leaves(off_state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checked_epoch_names_the_first_nonfinite_step_and_lowest_layer_and_keeps_the_last_finite_state():
    parts, state, x, y = _setup(*DIVERGING)
    with_trace = jax.jit(make_train_step_with_trace(parts))
    names, s = layer_names(state.params), state
    for step, indices in enumerate(_batches(x)):  # by hand: step until the loss or a kernel gradient is not finite
        new, m, trace = with_trace(s, x[indices], y[indices])
        finite = [bool(jnp.all(jnp.isfinite(trace.grads[n]["kernel"]))) for n in names]
        if not (np.isfinite(float(m["loss"])) and all(finite)):
            break
        s = new
    else:
        pytest.fail("the configuration meant to diverge stayed finite")
    assert step > 0  # a step before it was finite, so "the last finite state" is not the initial one
    kept, metrics = _epoch(DIVERGING, state, every=0, checked=True)
    assert int(metrics["first_nonfinite_step"]) == step
    assert int(metrics["nonfinite_layer"]) == (finite.index(False) if not all(finite) else -1)
    assert int(kept.step) == step
    for a, b in zip(jax.tree_util.tree_leaves(kept.params), jax.tree_util.tree_leaves(s.params)):
        np.testing.assert_array_equal(a, b)


def test_an_unchecked_epoch_flags_nonfinite_params_for_a_replay():
    _, metrics = _epoch(DIVERGING, _setup(*DIVERGING)[1], every=0)
    assert metrics["first_nonfinite_step"] >= 0 or not metrics["params_finite"]
    _, healthy = _epoch((), _setup()[1], every=0)
    assert healthy["first_nonfinite_step"] == -1 and healthy["params_finite"]


def test_lowest_nonfinite_is_the_first_layer_from_the_input_whose_gradient_is_not_finite():
    assert int(lowest_nonfinite(jnp.array([True, False, True, False]))) == 1
    assert int(lowest_nonfinite(jnp.array([True, True]))) == -1


def _param_tree(*overrides):
    """The model's params for this config, as shapes: its init traced, not compiled."""
    cfg = compose_config(f"trainer.batch_size={BATCH}", "model.width=8", *overrides)
    model = build_parts(cfg, num_classes=10, steps_per_epoch=1).model
    x = jax.ShapeDtypeStruct((BATCH, 8, 8, 1), jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": KEY, "dropout": KEY}, x, train=False), x)["params"]


def test_layers_are_ordered_from_the_input_to_the_head():
    assert layer_names(_param_tree("model.depth=11")) == [f"dense_{i}" for i in range(11)] + ["head"]
    assert layer_names(_param_tree("model=cnn", "model.channels=[4,4]", "model.depth=1")) == \
        ["conv_0", "conv_1", "dense_2", "head"]


@pytest.mark.parametrize("steps_per_epoch,every", [(6, 4), (40, 20), (45, 100), (7, 7), (10, 3)])
def test_the_buffer_holds_the_most_multiples_of_n_any_epoch_can_contain(steps_per_epoch, every):
    most = max(sum(1 for s in range(start, start + steps_per_epoch) if s % every == 0)
               for start in range(0, 2 * every * steps_per_epoch, steps_per_epoch))
    assert capacity(steps_per_epoch, every) == most


def _hand_kernel_grads(params, x, y, activation, derivative):
    """Each layer's kernel gradient of the mean cross-entropy, backpropagated by hand in NumPy (float64), for an
    MLP without normalization, dropout or penalty."""
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    names = layer_names(params)
    inputs, outputs, h = {}, {}, np.asarray(x, np.float64).reshape(len(x), -1)
    for name in names:
        inputs[name] = h
        z = h @ params[name]["kernel"] + params[name]["bias"]
        h = outputs[name] = activation(z) if name != "head" else z
    probs = np.exp(h - h.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    dz = (probs - np.eye(h.shape[1])[np.asarray(y)]) / len(x)  # d mean-CE / d logits
    grads = {}
    for name in reversed(names):
        grads[name] = inputs[name].T @ dz
        dz = (dz @ params[name]["kernel"].T) * derivative(inputs[name])  # through the activation below
    return grads


def test_grad_norm_per_input_is_the_kernel_gradient_norm_over_root_fan_in_and_the_ratio_is_first_over_head():
    tanh = (*PLAIN, "activation=tanh")
    _, state, x, y = _setup(*tanh)
    [record, *_] = _records(tanh, state, every=4)
    indices = _batches(x)[0]
    grads = _hand_kernel_grads(state.params, x[indices], y[indices], np.tanh, lambda a: 1 - a**2)
    fan_in = {"dense_0": 64, "dense_1": 8, "head": 8}  # 8x8x1 inputs, width 8
    per_input = {name: np.linalg.norm(g) / np.sqrt(fan_in[name]) for name, g in grads.items()}
    for name in fan_in:
        assert _layer(record, name)["grad_norm"] == pytest.approx(np.linalg.norm(grads[name]), rel=1e-4)
        assert _layer(record, name)["grad_norm_per_input"] == pytest.approx(per_input[name], rel=1e-4)
    expected = per_input["dense_0"] / per_input["head"]
    assert summarize([record])["grad_norm_ratio"] == pytest.approx(expected, rel=1e-4)


def test_grad_norm_ratio_is_the_first_diagnosed_steps_and_its_median_over_steps():
    def record(low, top):
        return {"layers": [{"name": "dense_0", "grad_norm_per_input": low, "grad_norm": 99.0},
                           {"name": "dense_1", "grad_norm_per_input": 1.0, "grad_norm": 99.0},
                           {"name": "head", "grad_norm_per_input": top, "grad_norm": 1.0}]}

    summary = summarize([record(1.0, 10.0), record(3.0, 1.0), record(2.0, 1.0), record(None, 1.0)])
    assert summary["grad_norm_ratio"] == pytest.approx(0.1)  # the first diagnosed step
    assert summary["grad_norm_ratio_median"] == pytest.approx(2.0)  # steps with a non-finite norm left out
    assert summarize([record(1.0, 0.0)])["grad_norm_ratio"] is None
    # A diagnostics.jsonl written before grad_norm_per_input existed has no ratio (not the old one).
    assert summarize([{"layers": [{"name": "dense_0", "grad_norm": 1.0}, {"name": "head", "grad_norm": 2.0}]}]) \
        == {"grad_norm_ratio": None, "grad_norm_ratio_median": None}
    assert summarize([]) == {"grad_norm_ratio": None, "grad_norm_ratio_median": None}


def test_fan_in_is_what_each_output_unit_sums_over():
    assert fan_in(np.zeros((784, 100))) == 784
    assert fan_in(np.zeros((3, 3, 16, 32))) == 3 * 3 * 16  # a 2-D convolution: window x in-channels
    assert fan_in(np.zeros((5, 4, 8))) == 5 * 4  # a 1-D convolution


def _write_learnable_images(path, side, n=600, classes=10, seed=0):
    """An .npz of side x side images in [0, 1]: a fixed random pattern per class plus noise, so labels are
    learnable from the pixels (the Keras convention runner/data/npz.py reads)."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 1, (classes, side, side))

    def split(count):
        labels = rng.integers(0, classes, count)
        return np.clip(patterns[labels] + rng.normal(0, 0.5, (count, side, side)), 0, 1).astype(np.float32), labels

    (x_train, y_train), (x_test, y_test) = split(n), split(n // 4)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _first_step_ratio(*overrides):
    """summary.json's grad_norm_ratio for this config when its first step (step 0) is diagnosed, on a batch of
    its dataset's first 32 training examples, loaded and scaled as a run loads them."""
    cfg = compose_config("trainer.batch_size=32", *overrides)
    splits = load_splits(cfg.dataset, seed=0)
    x, y = jnp.asarray(splits.x_train[:32]), jnp.asarray(splits.y_train[:32])
    parts = build_parts(cfg, num_classes=splits.num_classes, steps_per_epoch=1)
    # The run's init; for a deep net op by op: compiled, a 20-layer net's init costs ~1.3 s for each preset and
    # input width, while its ops run eagerly compile once for all (the same values, to an ulp of the truncated
    # normal's).
    with jax.disable_jit(cfg.model.depth >= 10):
        state = create_train_state(jax.random.PRNGKey(0), parts, x)
    names = layer_names(state.params)
    step, layer_stats = make_train_step_with_trace(parts), make_layer_stats(parts.model.activation, names)
    values = jax.jit(lambda s, x, y: layer_stats(s, step(s, x, y)[2]))(state, x, y)  # what the epoch measures
    buffer = record(empty_buffer(1, len(names)), state.step, values)
    return summarize(to_records(1, jax.device_get(buffer), names))["grad_norm_ratio"]


@pytest.fixture(scope="module")
def images_28x28(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "images_28x28.npz"
    _write_learnable_images(path, 28)
    return f"dataset.path={path}"


@pytest.mark.parametrize("dataset", ["digits", "npz_28x28"])
def test_a_healthy_default_net_reads_a_ratio_near_1_whatever_its_input_width(dataset, tfds_dir, images_28x28):
    # The whole-kernel norm ratio read 1.0 on 8x8 digits and 3.6 here on 28x28 inputs: the first layer's width.
    data = ("dataset=digits",) if dataset == "digits" else ("dataset=npz", images_28x28)
    assert 0.5 <= _first_step_ratio(*data) <= 2


def test_vanishing_gradients_presets_keep_their_order_on_8x8_and_28x28_inputs(tfds_dir, images_28x28):
    for data in [("dataset=digits",), ("dataset=npz", images_28x28)]:
        ratio = {variant: _first_step_ratio("+experiment=vanishing_gradients",
                                            f"experiment/vanishing_gradients={variant}", *data)
                 for variant in ("sigmoid_normal", "sigmoid_glorot", "elu_he")}
        assert 0.5 <= ratio["elu_he"] <= 2, (data, ratio)  # He + ELU: healthy
        assert ratio["sigmoid_normal"] < 0.05, (data, ratio)  # sigmoid with N(0, 1): vanishes
        assert ratio["sigmoid_glorot"] < 1e-6, (data, ratio)  # sigmoid with Glorot: vanishes by orders more
