"""One truth for the applied learning rate (runner/training/optim.py: rate_inputs, applied_rate): metrics.jsonl's `lr` of
each epoch is lr_trace.jsonl's first entry of that epoch, for every optimizer and every schedule, across a stage
change (stages=freeze_lower: a fresh optimizer state continues the schedule's count, FTRL's own count too)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runner.config.compose import CONF_DIR
from runner.console import Console
from runner.training.build import build_parts, build_stages
from runner.training.handlers import LearningRateTrace, Plateau, Validation
from runner.training.loggers import build_loggers, close_loggers
from runner.training.loop import Loop
from runner.training.stages import stage_optimizer
from runner.training.train import TrainState
from tests.conftest import compose_config, read_metrics

SHORT = ("model.depth=2", "model.width=16", "trainer.epochs=3", "trainer.batch_size=256", "stages=freeze_lower",
         "stages.frozen_epochs=1")
OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))
CASES = [(o, "exponential") for o in OPTIMIZERS] + [("adam", s) for s in SCHEDULES if s != "exponential"]


def lr_trace(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "lr_trace.jsonl").read_text().splitlines()]


def config(optimizer: str, schedule: str):
    extra = ["schedule.decay_every=1"] if schedule == "exponential" else []
    return compose_config(*SHORT, f"optimizer={optimizer}", f"schedule={schedule}", *extra)


def assert_metrics_lr_is_the_traces_first_rate(run_dir, schedule: str) -> None:
    metrics, trace = read_metrics(run_dir), lr_trace(run_dir)
    assert [m["epoch"] for m in metrics] == [t["epoch"] for t in trace] == [1, 2, 3]
    assert [m["lr"] for m in metrics] == [t["lr"][0] for t in trace]
    if schedule == "exponential":  # the schedule goes on across the stage change: epoch 2 starts 10x lower
        assert np.isclose(trace[1]["lr"][0], trace[0]["lr"][0] / 10, rtol=1e-5)


# A whole run (~5 s, most of it compiling each stage's epoch): the run assembles the loop and its handlers as the
# table below does.
def test_a_runs_metrics_lr_is_the_traces_first_rate_of_each_epoch_across_a_stage_change(tmp_path, tfds_dir):
    from runner.cli.run import train_and_evaluate

    train_and_evaluate(config("ftrl", "exponential"), tmp_path, Console(live=False))
    assert_metrics_lr_is_the_traces_first_rate(tmp_path, "exponential")


class OptimizerSteps:
    """runner.training.loop.StageProgram without the model: one compiled loop over a chunk's steps, each applying the stage's
    optimizer chain (state.tx) to unit gradients as the train step applies it (runner/training/train.py: value=loss) and
    counting the step. The applied rate depends on the optimizer's state alone (its counts, the plateau's scale),
    which moves as in training; the model would add ~2 s of compiling per stage for every optimizer and schedule."""

    def __init__(self, parts, stage, batch_size, diagnostics_every, state, x, y, key, *options):
        del parts, stage, diagnostics_every, state, y, key, options
        self.steps, self.checked = x.shape[0] // batch_size, None

        def step(_, state):
            grads = jax.tree.map(jnp.ones_like, state.params)
            updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=jnp.asarray(1.0))
            return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                 opt_state=opt_state)

        self.run = jax.jit(lambda state, start, stop: jax.lax.fori_loop(start, stop, step, state))

    def begin(self, state, x, key):
        return SimpleNamespace(state=state), None

    def train_steps(self, carry, x, y, order, start, stop):
        return SimpleNamespace(state=self.run(carry.state, start, stop)), {
            "loss": 1.0, "accuracy": 0.5, "first_nonfinite_step": -1, "params_finite": True}


@pytest.mark.parametrize("optimizer, schedule", CASES)
def test_metrics_lr_is_the_traces_first_rate_of_each_epoch_for_every_optimizer_and_schedule(optimizer, schedule,
                                                                                          tmp_path, monkeypatch):
    # The run's loop (runner/training/loop.py: stages, metrics' lr, the handlers) with the handlers a run gives it, in its
    # order (runner/cli/run.py: the trace before Plateau; metrics.jsonl written by the jsonl logger), on the run's
    # optimizer chain, stages and schedule; each epoch's steps those of OptimizerSteps.
    monkeypatch.setattr("runner.training.loop.StageProgram", OptimizerSteps)
    cfg = config(optimizer, schedule)
    steps, batch_size = 5, cfg.trainer.batch_size  # as digits' 1,293 training examples give
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=steps)
    stages = build_stages(cfg, parts.model.hidden_layers)
    params = {name: {"kernel": jnp.zeros(2)} for name in (*parts.model.hidden_layers, "head")}
    state = TrainState.create(apply_fn=None, params=params, tx=stage_optimizer(parts.optimizer, stages[0]),
                              rng=jax.random.PRNGKey(0))
    plateau = parts.schedule.plateau
    handlers = [LearningRateTrace(tmp_path / "lr_trace.jsonl", parts.schedule.learning_rate_at, steps),
                Validation(lambda s: {"loss": 1.0, "accuracy": 0.5}), *([Plateau(plateau)] if plateau else []),
                *build_loggers(cfg, tmp_path)]
    x, y = jnp.zeros((steps * batch_size, 1)), jnp.zeros(steps * batch_size, jnp.int32)
    outcome = Loop(parts, stages, batch_size, 0, x, y, jax.random.PRNGKey(1), handlers,
                   tmp_path / "diagnostics.jsonl").run(state, 0, 1)
    close_loggers(tmp_path, {"status": outcome.status})
    assert (outcome.status, int(outcome.state.step), outcome.stage) == ("completed", 3 * steps, 1)
    assert_metrics_lr_is_the_traces_first_rate(tmp_path, schedule)
