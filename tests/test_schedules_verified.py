"""Schedules checked against what a run does with them: the rate applied at each step (runner.training.handlers
LearningRateTrace, drawn as the report's learning_rate.png) and the warnings of runner.techniques.schedules
beyond_run, each against the schedule's own definition over the steps a run applies (0..T-1)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax
import pytest
import yaml

from runner.config.compose import CONF_DIR
from runner.report.plots import learning_rate_line, plot_learning_rate
from runner.report.tables import find_run_dirs, label_runs, load_run, write_report
from runner.techniques.schedules import beyond_run
from runner.training.build import build_parts, build_schedule
from runner.training.handlers import EpochEnd, LearningRateTrace, Plateau
from runner.training.optim import continue_schedule, schedule_count
from runner.training.stages import Stage, stage_optimizer
from tests.conftest import compose_config, compose_shared

STEPS = 5  # steps per epoch
LR0 = 0.1
PARAMS = {"dense_0": {"kernel": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(2)}}
UNIT_GRADS = jax.tree.map(jnp.ones_like, PARAMS)
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))


class FakeState(SimpleNamespace):
    def replace(self, **changes):
        return FakeState(**{**self.__dict__, **changes})


def applied_rate(updates, opt_state) -> float:
    """The learning rate an update applied: inject_hyperparams records it (one_cycle); otherwise, with unit
    gradients and plain SGD, the update is -rate (times the plateau scale) itself."""
    if optax.tree.get(opt_state, "hyperparams", None) is not None:
        return float(optax.tree.get(opt_state, "hyperparams")["learning_rate"])
    return -float(updates["head"]["kernel"][0])


def train(path: Path, epochs: int, *overrides: str, fresh_optimizer_at: tuple[int, ...] = (),
          first_stage_frozen: bool = False) -> list[float]:
    """`epochs` epochs of STEPS updates with unit gradients through the run's optimizer chain (jitted, as in the
    train step), the epoch-end handlers in the order run.py gives them (the trace before Plateau), a flat
    validation loss; a fresh optimizer state at the epochs in `fresh_optimizer_at`, as a new stage gets.
    Returns the rate applied at each step."""
    cfg = compose_shared(f"optimizer.learning_rate={LR0}", f"trainer.epochs={epochs}", *overrides)
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=STEPS)
    chains = [stage_optimizer(parts.optimizer, Stage("s", 1, frozenset({"dense_0"}) if first_stage_frozen
                                                     else frozenset())), parts.optimizer]
    updates_of = [jax.jit(lambda opt_state, tx=tx: tx.update(UNIT_GRADS, opt_state, PARAMS, value=jnp.asarray(1.0)))
                  for tx in chains]
    handlers = [LearningRateTrace(path, parts.schedule.learning_rate_at, STEPS)]
    if parts.schedule.plateau is not None:
        handlers.append(Plateau(parts.schedule.plateau))
    stage, state, applied = 0, FakeState(step=0, opt_state=chains[0].init(PARAMS)), []
    for epoch in range(1, epochs + 1):
        if epoch in fresh_optimizer_at:
            stage = 1
            state = state.replace(opt_state=continue_schedule(chains[stage].init(PARAMS), state.step))  # enter_stage
        for _ in range(STEPS):
            updates, opt_state = updates_of[stage](state.opt_state)
            applied.append(applied_rate(updates, opt_state))
            state = state.replace(step=state.step + 1, opt_state=opt_state)
        end = EpochEnd(epoch, 0, state, {"step": state.step, "val_loss": 1.0}, {}, epoch == epochs)
        for handler in handlers:
            handler.on_epoch_end(end)
        state = end.state
    return applied


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_trace_is_the_rate_the_optimizer_applied_at_every_step(name, tmp_path):
    optimizer = "momentum" if name == "one_cycle" else "sgd"  # one_cycle cycles momentum: it needs one
    overrides = {"plateau": ["schedule.patience=1"], "exponential": ["schedule.decay_every=1"],
                 "power": ["schedule.decay_every=1"], "piecewise_constant": ["schedule.boundaries=[1,3]"]}
    applied = train(tmp_path / "lr_trace.jsonl", 4, f"optimizer={optimizer}", f"schedule={name}",
                    *overrides.get(name, []))
    trace = read_trace(tmp_path / "lr_trace.jsonl")
    assert [(r["epoch"], r["step"], len(r["lr"])) for r in trace] == [(e, (e - 1) * STEPS, STEPS) for e in (1, 2, 3, 4)]
    np.testing.assert_allclose([lr for r in trace for lr in r["lr"]], applied, rtol=1e-6)
    if name != "constant":  # the schedule (or the plateau's scale) moved the rate during the run
        assert len(set(np.round(applied, 9))) > 1


def test_after_a_stage_change_the_trace_goes_on_along_the_runs_schedule(tmp_path):
    # Stage 1 (epoch 1) keeps dense_0 frozen; stage 2 starts a fresh optimizer state whose schedule goes on from
    # the run's step (runner.training.loop.enter_stage), so the rate keeps decaying across the change.
    applied = train(tmp_path / "lr_trace.jsonl", 3, "optimizer=sgd", "schedule=exponential", "schedule.decay_every=1",
                    fresh_optimizer_at=(2,), first_stage_frozen=True)
    trace = read_trace(tmp_path / "lr_trace.jsonl")
    rates = [lr for r in trace for lr in r["lr"]]
    np.testing.assert_allclose(rates, applied, rtol=1e-6)
    expected = [LR0 * 0.1 ** (t / STEPS) for t in range(3 * STEPS)]  # exponential decay by 10 each epoch
    assert trace[1]["step"] == STEPS
    np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_a_resumed_run_replaces_the_trace_from_its_first_epoch_on(tmp_path):
    path = tmp_path / "lr_trace.jsonl"
    stale = [{"epoch": e, "step": (e - 1) * STEPS, "lr": [9.0] * STEPS} for e in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in stale))
    tx = optax.sgd(optax.exponential_decay(LR0, STEPS, 0.1))
    handler = LearningRateTrace(path, optax.exponential_decay(LR0, STEPS, 0.1), STEPS)
    opt_state = tx.init(PARAMS)
    for _ in range(STEPS):  # the checkpoint of epoch 1
        _, opt_state = tx.update(UNIT_GRADS, opt_state)
    for epoch in (2, 3):  # resumed: epochs 2 and 3 are trained again
        for _ in range(STEPS):
            _, opt_state = tx.update(UNIT_GRADS, opt_state)
        state = FakeState(step=epoch * STEPS, opt_state=opt_state)
        handler.on_epoch_end(EpochEnd(epoch, 0, state, {"step": epoch * STEPS}, {}, epoch == 3))
    trace = read_trace(path)
    assert [(r["epoch"], r["step"]) for r in trace] == [(1, 0), (2, STEPS), (3, 2 * STEPS)]
    assert trace[0]["lr"] == [9.0] * STEPS  # kept: before the resumed epochs
    expected = [LR0 * 0.1 ** (t / STEPS) for t in range(STEPS, 3 * STEPS)]
    np.testing.assert_allclose(trace[1]["lr"] + trace[2]["lr"], expected, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml")))
@pytest.mark.parametrize("schedule", ["constant", "plateau"])
def test_schedule_count_is_the_number_of_updates_of_every_optimizers_state(name, schedule):
    cfg = compose_config(f"optimizer={name}", f"schedule={schedule}", "regularizer=[max_norm]")
    tx = stage_optimizer(build_parts(cfg, num_classes=10, steps_per_epoch=STEPS).optimizer,
                         Stage("frozen", 1, frozenset({"dense_0"})))
    opt_state = tx.init(PARAMS)
    for _ in range(3):
        _, opt_state = tx.update(UNIT_GRADS, opt_state, PARAMS, value=jnp.asarray(1.0))
    assert int(schedule_count(opt_state)) == 3
    assert schedule_count(optax.identity().init(PARAMS)) is None


# beyond_run: each warning against the schedule's definition over the steps a run applies, 0..T-1.

def rates_of_a_run(name: str, total_steps: int, *overrides: str, steps_per_epoch: int = 10) -> tuple[np.ndarray, list]:
    """The rates a run of `total_steps` steps applies (steps 0..T-1) and beyond_run's warnings for it."""
    epochs, rest = divmod(total_steps, steps_per_epoch)
    assert rest == 0
    cfg = compose_shared(f"schedule={name}", f"optimizer.learning_rate={LR0}", f"trainer.epochs={epochs}", *overrides)
    schedule = build_schedule(cfg, steps_per_epoch)
    # The rate is a function of the step alone: the schedule at steps 0..63, cut to the run's, so that every case's
    # operations have one shape and compile once (a shape of each length would compile each operation again).
    rates = np.asarray(jax.vmap(schedule.learning_rate_at)(jnp.arange(max(64, total_steps))))[:total_steps]
    return rates, beyond_run(schedule, total_steps)


# Boundaries at steps 20 and 50: once in epochs (10 steps each), once in steps (1 step an epoch, so that the run
# can end on either side of each boundary by one step).
PIECEWISE_RUNS = [("epoch", "[2,5]", 10, total) for total in (10, 20, 30, 50, 60)] + \
                 [("step", "[20,50]", 1, total) for total in (20, 21, 50, 51)]


@pytest.mark.parametrize("unit, boundaries, steps_per_epoch, total_steps", PIECEWISE_RUNS)
def test_a_piecewise_boundary_is_warned_about_exactly_when_its_value_is_never_applied(unit, boundaries,
                                                                                      steps_per_epoch, total_steps):
    rates, warnings = rates_of_a_run("piecewise_constant", total_steps, f"schedule.unit={unit}",
                                     f"schedule.boundaries={boundaries}", "schedule.values=[0.3,0.2,0.1]",
                                     steps_per_epoch=steps_per_epoch)
    for i, value in enumerate((0.2, 0.1)):
        never_applied = not np.any(np.isclose(rates, value))
        named = [w for w in warnings if f"boundaries[{i}]" in w]
        assert bool(named) == never_applied, (total_steps, warnings)
        if named:
            typed = {"epoch": f"={(2, 5)[i]} epochs", "step": f"={(20, 50)[i]} steps"}[unit]
            assert f"schedule.boundaries[{i}]{typed}" in named[0] and f"values[{i + 1}]={value:g}" in named[0]


@pytest.mark.parametrize("total_steps", [10, 20, 21, 30])
@pytest.mark.parametrize("name, fallen", [("exponential", LR0 / 10), ("power", LR0 / 2)])
def test_a_decay_is_warned_about_exactly_when_the_run_ends_before_its_first_decay_point(name, fallen, total_steps):
    # exponential: lr0 * 0.1^(t/s), divided by 10 at s; power (c = 1): lr0 / (1 + t/s), halved at s.
    rates, warnings = rates_of_a_run(name, total_steps, "schedule.decay_every=20", "schedule.unit=step",
                                     steps_per_epoch=1)
    assert bool(warnings) == bool(rates.min() > fallen * (1 + 1e-6)), (total_steps, rates.min(), warnings)
    if warnings:
        assert "schedule.decay_every=20 steps" in warnings[0]
        assert f"(the rate at step {total_steps - 1} is {rates[-1]:.3g})" in warnings[0]


@pytest.mark.parametrize("total_steps", [10, 20, 21, 22, 40])
def test_a_cosine_warm_up_is_warned_about_exactly_when_the_run_ends_before_the_requested_peak(total_steps):
    rates, warnings = rates_of_a_run("cosine", total_steps, "schedule.warmup=20", "schedule.unit=step",
                                     steps_per_epoch=1)
    # The definition as configured: linear from 0 to lr0 over 20 steps, then the cosine to the run's end.
    requested = optax.warmup_cosine_decay_schedule(0.0, LR0, 20, max(total_steps, 21))
    reached = max(float(requested(t)) for t in range(total_steps)) >= LR0 * (1 - 1e-6)
    assert bool(warnings) == (not reached), (total_steps, warnings)
    if warnings:  # ... and the built schedule cut the warm-up to end at the last step
        assert "schedule.warmup=20 steps" in warnings[0]
        assert rates[-1] == pytest.approx(LR0) and np.all(np.diff(rates) > 0)


def test_a_cosine_warm_up_in_epochs_is_converted_to_steps():
    cfg = compose_config("schedule=cosine", "schedule.warmup=2", "trainer.epochs=2")
    [warning] = beyond_run(build_schedule(cfg, 10), 20)
    assert warning.startswith("schedule.warmup=2 epochs falls at step 20, but the schedule's last step is 19:")


@pytest.mark.parametrize("total_steps", [1, 5, 7, 10, 11, 20, 21])
def test_one_cycle_is_warned_about_exactly_when_the_run_ends_before_its_peak_or_its_final_annealing(total_steps):
    rates, warnings = rates_of_a_run("one_cycle", total_steps, "schedule.warmup_fraction=0.9",
                                     "schedule.final_fraction=0.05", steps_per_epoch=1)
    low = LR0 * compose_config("schedule=one_cycle").schedule.start_fraction
    still_rising = bool(np.all(np.diff(rates) > 0) and rates[-1] < LR0 * (1 - 1e-6))
    never_annealed = bool(rates.min() >= low * (1 - 1e-6))
    assert any("the peak" in w for w in warnings) == still_rising, (total_steps, rates, warnings)
    assert any("the final annealing" in w for w in warnings) == never_annealed, (total_steps, rates, warnings)


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5])
def test_plateau_is_warned_about_exactly_when_no_reduction_can_reach_a_step_of_the_run(epochs, tmp_path):
    # The earliest reduction: every epoch's validation loss flat, as in train() above.
    applied = train(tmp_path / "lr_trace.jsonl", epochs, "optimizer=sgd", "schedule=plateau", "schedule.patience=2")
    cfg = compose_shared("schedule=plateau", "schedule.patience=2", f"trainer.epochs={epochs}")
    warnings = beyond_run(build_schedule(cfg, STEPS), epochs * STEPS)
    assert bool(warnings) == bool(min(applied) == pytest.approx(LR0)), (epochs, applied, warnings)
    assert all("schedule.patience=2" in w for w in warnings)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_file_inside_a_default_run_gives_no_warning(name):
    cfg = compose_config(f"schedule={name}")  # trainer.epochs as shipped
    assert beyond_run(build_schedule(cfg, 45), 45 * cfg.trainer.epochs) == []


def test_a_warning_is_one_line_naming_the_setting_the_step_and_what_is_missed():
    cfg = compose_config("schedule=piecewise_constant", "trainer.epochs=4")  # boundaries at epochs 5 and 15
    [first, second] = beyond_run(build_schedule(cfg, 10), 40)
    assert first == ("schedule.boundaries[0]=5 epochs falls at step 50, but the schedule's last step is 39: "
                     "values[1]=0.005 is never used (the rate at step 39 is 0.01)")
    assert "\n" not in second and "values[2]=0.001 is never used" in second


# The report's learning_rate.png

def fake_run(path: Path, overrides: list[str], trace: list[dict] | None) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 4, "train_loss": 1.0, "val_loss": 1.0,
                                                    "val_accuracy": 0.5}) + "\n")
    (path / "summary.json").write_text(json.dumps({"status": "completed", "best_val_accuracy": 0.5}))
    if trace is not None:
        (path / "lr_trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trace))
    return path


def test_the_report_draws_the_applied_rate_of_each_run_with_a_trace(tmp_path):
    trace = [{"epoch": 1, "step": 0, "lr": [0.1, 0.05]}, {"epoch": 2, "step": 2, "lr": [0.01, 0.001]}]
    fake_run(tmp_path / "a", ["schedule=exponential"], trace)
    fake_run(tmp_path / "b", ["schedule=constant"], None)
    out = write_report([tmp_path], plots=True)
    assert matplotlib.image.imread(out / "learning_rate.png").shape[0] > 100
    runs = [load_run(p) for p in find_run_dirs(tmp_path)]
    label_runs(runs)
    assert learning_rate_line(runs[0]) == ("schedule=exponential", [0, 1, 2, 3], [0.1, 0.05, 0.01, 0.001])
    assert learning_rate_line(runs[1])[1:] == ([], [])


def test_no_run_with_a_trace_means_no_learning_rate_png(tmp_path):
    fake_run(tmp_path / "a", ["schedule=constant"], None)
    assert not (write_report([tmp_path], plots=True) / "learning_rate.png").exists()


@pytest.mark.parametrize("rates, scale", [([0.1, 0.05, 0.02], "linear"), ([0.1, 0.01, 0.001], "log"),
                                          ([0.0, 0.1, 0.05], "linear")])
def test_the_rate_axis_is_logarithmic_when_the_rates_span_more_than_a_factor_of_10(rates, scale, tmp_path,
                                                                                    monkeypatch):
    import matplotlib.pyplot as plt

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_learning_rate([("run", [0, 1, 2], rates)], [], tmp_path / "learning_rate.png")
    assert closed[0].axes[0].get_yscale() == scale
