"""The host loop: over stages and their epochs, each epoch compiled programs, handlers at each end.

An epoch runs as a few chunks of steps, each one call of the same compiled program (runner/training/train.py), sized
to about 0.5 s so the progress bar moves and Ctrl-C acts within an epoch; a short epoch is one chunk. Each
further call costs 1-3 ms on CPU (the bench's MLP and CNN, with freed host memory kept mapped:
runner/training/process.py), well under 1% of a chunk. After each chunk the loop reads a few numbers; if they went
non-finite it replays the epoch with per-layer checks and ends the run `diverged`; otherwise, at the epoch's
end, it hands an `EpochEnd` to the handlers (runner/training/handlers.py), which validate, write, decide and
checkpoint. A signal that arrives before an epoch's last chunk drops that epoch's steps: the run stops at the
previous epoch's end, which resumes bit for bit. Entering a stage gives the state that stage's optimizer
chain and a fresh optimizer state, and tells `on_stage` (the run prints runner/training/stages.py:entering's line: which
layers unfreeze).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from runner.scale.distributed import DataParallel
from runner.training.diagnostics import layer_names
from runner.training.handlers import EpochEnd, Handler, write_diagnostics
from runner.training.optim import applied_rate, continue_schedule, rate_inputs, written_rate
from runner.training.programs import compiled, signature
from runner.training.stages import Stage, stage_at, stage_optimizer
from runner.training.train import (Parts, TrainState, Update, classifier_update, finite_members, make_epoch_programs,
                                   nonfinite, whole_epoch)


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
    stage: int = 0  # the stage whose optimizer `state` carries
    abandoned: bool = False  # interrupted mid-epoch: `state` is that of the end of `epoch`, not yet checkpointed


class StageProgram:
    """One stage's compiled epoch — its start and its chunk of steps — and its checked replay (compiled
    only if an epoch goes non-finite).

    The step is `update` (runner/training/train.py `Update`), by default the run's train step of `parts` with the
    stage's frozen layers; `step_losses`: the epoch's metrics also hold each step's loss.
    With `data_parallel` (several devices, runner/scale/distributed.py) the same programs take and return
    everything replicated over the devices and split each step's batch over them; without, one device.
    With `members` (trainer.replicas, runner/cli/replicas.py) the state, data and key stack K runs on a leading axis
    and each program is the one-run program mapped over them (`jax.vmap`); their chunks share their bounds.
    """

    def __init__(self, parts: Parts, stage: Stage, batch_size: int, diagnostics_every: int,
                 state: TrainState, x: jax.Array, y: jax.Array | None, key: jax.Array,
                 data_parallel: DataParallel | None = None, members: bool = False, update: Update | None = None,
                 step_losses: bool = False):
        split = None if data_parallel is None else data_parallel.batch
        placed = {} if data_parallel is None else {"in_shardings": data_parallel.replicated,
                                                   "out_shardings": data_parallel.replicated}
        update = classifier_update(parts, stage.frozen) if update is None else update
        begin, train_steps = make_epoch_programs(update, batch_size, diagnostics_every, batch_sharding=split,
                                                 step_losses=step_losses)
        if members:
            begin, train_steps = jax.vmap(begin), jax.vmap(train_steps, in_axes=(0, 0, 0, 0, None, None))
        self.begin = jax.jit(begin, **placed).lower(state, x, key).compile()
        carry, order = jax.eval_shape(begin, state, x, key)
        bound = jax.ShapeDtypeStruct((), jnp.int32)
        # Donated: each chunk updates the carry in place instead of copying the train state (tens of MB).
        self.train_steps = jax.jit(train_steps, donate_argnums=0, **placed).lower(
            carry, x, y, order, bound, bound).compile()
        self.steps = order.shape[-2]  # order: ([members,] steps, batch)
        # members keep their last finite epoch instead (Loop._members_finite): no replay
        self.checked = None if members else jax.jit(whole_epoch(make_epoch_programs(
            update, batch_size, diagnostics_every, checked=True, batch_sharding=split)), **placed)


CHUNK_SECONDS = 0.5  # a run's chunks: the bar moves and Ctrl-C acts about this often


class Pacer:
    """How many steps the next chunk of an epoch takes: about `seconds` of training, judged by the last chunk.

    Chunks let the progress bar move and Ctrl-C act within an epoch; each costs one host read of a few
    numbers, so on a fast epoch the whole epoch is one chunk. The first chunk of a run is `first` steps;
    with `seconds=None` every chunk is (the benchmark's fixed chunks).
    """

    def __init__(self, seconds: float | None = CHUNK_SECONDS, first: int = 16):
        self.seconds, self.first, self.step_time = seconds, first, None

    def size(self, remaining: int) -> int:
        fixed = self.seconds is None or self.step_time is None
        wanted = self.first if fixed else int(self.seconds / max(self.step_time, 1e-9))
        return max(1, min(remaining, wanted))

    def observe(self, steps: int, seconds: float) -> None:
        self.step_time = seconds / steps


class AgreedPacer(Pacer):
    """A pacer for a run of several processes: every process takes the chunk size process 0 chose.

    Each chunk is a collective program, so all processes must split the epoch alike; their own timings differ.
    """

    def size(self, remaining: int) -> int:
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.int32(super().size(remaining))))


def enter_stage(state: TrainState, parts: Parts, stage: Stage) -> TrainState:
    """The state with the stage's optimizer chain and a fresh optimizer state for it, whose schedule goes on
    from the run's step."""
    tx = stage_chain(parts, stage)
    return state.replace(tx=tx, opt_state=continue_schedule(tx.init(state.params), state.step))


def stage_chain(parts: Parts, stage: Stage) -> Any:
    """The stage's optimizer chain (runner/training/stages.py), one object per stage of shared parts: a state
    carries its chain in its tree structure, which the programs compiled for it are kept by."""
    return compiled(parts, ("chain", stage), lambda: stage_optimizer(parts.optimizer, stage))


@dataclasses.dataclass
class Loop:
    """Everything the loop needs besides the state: the run's pieces, its data and its handlers."""

    parts: Parts
    stages: Sequence[Stage]
    batch_size: int
    diagnostics_every: int
    x: jax.Array
    y: jax.Array | None  # None: a training without labels (greedy pretraining's layers)
    data_key: jax.Array
    handlers: Sequence[Handler]
    diagnostics_path: Any  # where a diverged epoch's diagnostics still go
    on_compile: Any = None  # called with the state when a stage's program is built (e.g. to compile evaluation)
    on_compiling: Callable[[], None] | None = None  # called before a stage's program is built (the bar says so)
    on_stage: Callable[[Stage, Stage, int], None] | None = None  # (stage left, stage entered, its first epoch)
    on_steps: Callable[[int, int, int, dict], None] | None = None  # (epoch, steps done, steps, metrics so far)
    interrupt: threading.Event | None = None  # set by a signal: the epoch stops at its next chunk
    pacer: Pacer = dataclasses.field(default_factory=Pacer)
    data_parallel: DataParallel | None = None  # the run's devices; None: one device, arrays where JAX puts them
    # trainer.replicas: the state, data and key stack K members (runner/cli/replicas.py); the record's values are then
    # lists, one per member, and a member that goes non-finite keeps its last finite epoch while the others go on
    members: bool = False
    # The step every stage's epochs apply (runner/training/train.py); None: the run's train step of `parts`, with each stage's
    # frozen layers. Greedy pretraining gives its layer's update; `parts` then gives the optimizer and its rate.
    update: Update | None = None
    step_losses: bool = False  # the epoch's metrics (EpochEnd.raw) also hold each step's loss: `step_losses`
    # False: a non-finite loss is the handlers' to judge (the LR range test stops on it), not a divergence to
    # replay; the epoch runs to its end
    stop_when_nonfinite: bool = True

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def run(self, state: TrainState, state_stage: int, first_epoch: int) -> Outcome:
        """Train epochs first_epoch..total; `state_stage` is the stage whose optimizer `state` carries."""
        outcome, programs = Outcome("completed", first_epoch - 1, state, stage=state_stage), {}
        for epoch in range(first_epoch, self.total_epochs + 1):
            index = stage_at(self.stages, epoch)
            if index != state_stage:
                if self.on_stage is not None:
                    self.on_stage(self.stages[state_stage], self.stages[index], epoch)
                outcome.state, state_stage = enter_stage(outcome.state, self.parts, self.stages[index]), index
                outcome.stage = index
            if index not in programs:
                programs[index] = self._compile(index, outcome)
            if self._epoch(programs[index], index, epoch, outcome):
                break
        return outcome

    def _compile(self, index: int, outcome: Outcome) -> StageProgram:
        if self.on_compiling is not None:
            self.on_compiling()
        start = time.perf_counter()
        state, key = self._placed(outcome.state), self._placed(self.data_key)

        def build() -> StageProgram:
            return StageProgram(self.parts, self.stages[index], self.batch_size, self.diagnostics_every, state,
                                self.x, self.y, key, self.data_parallel, self.members, self.update,
                                self.step_losses)
        # Kept for a later run of the same parts (runner/training/programs.py): a sweep's next seed. An update of
        # its own (pretraining's) closes over more than its key would say: built anew.
        devices = None if self.data_parallel is None else tuple(self.data_parallel.devices)
        program = build() if self.update is not None else compiled(
            self.parts, ("epoch", self.stages[index], self.batch_size, self.diagnostics_every, devices, self.members,
                         self.step_losses, signature(state, self.x, self.y, key)), build)
        if self.on_compile is not None:
            self.on_compile(outcome.state)
        outcome.compile_time += time.perf_counter() - start
        return program

    def _epoch(self, program: StageProgram, index: int, epoch: int, outcome: Outcome) -> bool:
        """Train one epoch in chunks and hand it to the handlers; True when the run ends here."""
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if self.members else jax.random.fold_in
        start, key = time.perf_counter(), self._placed(fold(self.data_key, epoch))
        before = self._placed(outcome.state)  # handlers and a new stage may hand back arrays placed elsewhere
        carry, raw = self._train_steps(program, epoch, before, key)
        seconds = time.perf_counter() - start
        if carry is None:  # interrupted mid-epoch: the epoch's steps are dropped, the run stops where it was
            outcome.status, outcome.epoch, outcome.stage, outcome.abandoned = "interrupted", epoch - 1, index, True
            return True
        outcome.train_time, outcome.timed_epochs = outcome.train_time + seconds, outcome.timed_epochs + 1
        if self.members:
            state = _keep_where(jnp.asarray(finite_members(raw)), carry.state, before)
        elif self.stop_when_nonfinite and nonfinite(raw):
            outcome.state, raw, outcome.divergence = replay_divergence(program.checked, before, self.x, self.y, key,
                                                                       raw)
            if "diagnostics" in raw:
                write_diagnostics(self.diagnostics_path, epoch, raw, layer_names(before.params))
            outcome.status, outcome.epoch = "diverged", epoch - 1
            return True
        else:
            state = carry.state
        record = {"epoch": epoch, "step": _host(state.step), "lr": current_lr(self.parts, before, self.members),
                  "train_loss": _host(raw["loss"]), "train_accuracy": _host(raw["accuracy"]), "epoch_time_s": seconds}
        end = EpochEnd(epoch, index, state, record, raw, last=epoch == self.total_epochs)
        for handler in self.handlers:
            handler.on_epoch_end(end)
        outcome.state, outcome.epoch, outcome.stage = end.state, epoch, index
        outcome.status = end.stop or "completed"
        return end.stop is not None

    def _placed(self, tree: Any) -> Any:
        return tree if self.data_parallel is None else self.data_parallel.put(tree)

    def _train_steps(self, program: StageProgram, epoch: int, before: TrainState,
                     key: jax.Array) -> tuple[Any, dict]:
        """The epoch's steps, a chunk at a time: (carry, metrics read on the host), or (None, {}) when a signal
        arrived before the last chunk."""
        def after_chunk(done: int, raw: dict) -> bool:
            if self.on_steps is not None:
                self.on_steps(epoch, done, program.steps, raw)
            return done < program.steps and self.interrupt is not None and self.interrupt.is_set()

        return train_in_chunks(program, before, self.x, self.y, key, self.pacer, after_chunk,
                               stop_when_nonfinite=self.stop_when_nonfinite and not self.members)


def train_in_chunks(program: StageProgram, state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array,
                    pacer: Pacer, after_chunk: Callable[[int, dict], bool],
                    stop_when_nonfinite: bool = True) -> tuple[Any, dict]:
    """One epoch as chunks of steps sized by `pacer`: (carry, the epoch's metrics on the host).

    After each chunk, `after_chunk(steps done, metrics so far)` may stop the epoch (returns (None, {})).
    A chunk that went non-finite ends the epoch early (the caller replays it with checks), unless
    `stop_when_nonfinite` is false (members: the others train on).
    """
    carry, order = program.begin(state, x, key)
    done = 0
    while done < program.steps:
        size, started = pacer.size(program.steps - done), time.perf_counter()
        carry, raw = program.train_steps(carry, x, y, order, np.int32(done), np.int32(done + size))
        raw = jax.device_get(raw)
        done += size
        pacer.observe(size, time.perf_counter() - started)
        if stop_when_nonfinite and nonfinite(raw):
            break
        if after_chunk(done, raw):
            return None, {}
    return carry, raw


def replay_divergence(checked_epoch, before: TrainState, x: jax.Array, y: jax.Array | None, key: jax.Array,
                      metrics: dict) -> tuple[TrainState, dict, dict]:
    """Replay an epoch that went non-finite with per-layer checks: (last finite state, metrics, divergence).

    divergence: `diverged_at_step`, the first step whose loss or a kernel gradient was not finite, and
    `diverged_layer`, the lowest layer whose gradient was not finite then (None if only the loss was).
    """
    state, checked = checked_epoch(before, x, y, key)
    checked = jax.device_get(checked)
    step, layer = int(checked["first_nonfinite_step"]), int(checked["nonfinite_layer"])
    if step < 0:  # the replay stayed finite (the programs may round differently): report the first pass's step
        step = int(metrics["first_nonfinite_step"]) if metrics["first_nonfinite_step"] >= 0 else int(state.step) - 1
    layer_name = layer_names(before.params)[layer] if layer >= 0 else None  # -1 also for an update without gradients
    return state, checked, {"diverged_at_step": step, "diverged_layer": layer_name}


@jax.jit
def _keep_where(ok: jax.Array, new: Any, old: Any) -> Any:
    """Per member: the new state where `ok`, else the old one."""
    def pick(a, b):
        return jnp.where(ok.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _host(value: Any) -> Any:
    """A number the device returned, as a Python number; a member axis as a list of them."""
    return np.asarray(value).tolist()


def current_lr(parts: Parts, state: TrainState, members: bool = False) -> float | list[float]:
    """The learning rate the next step of `state` applies (runner/training/optim.py's one formula of it): for the state an
    epoch starts from, its first step's, lr_trace.jsonl's first entry of the epoch. Members: one per member."""
    count, scale = jax.device_get(rate_inputs(state.opt_state, state.step))
    if members:
        scales = np.broadcast_to(scale, np.shape(count))  # 1 for every member without a plateau schedule
        return [written_rate(applied_rate(parts.schedule.learning_rate_at, c, s)) for c, s in zip(count, scales)]
    return written_rate(applied_rate(parts.schedule.learning_rate_at, count, scale))
