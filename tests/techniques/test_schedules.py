"""Tests for runner/techniques/schedules.py: each schedule against its formula, built from its YAML file.

Schedules are built as the runner builds them (`build_schedule` on the composed config) with
STEPS_PER_EPOCH steps per epoch, and each duration is given once in epochs and once in steps.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from runner.cli.relations import validate
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from runner.techniques.schedules import Schedule
from runner.training.build import build_schedule
from tests.conftest import compose_config

STEPS_PER_EPOCH = 10
LR0 = 0.1


def schedule(name: str, *overrides: str, epochs: int = 10) -> Schedule:
    cfg = compose_config(f"schedule={name}", f"optimizer.learning_rate={LR0}", f"trainer.epochs={epochs}",
                         *overrides)
    return build_schedule(cfg, STEPS_PER_EPOCH)


def lr(s: Schedule, step: int) -> float:
    return float(s.learning_rate_at(jnp.asarray(step)))


def in_epochs_and_in_steps(key: str, epochs: int) -> list:
    """The same duration, `key` = `epochs` epochs, once with unit=epoch and once with unit=step."""
    return [pytest.param((f"schedule.{key}={epochs}", "schedule.unit=epoch"), id="epoch"),
            pytest.param((f"schedule.{key}={epochs * STEPS_PER_EPOCH}", "schedule.unit=step"), id="step")]


def test_constant_is_lr0_at_every_step():
    s = schedule("constant")
    assert [lr(s, t) for t in (0, 1, 55, 100)] == pytest.approx([LR0] * 4, rel=1e-6)
    assert s.momentum_at is None and s.plateau is None


@pytest.mark.parametrize("duration", in_epochs_and_in_steps("decay_every", 2))
@pytest.mark.parametrize("c", [1.0, 2.0])
def test_power_is_lr0_over_1_plus_t_over_s_to_the_c(duration, c):
    s = schedule("power", *duration, f"schedule.power={c}")
    steps = 2 * STEPS_PER_EPOCH
    for t in (0, 5, steps, 3 * steps, 100):
        assert lr(s, t) == pytest.approx(LR0 / (1 + t / steps) ** c, rel=1e-6), t
    assert lr(s, steps) == pytest.approx(LR0 / 2**c, rel=1e-6)


@pytest.mark.parametrize("duration", in_epochs_and_in_steps("decay_every", 2))
def test_exponential_is_lr0_times_0_1_to_the_t_over_s(duration):
    s = schedule("exponential", *duration)
    steps = 2 * STEPS_PER_EPOCH
    for t in (0, 7, steps, 2 * steps, 50):
        assert lr(s, t) == pytest.approx(LR0 * 0.1 ** (t / steps), rel=1e-5), t
    assert lr(s, steps) == pytest.approx(LR0 / 10, rel=1e-5)  # divided by 10 every s steps
    assert lr(s, steps // 2) == pytest.approx(LR0 / math.sqrt(10), rel=1e-5)


@pytest.mark.parametrize("unit, boundaries", [("epoch", "[2,5]"), ("step", "[20,50]")])
def test_piecewise_constant_switches_value_exactly_at_each_boundary(unit, boundaries):
    s = schedule("piecewise_constant", f"schedule.unit={unit}", f"schedule.boundaries={boundaries}",
                 "schedule.values=[0.3,0.2,0.1]")
    expected = {0: 0.3, 19: 0.3, 20: 0.2, 21: 0.2, 49: 0.2, 50: 0.1, 100: 0.1}
    assert {t: lr(s, t) for t in expected} == pytest.approx(expected, rel=1e-6)


def test_piecewise_constant_needs_one_more_value_than_boundaries():
    with pytest.raises(UserError, match="schedule.values"):
        schedule("piecewise_constant", "schedule.boundaries=[2,5]", "schedule.values=[0.3,0.2]")


@pytest.mark.parametrize("duration", in_epochs_and_in_steps("warmup", 2))
def test_cosine_warms_up_linearly_from_0_then_decays_as_a_half_cosine(duration):
    final = 0.1
    s = schedule("cosine", *duration, f"schedule.final_fraction={final}")
    warmup, total = 2 * STEPS_PER_EPOCH, 10 * STEPS_PER_EPOCH
    for t in (0, 5, 10, 15, warmup):  # linear from 0 to lr0 over the warm-up
        assert lr(s, t) == pytest.approx(LR0 * t / warmup, rel=1e-5, abs=1e-9), t
    for t in (warmup, 30, 60, 90, total):
        progress = (t - warmup) / (total - warmup)
        expected = LR0 * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lr(s, t) == pytest.approx(expected, rel=1e-5), t
    assert lr(s, (warmup + total) // 2) == pytest.approx(LR0 * (1 + final) / 2, rel=1e-5)
    assert lr(s, total) == pytest.approx(LR0 * final, rel=1e-5)


def test_one_cycle_rises_to_lr0_at_warmup_fraction_and_anneals_to_its_final_value():
    cfg = compose_config("schedule=one_cycle").schedule
    s = schedule("one_cycle", epochs=20)
    total = 20 * STEPS_PER_EPOCH
    peak = round(cfg.warmup_fraction * total)
    low = LR0 * cfg.start_fraction
    steps = np.arange(total + 1)
    rates = np.asarray(s.learning_rate_at(jnp.asarray(steps)))
    momenta = np.asarray(s.momentum_at(jnp.asarray(steps)))

    assert rates[0] == pytest.approx(low, rel=1e-6)
    assert int(np.argmax(rates)) == peak and rates[peak] == pytest.approx(LR0, rel=1e-6)
    # Linear up, then down over the same span.
    np.testing.assert_allclose(rates[: peak + 1], np.linspace(low, LR0, peak + 1), rtol=1e-5)
    np.testing.assert_allclose(rates[peak: 2 * peak + 1], np.linspace(LR0, low, peak + 1), rtol=1e-5)
    # The final annealing ends at lr0 * start_fraction * final_scale.
    assert rates[-1] == pytest.approx(low * cfg.final_scale, rel=1e-5)
    assert np.all(np.diff(rates[2 * peak:]) <= 0)
    # Momentum mirrors the rate: max -> min at the peak of the rate -> max.
    assert momenta[0] == pytest.approx(cfg.max_momentum, rel=1e-6)
    assert int(np.argmin(momenta)) == peak and momenta[peak] == pytest.approx(cfg.min_momentum, rel=1e-6)
    assert momenta[2 * peak] == pytest.approx(cfg.max_momentum, rel=1e-6)
    assert momenta[-1] == pytest.approx(cfg.max_momentum, rel=1e-6)


def _plateau_scales(s: Schedule, val_losses) -> list[float]:
    """The plateau's scale after each epoch, stepped once per epoch on that epoch's validation loss."""
    state = s.plateau.init({"w": jnp.zeros(3)})
    scales = []
    for loss in val_losses:
        _, state = s.plateau.update(None, state, value=jnp.asarray(loss))
        scales.append(float(state.scale))
    return scales


def test_plateau_multiplies_lr_by_factor_after_exactly_patience_epochs_without_improvement():
    cfg = compose_config("schedule=plateau").schedule
    s = schedule("plateau")
    assert lr(s, 0) == lr(s, 1000) == pytest.approx(LR0)  # the rate itself stays lr0; the scale changes
    improving = [1.0, 0.9, 0.8]
    flat = [0.8] * (2 * cfg.patience)
    scales = _plateau_scales(s, improving + flat)
    # The drop comes at the patience-th flat epoch, and again `patience` flat epochs later.
    expected = [1.0] * (len(improving) + cfg.patience - 1) + [cfg.factor] * cfg.patience + [cfg.factor**2]
    assert scales == pytest.approx(expected)


def test_plateau_counts_from_the_last_improvement():
    s = schedule("plateau", "schedule.patience=2", "schedule.factor=0.1")
    # A flat epoch, an improvement, then two flat epochs: the count restarts at the improvement.
    scales = _plateau_scales(s, [1.0, 1.0, 0.5, 0.5, 0.5])
    assert scales == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])


def test_plateau_ignores_improvements_smaller_than_rtol():
    s = schedule("plateau", "schedule.patience=2", "schedule.rtol=0.01")
    scales = _plateau_scales(s, [1.0, 0.995, 0.991])  # each less than 1% better than the best
    assert scales == pytest.approx([1.0, 1.0, 0.5])


# The schedules whose durations take a unit: those whose YAML file has a `unit` key.
UNIT_SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml")
                        if "unit" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("name", UNIT_SCHEDULES)
def test_an_unknown_unit_is_a_user_error_at_validation(name):
    with pytest.raises(UserError, match="schedule.unit"):
        validate(compose_config(f"schedule={name}", "schedule.unit=minute"))


@pytest.mark.parametrize("name", UNIT_SCHEDULES)
def test_an_unknown_unit_is_a_user_error_when_the_schedule_is_built(name):
    with pytest.raises(UserError, match="schedule.unit"):
        schedule(name, "schedule.unit=minute")
