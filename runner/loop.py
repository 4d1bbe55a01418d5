"""The host loop: over stages and their epochs, each epoch one compiled program, handlers at each end.

The loop only moves between compiled epochs. Per epoch it reads the epoch's metrics once; if they went
non-finite it replays the epoch with per-layer checks and ends the run `diverged`; otherwise it hands an
`EpochEnd` to the handlers (runner/handlers.py), which validate, write, decide and checkpoint. Entering a
stage gives the state that stage's optimizer chain and a fresh optimizer state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax

from runner.build import Parts
from runner.diagnostics import layer_names
from runner.handlers import EpochEnd, Handler, write_diagnostics
from runner.optim import plateau_state
from runner.stages import Stage, stage_at, stage_optimizer
from runner.train import TrainState, make_train_epoch


@dataclasses.dataclass
class Outcome:
    """How the loop ended: status, the last epoch it completed, the state then, and its timings."""

    status: str  # completed | early_stopped | interrupted | diverged
    epoch: int
    state: TrainState
    divergence: dict | None = None
    train_time: float = 0.0
    timed_epochs: int = 0
    compile_time: float = 0.0


class StageProgram:
    """One stage's compiled epoch, and its checked replay (compiled only if an epoch goes non-finite)."""

    def __init__(self, parts: Parts, stage: Stage, batch_size: int, diagnostics_every: int,
                 state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array):
        self.train = jax.jit(make_train_epoch(parts, batch_size, diagnostics_every, frozen=stage.frozen)).lower(
            state, x, y, key).compile()
        self.checked = jax.jit(make_train_epoch(parts, batch_size, diagnostics_every, checked=True,
                                                frozen=stage.frozen))


def enter_stage(state: TrainState, parts: Parts, stage: Stage) -> TrainState:
    """The state with the stage's optimizer chain and a fresh optimizer state for it."""
    tx = stage_optimizer(parts.optimizer, stage)
    return state.replace(tx=tx, opt_state=tx.init(state.params))


@dataclasses.dataclass
class Loop:
    """Everything the loop needs besides the state: the run's pieces, its data and its handlers."""

    parts: Parts
    stages: Sequence[Stage]
    batch_size: int
    diagnostics_every: int
    x: jax.Array
    y: jax.Array
    data_key: jax.Array
    handlers: Sequence[Handler]
    diagnostics_path: Any  # where a diverged epoch's diagnostics still go
    on_compile: Any = None  # called with the state when a stage's program is built (e.g. to compile evaluation)

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def run(self, state: TrainState, state_stage: int, first_epoch: int) -> Outcome:
        """Train epochs first_epoch..total; `state_stage` is the stage whose optimizer `state` carries."""
        outcome, programs = Outcome("completed", first_epoch - 1, state), {}
        for epoch in range(first_epoch, self.total_epochs + 1):
            index = stage_at(self.stages, epoch)
            if index != state_stage:
                outcome.state, state_stage = enter_stage(outcome.state, self.parts, self.stages[index]), index
            if index not in programs:
                programs[index] = self._compile(index, outcome)
            if self._epoch(programs[index], index, epoch, outcome):
                break
        return outcome

    def _compile(self, index: int, outcome: Outcome) -> StageProgram:
        start = time.perf_counter()
        program = StageProgram(self.parts, self.stages[index], self.batch_size, self.diagnostics_every,
                               outcome.state, self.x, self.y, self.data_key)
        if self.on_compile is not None:
            self.on_compile(outcome.state)
        outcome.compile_time += time.perf_counter() - start
        return program

    def _epoch(self, program: StageProgram, index: int, epoch: int, outcome: Outcome) -> bool:
        """Train one epoch and hand it to the handlers; True when the run ends here."""
        start, key, before = time.perf_counter(), jax.random.fold_in(self.data_key, epoch), outcome.state
        state, raw = program.train(before, self.x, self.y, key)
        raw = jax.device_get(raw)
        seconds = time.perf_counter() - start
        outcome.train_time, outcome.timed_epochs = outcome.train_time + seconds, outcome.timed_epochs + 1
        if raw["first_nonfinite_step"] >= 0 or not raw["params_finite"]:
            outcome.state, raw, outcome.divergence = replay_divergence(program.checked, before, self.x, self.y, key,
                                                                       raw, layer_names(before.params))
            write_diagnostics(self.diagnostics_path, epoch, raw, layer_names(before.params))
            outcome.status, outcome.epoch = "diverged", epoch - 1
            return True
        record = {"epoch": epoch, "step": int(state.step), "lr": current_lr(self.parts, state),
                  "train_loss": float(raw["loss"]), "train_accuracy": float(raw["accuracy"]), "epoch_time_s": seconds}
        end = EpochEnd(epoch, index, state, record, raw, last=epoch == self.total_epochs)
        for handler in self.handlers:
            handler.on_epoch_end(end)
        outcome.state, outcome.epoch = end.state, epoch
        outcome.status = end.stop or "completed"
        return end.stop is not None


def replay_divergence(checked_epoch, before: TrainState, x: jax.Array, y: jax.Array, key: jax.Array,
                      metrics: dict, layers: list[str]) -> tuple[TrainState, dict, dict]:
    """Replay an epoch that went non-finite with per-layer checks: (last finite state, metrics, divergence).

    divergence: `diverged_at_step`, the first step whose loss or a kernel gradient was not finite, and
    `diverged_layer`, the lowest layer whose gradient was not finite then (None if only the loss was).
    """
    state, checked = checked_epoch(before, x, y, key)
    checked = jax.device_get(checked)
    step, layer = int(checked["first_nonfinite_step"]), int(checked["nonfinite_layer"])
    if step < 0:  # the replay stayed finite (the programs may round differently): report the first pass's step
        step = int(metrics["first_nonfinite_step"]) if metrics["first_nonfinite_step"] >= 0 else int(state.step) - 1
    return state, checked, {"diverged_at_step": step, "diverged_layer": layers[layer] if layer >= 0 else None}


def current_lr(parts: Parts, state: TrainState) -> float:
    """The learning rate the next step will use: the schedule's, times the plateau scale in the optimizer state."""
    plateau = plateau_state(state.opt_state)
    scale = 1.0 if plateau is None else float(plateau.scale)
    return float(parts.schedule.learning_rate_at(state.step)) * scale
