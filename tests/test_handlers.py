"""Each epoch-end handler alone, against what it promises."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import jax.numpy as jnp
import optax
import pytest
from optax.contrib import reduce_on_plateau

from runner.training.handlers import (Checkpointer, EarlyStopping, EpochEnd, Interrupt, MetricsWriter, Plateau,
                                      Progress, Validation)
from runner.training.optim import plateau_scaling, plateau_state


class FakeState(SimpleNamespace):
    def replace(self, **changes):
        return FakeState(**{**self.__dict__, **changes})


def end(epoch, record=None, last=False, state=None):
    state = state or FakeState(params={"w": epoch}, batch_stats={}, plateau=None)
    return EpochEnd(epoch, 0, state, dict(record or {}), {}, last)


def test_validation_fills_the_record_from_the_evaluation_of_the_state():
    e = end(3)
    Validation(lambda state: {"loss": 0.5 + state.params["w"], "accuracy": 0.9}).on_epoch_end(e)
    assert e.record == {"val_loss": 3.5, "val_accuracy": 0.9}


@pytest.mark.parametrize("monitor, values, stop_at, best_epoch", [
    ("val_loss", [1.0, 0.9, 0.95, 0.96], 4, 2),          # no improvement for 2 epochs after epoch 2
    ("val_accuracy", [0.5, 0.6, 0.7, 0.8], None, 4),     # always improving: never stops
    ("val_loss", [1.0, float("nan"), 1.1, 0.5], 3, 1),  # a NaN is never an improvement
])
def test_early_stopping_stops_after_patience_epochs_without_improvement(monitor, values, stop_at, best_epoch):
    stopper, stopped = EarlyStopping(patience=2, monitor=monitor), None
    for epoch, value in enumerate(values, 1):
        e = end(epoch, {monitor: value})
        stopper.on_epoch_end(e)
        if e.stop:
            stopped = epoch
            break
    assert stopped == stop_at and stopper.best_epoch == best_epoch
    assert stopper.best_weights == {"params": {"w": best_epoch}, "batch_stats": {}}


def test_early_stopping_with_patience_0_keeps_no_weights_and_never_stops():
    stopper = EarlyStopping(patience=0, monitor="val_loss")
    for epoch in range(1, 5):
        e = end(epoch, {"val_loss": float(epoch)})
        stopper.on_epoch_end(e)
        assert e.stop is None
    assert stopper.best_weights is None


def test_interrupt_ends_the_run_only_once_a_signal_arrived():
    received = threading.Event()
    e = end(1)
    Interrupt(received).on_epoch_end(e)
    assert e.stop is None
    received.set()
    Interrupt(received).on_epoch_end(e)
    assert e.stop == "interrupted"


def test_plateau_steps_reduce_on_plateau_with_the_validation_loss_once_an_epoch():
    plateau = reduce_on_plateau(factor=0.5, patience=2)
    handler = Plateau(plateau)
    # The chain's scaling copy has been accumulating training losses (runner/training/optim.py); the decision ignores them.
    chain_state = plateau_scaling().init({"w": jnp.zeros(1)})._replace(count=jnp.asarray(7), avg_value=jnp.nan)
    state = FakeState(params={}, batch_stats={}, opt_state=(optax.EmptyState(), chain_state))
    scales = []
    for epoch, loss in enumerate([1.0, 1.0, 1.0, 1.0, 1.0], 1):
        e = end(epoch, {"val_loss": loss}, state=state)
        handler.on_epoch_end(e)
        state = e.state
        scales.append(float(plateau_state(state.opt_state).scale))
    # Epoch 1 sets the best; epochs 2 and 3 do not improve: the scale halves after the second of them.
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_metrics_writer_appends_one_json_line_per_epoch(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for epoch in (1, 2):
        writer.on_epoch_end(end(epoch, {"epoch": epoch, "val_loss": float("nan")}))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "val_loss": None}, {"epoch": 2, "val_loss": None}]


def test_progress_shows_the_four_losses_and_accuracies():
    shown = []
    Progress(lambda epoch, metrics: shown.append((epoch, metrics))).on_epoch_end(
        end(2, {"train_loss": 1, "train_accuracy": 0.5, "val_loss": 2, "val_accuracy": 0.4, "lr": 0.1}))
    assert shown == [(2, {"train_loss": 1, "train_accuracy": 0.5, "val_loss": 2, "val_accuracy": 0.4})]


class FakeCheckpoints:
    def __init__(self):
        self.saved = []

    def save(self, epoch, trees, meta):
        self.saved.append((epoch, sorted(trees), meta))

    def has(self, epoch):
        return any(saved[0] == epoch for saved in self.saved)


@pytest.mark.parametrize("every, ends, saved", [
    (0, [end(1), end(2), end(3, last=True)], [3]),        # only at the end
    (2, [end(1), end(2), end(3), end(4, last=True)], [2, 4]),
])
def test_checkpointer_saves_every_n_epochs_and_at_the_last(every, ends, saved):
    checkpoints = FakeCheckpoints()
    handler = Checkpointer(checkpoints, every, EarlyStopping(0, "val_loss"))
    for e in ends:
        handler.on_epoch_end(e)
    assert [epoch for epoch, _, _ in checkpoints.saved] == saved


def test_checkpointer_saves_when_the_run_stops_with_the_stage_and_best_weights():
    checkpoints, stopper = FakeCheckpoints(), EarlyStopping(1, "val_loss")
    stopper.on_epoch_end(end(1, {"val_loss": 1.0}))
    e = end(2, {"val_loss": 2.0})
    e.stage = 1
    stopper.on_epoch_end(e)
    Checkpointer(checkpoints, 0, stopper).on_epoch_end(e)
    [(epoch, trees, meta)] = checkpoints.saved
    assert epoch == 2 and trees == ["best", "state"]
    assert meta == {"epoch": 2, "stage": 1, "best": -1.0, "best_epoch": 1}


def test_checkpointer_saves_an_epoch_once():
    """An interrupt mid-epoch saves the previous epoch's end, which a periodic checkpoint may have saved already."""
    checkpoints = FakeCheckpoints()
    handler = Checkpointer(checkpoints, 1, EarlyStopping(0, "val_loss"))
    handler.on_epoch_end(end(1))
    handler.save(1, 0, end(1).state)
    handler.save(0, 0, end(1).state)
    assert [epoch for epoch, _, _ in checkpoints.saved] == [1, 0]
