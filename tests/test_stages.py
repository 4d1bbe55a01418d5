"""Stages: a frozen layer's parameters and batch statistics do not move, whatever the chain does."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.errors import UserError
from runner.training.build import build_parts
from runner.training.loop import StageProgram, enter_stage
from runner.training.optim import schedule_count
from runner.training.stages import Stage, entering, first_epoch_of, freeze_lower, single, stage_at, stage_optimizer
from runner.training.train import create_train_state
from tests.conftest import compose_config

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("stages_module")

LAYERS = ("dense_0", "dense_1", "dense_2")


def test_entering_a_stage_names_the_layers_it_unfreezes_from_the_input_up_and_their_scale():
    frozen = Stage("reused_frozen", 5, frozen=frozenset({"dense_10", "dense_2"}))
    tuned = Stage("fine_tune", 15, scaled=frozenset({"dense_10", "dense_2"}), scale=0.1)
    assert entering(frozen, tuned, 6) == ("epoch 6: dense_2, dense_10 unfrozen (their steps scaled by 0.1); "
                                          "a fresh optimizer state, the learning-rate schedule goes on")
    lower, upper = freeze_lower(10, LAYERS, frozen_layers=1, frozen_epochs=3)
    assert entering(lower, upper, 4).startswith("epoch 4: dense_0 unfrozen; ")  # no scale: steps as trained
    assert entering(Stage("a", 1), Stage("b", 1, frozen=frozenset({"dense_0"})), 2).startswith("epoch 2: dense_0 frozen")
    assert entering(Stage("a", 1), Stage("b", 1), 2) is None  # no layer changes: nothing to say


def test_single_is_one_stage_of_every_epoch():
    assert single(7, LAYERS) == [Stage("train", 7)]


def test_freeze_lower_freezes_the_lowest_layers_then_trains_all():
    frozen, unfrozen = freeze_lower(10, LAYERS, frozen_layers=2, frozen_epochs=3)
    assert (frozen.epochs, frozen.frozen) == (3, frozenset({"dense_0", "dense_1"}))
    assert (unfrozen.epochs, unfrozen.frozen) == (7, frozenset())


@pytest.mark.parametrize("kwargs", [{"frozen_layers": 4}, {"frozen_epochs": 10}])
def test_freeze_lower_refuses_what_the_run_cannot_do(kwargs):
    with pytest.raises(UserError):
        freeze_lower(10, LAYERS, **{"frozen_layers": 1, "frozen_epochs": 3, **kwargs})


def test_stage_at_maps_global_epochs_to_stages():
    stages = [Stage("a", 2), Stage("b", 3)]
    assert [stage_at(stages, e) for e in range(1, 6)] == [0, 0, 1, 1, 1]
    assert [first_epoch_of(stages, i) for i in range(2)] == [1, 3]


def whole_epoch(program, state, x, y, key):
    """One epoch of the stage's compiled programs as a single chunk."""
    carry, order = program.begin(state, x, key)
    carry, _ = program.train_steps(carry, x, y, order, jnp.int32(0), jnp.int32(program.steps))
    return carry.state


# Weight decay (adamw), max-norm projection, dropout and batch norm all try to move or perturb every layer.
STRAINED = ("optimizer=adamw", "regularizer=[dropout,max_norm]", "regularizer.max_norm.max_value=0.1")


@functools.cache
def _two_frozen_epochs():
    """(parts, state, trained): the default net (3 hidden layers, batch norm) under STRAINED, and its state after two
    epochs of a stage that freezes dense_0 and dense_1, compiled once for the module's tests."""
    cfg = compose_config("trainer.batch_size=16", *STRAINED)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(96, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 96).astype(np.int32))
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=96 // 16)
    stage = Stage("frozen", 2, frozenset({"dense_0", "dense_1"}))
    state = create_train_state(jax.random.PRNGKey(0), parts, x[:16], tx=stage_optimizer(parts.optimizer, stage))
    program = StageProgram(parts, stage, 16, 0, state, x, y, jax.random.PRNGKey(1))
    trained = state
    for epoch in range(2):
        trained = whole_epoch(program, trained, x, y, jax.random.PRNGKey(epoch))
    return parts, state, trained


def test_frozen_layers_parameters_and_batch_statistics_stay_bit_identical():
    # The default chain (adam, dropout, batch norm) is STRAINED without weight decay and max-norm: one case holds both.
    _, state, trained = _two_frozen_epochs()
    for layer in ("dense_0", "dense_1"):
        for a, b in zip(jax.tree.leaves(state.params[layer]), jax.tree.leaves(trained.params[layer])):
            np.testing.assert_array_equal(a, b)
    for block in ("block_0", "block_1"):
        for a, b in zip(jax.tree.leaves(state.batch_stats[block]), jax.tree.leaves(trained.batch_stats[block])):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(state.params["dense_2"]["kernel"], trained.params["dense_2"]["kernel"])
    assert not np.array_equal(state.batch_stats["block_2"]["norm"]["mean"],
                              trained.batch_stats["block_2"]["norm"]["mean"])


def test_entering_a_stage_starts_a_fresh_optimizer_state_for_its_chain():
    parts, _, trained = _two_frozen_epochs()  # adamw: Adam's moments and count, and a schedule's count
    entered = enter_stage(trained, parts, Stage("next", 1, frozenset({"dense_0"})))
    adam = [s for s in jax.tree.leaves(entered.opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert int(adam[0].count) == 0  # the moments restart (and with them Adam's bias correction) ...
    for a, b in zip(jax.tree.leaves(adam[0].mu), jax.tree.leaves(jax.tree.map(jnp.zeros_like, trained.params))):
        np.testing.assert_array_equal(a, b)
    assert int(schedule_count(entered.opt_state)) == int(trained.step) == 12  # ... the schedule goes on
