"""Learning-rate schedules, configured in epochs or steps, exact in steps inside.

Every factory takes the base learning rate (`optimizer.learning_rate`), `steps_per_epoch` and
`total_steps` (injected by the runner) plus its own YAML arguments, and returns a `Schedule`.
Durations given with `unit: epoch` are converted to steps here, once.

Steps are counted as the optimizer counts them: the k-th update (k = 0, 1, ...) applies the rate at step k, so a
run of T steps applies the rates of steps 0..T-1. Each factory also lists its landmarks, the steps where its
shape changes (a boundary, a peak, a first decay); `beyond_run` names those a run never reaches, in one line each.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import optax
from optax.contrib import reduce_on_plateau

from runner.errors import UserError


class Landmark(NamedTuple):
    """A point where a schedule's shape changes, as configured."""

    setting: str  # what it is, with the config that puts it there: "schedule.boundaries[1]=15 epochs"
    step: int  # the first step whose rate shows the change
    missed: str  # what a run that ends before `step` never gets: "values[2]=0.001 is never used"


class Schedule(NamedTuple):
    """What a schedule hands the optimizer."""

    learning_rate_at: optax.Schedule  # step -> learning rate (optimizer.learning_rate is the base rate, a number)
    momentum_at: optax.Schedule | None = None  # one-cycle cycles momentum inversely to the rate
    plateau: optax.GradientTransformationExtraArgs | None = None  # stepped once per epoch on val loss
    landmarks: tuple[Landmark, ...] = ()  # what `beyond_run` checks


def beyond_run(schedule: Schedule, total_steps: int) -> list[str]:
    """One line per landmark of `schedule` that a run of `total_steps` steps (the rates of steps
    0..total_steps-1) never reaches, with the rate of its last step; [] when the whole schedule fits the run.

    `total_steps` is the whole run's: a stage's fresh optimizer state goes on along the run's schedule
    (runner.training.optim.continue_schedule), so the schedule sees every step of every stage."""
    last = total_steps - 1
    return [f"{mark.setting} falls at step {mark.step}, but the schedule's last step is {last}: {mark.missed} "
            f"(the rate at step {last} is {float(schedule.learning_rate_at(last)):.3g})"
            for mark in schedule.landmarks if mark.step > last]


def _as_typed(key: str, duration: float, unit: str) -> str:
    """A duration setting as the user wrote it: `schedule.decay_every=10 epochs`."""
    return f"schedule.{key}={duration:g} {unit}{'s' if duration != 1 else ''}"


def _to_steps(duration: float, unit: str, steps_per_epoch: int) -> int:
    if unit not in ("epoch", "step"):
        raise UserError(f"schedule.unit: must be epoch or step, got {unit!r}")
    return max(1, round(duration * steps_per_epoch)) if unit == "epoch" else max(1, int(duration))


def shaped_by_run_length(factory):
    """Marks a schedule whose shape depends on `total_steps`: a resumed run may not change its epochs."""
    factory.uses_run_length = True
    return factory


def constant(learning_rate, steps_per_epoch, total_steps) -> Schedule:
    """lr(t) = lr0."""
    del steps_per_epoch, total_steps
    return Schedule(optax.constant_schedule(learning_rate))


def power(learning_rate, steps_per_epoch, total_steps, decay_every=10.0, power=1.0, unit="epoch") -> Schedule:
    """Power scheduling: lr(t) = lr0 / (1 + t/s)^c."""
    del total_steps
    s = _to_steps(decay_every, unit, steps_per_epoch)
    return Schedule(lambda t: learning_rate / (1.0 + t / s) ** power,
                    landmarks=(Landmark(_as_typed("decay_every", decay_every, unit), s,
                                        f"the rate never falls to lr0/2^{power:g}"),))


def exponential(learning_rate, steps_per_epoch, total_steps, decay_every=10.0, unit="epoch") -> Schedule:
    """Exponential scheduling: lr(t) = lr0 * 0.1^(t/s), divided by 10 every s."""
    del total_steps
    s = _to_steps(decay_every, unit, steps_per_epoch)
    return Schedule(optax.exponential_decay(learning_rate, transition_steps=s, decay_rate=0.1),
                    landmarks=(Landmark(_as_typed("decay_every", decay_every, unit), s,
                                        "the rate is never divided by 10"),))


def piecewise_constant(learning_rate, steps_per_epoch, total_steps, boundaries=(5, 15),
                       values=(1e-2, 5e-3, 1e-3), unit="epoch") -> Schedule:
    """Piecewise constant: values[i] for boundaries[i-1] <= t < boundaries[i] (values replace lr0)."""
    del learning_rate, total_steps
    if len(values) != len(boundaries) + 1:
        raise UserError(f"schedule.values: needs len(boundaries) + 1 = {len(boundaries) + 1} entries, "
                        f"got {len(values)}")
    steps = [_to_steps(b, unit, steps_per_epoch) for b in boundaries]
    bounds, table = jnp.asarray(steps), jnp.asarray(values, dtype=jnp.float32)
    # values[i + 1] is applied from step boundaries[i] on
    landmarks = tuple(Landmark(_as_typed(f"boundaries[{i}]", b, unit), step, f"values[{i + 1}]={values[i + 1]:g} "
                               "is never used") for i, (b, step) in enumerate(zip(boundaries, steps)))
    return Schedule(lambda t: table[jnp.sum(t >= bounds)], landmarks=landmarks)


def plateau(learning_rate, steps_per_epoch, total_steps, factor=0.5, patience=5, rtol=1e-4,
            cooldown=0, min_scale=0.0) -> Schedule:
    """Performance scheduling: multiply lr by `factor` when val loss has not improved for `patience` epochs."""
    del total_steps
    # The first epoch sets the best loss; `patience` epochs without improvement later, at the end of epoch
    # patience + 1, comes the earliest reduction, applied from that epoch's last step + 1 on.
    earliest = Landmark(f"the earliest reduction (schedule.patience={patience})", (patience + 1) * steps_per_epoch,
                        "the rate is never reduced")
    return Schedule(optax.constant_schedule(learning_rate),
                    plateau=reduce_on_plateau(factor=factor, patience=patience, rtol=rtol,
                                              cooldown=cooldown, min_scale=min_scale),
                    landmarks=(earliest,))


@shaped_by_run_length
def one_cycle(learning_rate, steps_per_epoch, total_steps, start_fraction=0.1, warmup_fraction=0.45,
              final_fraction=0.1, final_scale=0.01, max_momentum=0.95, min_momentum=0.85) -> Schedule:
    """1cycle (Smith 2018): lr rises linearly from lr0*start_fraction to lr0 (the maximum) over the first
    warmup_fraction of training, falls back to lr0*start_fraction until the last final_fraction, then anneals
    to lr0*start_fraction*final_scale; momentum moves the opposite way, max -> min -> max."""
    del steps_per_epoch
    if not 0 < warmup_fraction < 1 - final_fraction <= 1:
        raise UserError("schedule: one_cycle needs 0 < warmup_fraction < 1 - final_fraction <= 1, got "
                        f"warmup_fraction={warmup_fraction}, final_fraction={final_fraction}")
    knots = jnp.asarray([0.0, warmup_fraction * total_steps, (1.0 - final_fraction) * total_steps,
                         float(total_steps)])
    low = learning_rate * start_fraction
    rates = jnp.asarray([low, learning_rate, low, low * final_scale])
    momenta = jnp.asarray([max_momentum, min_momentum, max_momentum, max_momentum])
    # The rate stops rising at the first step >= the peak and is annealed at every step after the annealing
    # starts (rounded: 0.45 * 20 must be step 9, not 9.000000000000002).
    peak, annealing = round(warmup_fraction * total_steps, 9), round((1.0 - final_fraction) * total_steps, 9)
    landmarks = (Landmark(f"the peak (schedule.warmup_fraction={warmup_fraction:g})", math.ceil(peak),
                          "the rate never reaches lr0"),)
    if final_fraction > 0:
        landmarks += (Landmark(f"the final annealing (schedule.final_fraction={final_fraction:g})",
                               math.floor(annealing) + 1, "the rate is never annealed below lr0*start_fraction"),)
    return Schedule(lambda t: jnp.interp(t, knots, rates), momentum_at=lambda t: jnp.interp(t, knots, momenta),
                    landmarks=landmarks)


@shaped_by_run_length
def cosine(learning_rate, steps_per_epoch, total_steps, warmup=1.0, final_fraction=0.0, unit="epoch") -> Schedule:
    """Linear warm-up from 0 to lr0 over `warmup`, then cosine decay to lr0*final_fraction at step total_steps
    (the step after the last update). A warm-up longer than the run is cut to end at the run's last step."""
    wanted = _to_steps(warmup, unit, steps_per_epoch) if warmup else 0
    warmup_steps = min(wanted, total_steps - 1)
    landmarks = (Landmark(_as_typed("warmup", warmup, unit), wanted,
                          "the warm-up is cut to end at the last step, and no decay follows"),) if warmup else ()
    return Schedule(optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * final_fraction),
        landmarks=landmarks)
