"""What happens at an epoch's end: small handler objects the loop calls in a fixed order.

Each handler has one job and one method, `on_epoch_end(end)`: it reads the `EpochEnd` (epoch, stage, train
state, the epoch's metrics record) and may add to the record, replace the state (plateau) or end the run by
setting `end.stop` to a status. The loop (runner/training/loop.py) calls them in the order it is given, which is
the order their effects depend on: validation first (it fills the record), checkpoints last (they save
what the others decided).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from runner.rundir.outputs import append_jsonl, read_jsonl, rewrite_jsonl
from runner.training.checkpoint import Checkpoints
from runner.training.diagnostics import to_records
from runner.training.optim import applied_rate, plateau_state, rate_inputs, with_plateau_state, written_rate
from runner.training.train import finite_members


@dataclasses.dataclass
class EpochEnd:
    """One epoch's end, as the handlers see and change it."""

    epoch: int
    stage: int
    state: Any
    record: dict  # becomes this epoch's metrics.jsonl line
    raw: dict  # what the compiled epoch returned (on the host): loss, accuracy, diagnostics buffer, ...
    last: bool  # the run's last epoch
    stop: str | None = None  # a status that ends the run after this epoch: early_stopped, interrupted


class Handler(Protocol):
    def on_epoch_end(self, end: EpochEnd) -> None: ...


class Validation:
    """Adds `val_loss` and `val_accuracy` of the epoch's weights to the record."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]]):
        self.evaluate = evaluate

    def on_epoch_end(self, end: EpochEnd) -> None:
        v = self.evaluate(end.state)
        end.record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])


class Plateau:
    """Performance scheduling: once an epoch, optax's reduce_on_plateau decides on the validation loss.

    It updates the plateau state that the optimizer chain's scaling step reads (runner/training/optim.py), so the next
    epoch's steps are scaled by the new factor, before any projection in the chain.
    """

    def __init__(self, plateau: Any):
        # One compiled decision for the run (run eagerly, its lax.cond would compile again every epoch).
        self.decide = jax.jit(lambda state, value: plateau.update(None, state, value=value)[1])

    def on_epoch_end(self, end: EpochEnd) -> None:
        current = plateau_state(end.state.opt_state)
        # A fresh accumulation of one value: the decision rests on this epoch's validation loss alone.
        fresh = current._replace(count=jnp.zeros_like(current.count), avg_value=jnp.zeros_like(current.avg_value))
        decided = self.decide(fresh, jnp.asarray(end.record["val_loss"], jnp.float32))
        end.state = end.state.replace(opt_state=with_plateau_state(end.state.opt_state, decided))


class MetricsWriter:
    """Appends the record to metrics.jsonl (flushed and synced: a crash loses at most this line)."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, end: EpochEnd) -> None:
        append_jsonl(self.path, end.record)


class LearningRateTrace:
    """Appends the learning rate applied at each step of the epoch to `path` (lr_trace.jsonl, one line an
    epoch): `{"epoch", "step": the train step of the epoch's first step, "lr": [one rate per step]}`.

    The rates are rebuilt, not read step by step: the optimizer's k-th update (k = 0, 1, ... from its state's
    init) applies the schedule's rate at k, a pure function of k, times the plateau scale, which only Plateau
    changes, between epochs. So the epoch's rates are the schedule at the optimizer's last `steps_per_epoch`
    counts times the scale it ran with: the same function at the same counts as the optimizer (exact), two small
    host reads and one small compiled program an epoch, and nothing added to the compiled epoch. The counts are the
    schedule's own (runner.training.optim.schedule_count), which a stage's fresh optimizer state continues from the run's
    step. Place it before Plateau, which sets the next epoch's scale. At its first epoch it drops the
    lines of that epoch and later, left by a run that stopped after its last checkpoint.
    """

    def __init__(self, path: Path, learning_rate_at: Callable, steps_per_epoch: int):
        self.path, self.steps, self.started = path, steps_per_epoch, False
        before = jnp.arange(steps_per_epoch) - steps_per_epoch  # the epoch's counts, relative to the count after it
        self.rates = jax.jit(lambda count, scale: applied_rate(learning_rate_at, count, scale, before))

    def on_epoch_end(self, end: EpochEnd) -> None:
        if not self.started and self.path.exists():
            rewrite_jsonl(self.path, [r for r in read_jsonl(self.path) if r["epoch"] < end.epoch])
        self.started = True
        # Read to the host first (replicated state: every process holds it), so that the rates are computed on
        # this process's own device: only the process that writes the run's files calls this.
        count, scale = jax.device_get(rate_inputs(end.state.opt_state, end.state.step))
        rates = jax.device_get(self.rates(count, scale))
        append_jsonl(self.path, {"epoch": end.epoch, "step": end.record["step"] - self.steps,
                                 "lr": [written_rate(r) for r in rates]})


class DiagnosticsWriter:
    """Appends the epoch's per-layer diagnostics (when the compiled epoch measured any) to diagnostics.jsonl."""

    def __init__(self, path: Path, layers: list[str]):
        self.path, self.layers = path, layers

    def on_epoch_end(self, end: EpochEnd) -> None:
        write_diagnostics(self.path, end.epoch, end.raw, self.layers)


def write_diagnostics(path: Path, epoch: int, raw: dict, layers: list[str]) -> None:
    for record in to_records(epoch, raw["diagnostics"], layers) if "diagnostics" in raw else ():
        append_jsonl(path, record)


class Progress:
    """Shows the epoch's losses and accuracies (a live bar on a terminal, a plain line otherwise); a replicas
    run's, their means over the members."""

    KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")

    def __init__(self, show: Callable[[int, dict], None]):
        self.show = show

    def on_epoch_end(self, end: EpochEnd) -> None:
        self.show(end.epoch, {k: float(np.mean(end.record[k])) for k in self.KEYS})  # members: their mean


class EarlyStopping:
    """Ends the run (`early_stopped`) when the monitored metric has not improved for `patience` epochs.

    Keeps the best epoch's parameters and batch statistics, which the run restores for its test metrics.
    """

    def __init__(self, patience: int, monitor: str):
        self.patience, self.monitor = patience, monitor
        self.sign = -1.0 if monitor == "val_loss" else 1.0
        self.best, self.best_epoch, self.best_weights = -np.inf, 0, None

    def on_epoch_end(self, end: EpochEnd) -> None:
        value = end.record[self.monitor]
        if value is not None and np.isfinite(value) and self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, end.epoch
            self.best_weights = weights_of(end.state) if self.patience > 0 else None
        if self.stopped(end.epoch):
            end.stop = end.stop or "early_stopped"

    def stopped(self, epoch: int) -> bool:
        """Whether the run ends at `epoch`'s end: `patience` epochs have passed without improvement.

        The decision is taken at an epoch's end, after the epoch trained; a resumed run asks it of its
        checkpoint's epoch before training, or it would train one epoch more than the run it continues.
        """
        return self.patience > 0 and epoch - self.best_epoch >= self.patience

    def meta(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def restore(self, meta: dict, best_weights: Any) -> None:
        self.best, self.best_epoch = float(meta["best"]), int(meta["best_epoch"])
        self.best_weights = best_weights


def weights_of(state: Any) -> dict:
    """What a trained net is, without its optimizer: parameters and batch statistics."""
    return {"params": state.params, "batch_stats": state.batch_stats}


class Interrupt:
    """Ends the run (`interrupted`) after this epoch when SIGTERM or Ctrl-C arrived during it."""

    def __init__(self, received: threading.Event):
        self.received = received

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.received.is_set():
            end.stop = end.stop or "interrupted"


class Checkpointer:
    """Saves a checkpoint every `every` epochs, at the last epoch, and whenever the run stops.

    A checkpoint holds the train state, the best weights early stopping keeps, the epoch and the stage:
    everything needed to continue as if the run had not stopped.
    """

    def __init__(self, checkpoints: Checkpoints, every: int, stopper: EarlyStopping):
        self.checkpoints, self.every, self.stopper = checkpoints, every, stopper

    def on_epoch_end(self, end: EpochEnd) -> None:
        if end.stop or end.last or (self.every and end.epoch % self.every == 0):
            self.save(end.epoch, end.stage, end.state)

    def save(self, epoch: int, stage: int, state: Any) -> None:
        """The checkpoint of the end of `epoch` (0: before training), unless it is saved already."""
        if self.checkpoints.has(epoch):
            return
        trees = {"state": state}
        if self.stopper.best_weights is not None:
            trees["best"] = self.stopper.best_weights
        self.checkpoints.save(epoch, trees, {"epoch": epoch, "stage": stage, **self.stopper.meta()})


class EachMember:
    """The members of a replicas run (runner/cli/replicas.py): each member's own part of the epoch's end (its record,
    its metrics, its state where `with_state[i]`) goes to its own handlers (its loggers). A member whose loss or
    parameters went non-finite this epoch (the loop kept its last finite epoch) is `diverged`, and its handlers
    hear no more."""

    def __init__(self, handlers: list[list[Handler]], with_state: list[bool]):
        self.handlers, self.with_state = handlers, with_state
        self.status: list[str] = ["completed"] * len(handlers)
        self.diverged_at: list[int | None] = [None] * len(handlers)

    def on_epoch_end(self, end: EpochEnd) -> None:
        finite = finite_members(end.raw)
        for i, handlers in enumerate(self.handlers):
            if self.status[i] != "completed":
                continue
            if not finite[i]:
                self.status[i], self.diverged_at[i] = "diverged", int(end.raw["first_nonfinite_step"][i])
                continue
            state = member_state(end.state, i) if self.with_state[i] else None
            record = {k: v[i] if isinstance(v, list) else v for k, v in end.record.items()}
            own = EpochEnd(end.epoch, end.stage, state, record, jax.tree_util.tree_map(lambda a: a[i], end.raw),
                           end.last)
            for handler in handlers:
                handler.on_epoch_end(own)


def member_state(states: Any, i: int) -> Any:
    """Member i's train state, out of the stacked states of a replicas run's members."""
    return jax.tree_util.tree_map(lambda leaf: leaf[i], states)
