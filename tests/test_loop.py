"""The host loop: an epoch run in chunks is the epoch run whole, bit for bit; a signal mid-epoch drops only
that epoch's steps, and continuing from there is the uninterrupted run; any update (not only the train step) runs
in it on the run's batches with its per-step losses, and a handler may judge a non-finite loss and stop the loop."""

from __future__ import annotations

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.techniques.regularizers import Regularizer
from runner.techniques.schedules import Schedule
from runner.training.build import build_parts
from runner.training.loop import Loop, Pacer
from runner.training.stages import Stage, stage_optimizer
from runner.training.train import Parts, TrainState, Update, create_train_state, make_train_epoch
from tests.conftest import compose_config

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("loop_module")

N, BATCH = 112, 16  # 7 steps an epoch
# A step without randomness or batch statistics; the chunked-epoch test's second case has both (and diagnostics).
PLAIN = ("regularizer=[]", "normalization=none")


class Recorder:
    """A handler that keeps each epoch's record (without its time) and state."""

    def __init__(self):
        self.records, self.states = [], []

    def on_epoch_end(self, end):
        self.records.append({k: v for k, v in end.record.items() if k != "epoch_time_s"})
        self.states.append(end.state)


class FixedPacer(Pacer):
    """Chunks of the given sizes in turn (the last one repeated)."""

    def __init__(self, *sizes):
        super().__init__()
        self.sizes, self.calls = sizes, 0

    def size(self, remaining):
        size = self.sizes[min(self.calls, len(self.sizes) - 1)]
        self.calls += 1
        return max(1, min(remaining, size))


@functools.cache
def _built(*overrides):
    """(parts, x, y) of a small net on random 8x8 inputs, built once per config for the module's tests."""
    cfg = compose_config(f"trainer.batch_size={BATCH}", "model.depth=2", "model.width=16", *overrides)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, N).astype(np.int32))
    return build_parts(cfg, num_classes=10, steps_per_epoch=N // BATCH), x, y


def _loop(pacer, *overrides, epochs=3, interrupt=None, on_steps=None, diagnostics_every=0):
    parts, x, y = _built(*overrides)
    stages = [Stage("train", epochs)]
    state = create_train_state(jax.random.PRNGKey(0), parts, x[:BATCH], tx=stage_optimizer(parts.optimizer, stages[0]))
    recorder = Recorder()
    loop = Loop(parts, stages, BATCH, diagnostics_every, x, y, jax.random.PRNGKey(1), [recorder], None,
                on_steps=on_steps, interrupt=interrupt, pacer=pacer)
    return loop, state, recorder


@functools.cache
def _whole(*overrides, diagnostics_every=0):
    """The loop of `_loop` run with each epoch one chunk, and its recorder: the uninterrupted run the module's
    tests compare with, run once."""
    loop, state, recorder = _loop(FixedPacer(10**6), *overrides, diagnostics_every=diagnostics_every)
    loop.run(state, 0, 1)
    return loop, state, recorder


def _assert_same_trees(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("overrides, diagnostics_every", [
    (PLAIN, 0), (("regularizer=[dropout,l2]",), 2)])
def test_chunked_epochs_are_bit_identical_to_whole_epochs(overrides, diagnostics_every):
    whole_loop, state, whole = _whole(*overrides, diagnostics_every=diagnostics_every)
    chunked_loop, state, chunked = _loop(FixedPacer(1, 3, 2), *overrides, diagnostics_every=diagnostics_every)
    chunked_loop.run(state, 0, 1)
    assert chunked.records == whole.records
    for a, b in zip(chunked.states, whole.states, strict=True):
        _assert_same_trees(a.params, b.params)
        _assert_same_trees(a.opt_state, b.opt_state)
    # ... and to the epoch compiled as one program (what the benchmark times).
    epoch = jax.jit(make_train_epoch(whole_loop.parts, BATCH, diagnostics_every))
    one, _ = epoch(state, whole_loop.x, whole_loop.y, jax.random.fold_in(whole_loop.data_key, 1))
    _assert_same_trees(one.params, whole.states[0].params)


def test_a_signal_mid_epoch_drops_that_epochs_steps_and_continuing_equals_the_uninterrupted_run():
    _, _, reference = _whole(*PLAIN)  # chunked alike, bit for bit: test_chunked_epochs_are_bit_identical_to_whole_epochs

    interrupt, signals = threading.Event(), []

    def signal_in_epoch_2(epoch, done, steps, metrics):
        if epoch == 2 and done == 2 and not signals:
            signals.append(epoch)
            interrupt.set()

    loop, state, recorder = _loop(FixedPacer(2), *PLAIN, interrupt=interrupt, on_steps=signal_in_epoch_2)
    outcome = loop.run(state, 0, 1)
    assert (outcome.status, outcome.epoch, outcome.abandoned) == ("interrupted", 1, True)
    assert len(recorder.records) == 1
    _assert_same_trees(outcome.state.params, reference.states[0].params)  # the end of epoch 1, not mid-2
    assert int(outcome.state.step) == N // BATCH

    interrupt.clear()
    loop.run(outcome.state, outcome.stage, outcome.epoch + 1)
    assert recorder.records == reference.records
    _assert_same_trees(recorder.states[-1].params, reference.states[-1].params)


def test_a_signal_in_the_last_chunk_finishes_the_epoch():
    interrupt = threading.Event()
    loop, state, recorder = _loop(FixedPacer(7), *PLAIN, interrupt=interrupt,
                                  on_steps=lambda epoch, done, steps, metrics: interrupt.set())
    outcome = loop.run(state, 0, 1)
    # Nothing of epoch 1 is dropped; ending the run after it is the Interrupt handler's job (runner/training/handlers.py).
    assert (outcome.epoch, outcome.abandoned, len(recorder.records)) == (3, False, 3)


def test_the_pacer_sizes_chunks_to_its_time_budget():
    pacer = Pacer(seconds=0.5, first=16)
    assert pacer.size(1000) == 16 and pacer.size(5) == 5
    pacer.observe(16, 0.16)  # 10 ms a step
    assert pacer.size(1000) == 50 and pacer.size(20) == 20
    pacer.observe(50, 5.0)  # 100 ms a step: one step is the least
    assert pacer.size(1000) == 5
    pacer.observe(1, 10.0)
    assert pacer.size(1000) == 1


def test_members_are_each_the_run_alone_and_one_going_non_finite_stops_only_itself():
    """trainer.replicas' loop: K members stacked on a leading axis, one vmapped program. Member 0 is the same
    loop run alone on its data (to vmap's rounding); member 1, whose inputs hold an inf, is `diverged` at its first
    step and keeps its starting weights, while member 0 trains all its epochs."""
    from runner.training.handlers import EachMember

    # no batch norm: it leaves the dense biases a zero gradient, whose rounding noise Adam scales up to whole steps
    parts, x, y = _built(*PLAIN)
    x, y = np.asarray(x), np.asarray(y)
    poisoned = x.copy()
    poisoned[:, 0, 0, 0] = np.inf
    stages = [Stage("train", 2)]
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(0)])
    xs, ys = jnp.stack([x, poisoned]), jnp.stack([y, y])
    states = jax.vmap(lambda k, xm: create_train_state(k, parts, xm[:BATCH]))(keys, xs)
    alone, members = Recorder(), [Recorder(), Recorder()]
    each = EachMember([[members[0]], [members[1]]], [True, True])
    outcome = Loop(parts, stages, BATCH, 0, xs, ys, jnp.stack([jax.random.PRNGKey(1)] * 2), [each], None,
                   members=True, pacer=FixedPacer(3)).run(states, 0, 1)
    single = create_train_state(jax.random.PRNGKey(0), parts, jnp.asarray(x[:BATCH]))
    Loop(parts, stages, BATCH, 0, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(1), [alone], None,
         pacer=FixedPacer(3)).run(single, 0, 1)

    assert each.status == ["completed", "diverged"] and each.diverged_at == [None, 0]
    assert len(members[0].records) == 2 and members[1].records == []
    for got, want in zip(members[0].records, alone.records, strict=True):
        assert got["step"] == want["step"] and got["lr"] == want["lr"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(members[0].states[-1].params), jax.tree.leaves(alone.states[-1].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    kept = jax.tree.map(lambda leaf: leaf[1], outcome.state.params)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(jax.tree.map(lambda leaf: leaf[1], states.params))):
        np.testing.assert_array_equal(a, b)  # its starting weights: its first epoch never went finite


def _toy_parts():
    """What the loop reads of Parts when it is given an update: the optimizer (its state's count) and the rate."""
    return Parts(None, optax.identity(), Regularizer(), Schedule(optax.constant_schedule(0.1)))


def _running_total(nan_at_step=-1):
    """An update that is not a gradient step: total += the batch's mean + a uniform draw of the batch's key; its
    loss is the new total (NaN at step `nan_at_step`)."""
    def apply(state, x, y, key):
        assert y is None  # no labels
        total = state.params["total"] + jnp.mean(x) + jax.random.uniform(key)
        loss = jnp.where(state.step == nan_at_step, jnp.nan, total)
        return state.replace(step=state.step + 1, params={"total": total}), {"loss": loss}, None

    return Update(apply)


class StepLosses:
    """A handler that keeps each epoch's step losses, and stops the loop at the first epoch holding a NaN."""

    def __init__(self):
        self.losses = []

    def on_epoch_end(self, end):
        self.losses.append(np.asarray(end.raw["step_losses"]))
        if np.isnan(self.losses[-1]).any():
            end.stop = "early_stopped"


def _toy_loop(update, epochs, **options):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(N, 3)), jnp.float32)
    state = TrainState.create(apply_fn=None, params={"total": jnp.zeros(())}, tx=optax.identity())
    handler = StepLosses()
    loop = Loop(_toy_parts(), [Stage("train", epochs)], BATCH, 0, x, None, jax.random.PRNGKey(3), [handler], None,
                update=update, step_losses=True, pacer=FixedPacer(3), **options)
    return loop, state, handler


def test_any_update_runs_in_the_loop_on_the_runs_batches_and_keys_with_its_step_losses():
    loop, state, handler = _toy_loop(_running_total(), epochs=2)
    outcome = loop.run(state, 0, 1)
    total, by_hand = jnp.zeros(()), []
    for epoch in (1, 2):  # epoch e: permutation(fold_in(key, e)); step i's key fold_in(that key, i)
        epoch_key = jax.random.fold_in(loop.data_key, epoch)
        order = jax.random.permutation(epoch_key, N)[: N // BATCH * BATCH].reshape(-1, BATCH)
        for i, indices in enumerate(order):
            total = total + jnp.mean(loop.x[indices]) + jax.random.uniform(jax.random.fold_in(epoch_key, i))
            by_hand.append(float(total))
    np.testing.assert_allclose(np.concatenate(handler.losses), by_hand, rtol=1e-6)
    assert (outcome.status, int(outcome.state.step)) == ("completed", 2 * N // BATCH)


def test_a_non_finite_loss_left_to_the_handlers_reaches_them_and_their_stop_ends_the_loop():
    loop, state, handler = _toy_loop(_running_total(nan_at_step=3), epochs=3, stop_when_nonfinite=False)
    outcome = loop.run(state, 0, 1)
    assert (outcome.status, outcome.epoch) == ("early_stopped", 1)
    (losses,) = handler.losses  # the whole first epoch ran; nothing after its end
    assert np.isnan(losses[3]) and np.isfinite(np.delete(losses, 3)).all()
    assert int(outcome.state.step) == N // BATCH


def test_by_default_a_non_finite_loss_of_an_update_without_gradients_is_a_divergence_at_its_step():
    loop, state, handler = _toy_loop(_running_total(nan_at_step=3), epochs=3)
    outcome = loop.run(state, 0, 1)
    assert outcome.status == "diverged" and handler.losses == []
    assert outcome.divergence == {"diverged_at_step": 3, "diverged_layer": None}
