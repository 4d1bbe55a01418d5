"""Learning-rate schedules, configured in epochs or steps, exact in steps inside.

Every factory takes the base learning rate (`optimizer.learning_rate`), `steps_per_epoch` and
`total_steps` (injected by the runner) plus its own YAML arguments, and returns a `Schedule`.
Durations given with `unit: epoch` are converted to steps here, once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax
from optax.contrib import reduce_on_plateau

from runner.errors import UserError


class Schedule(NamedTuple):
    """What a schedule hands the optimizer."""

    learning_rate_at: optax.Schedule  # step -> learning rate (optimizer.learning_rate is the base rate, a number)
    momentum_at: optax.Schedule | None = None  # one-cycle cycles momentum inversely to the rate
    plateau: optax.GradientTransformationExtraArgs | None = None  # stepped once per epoch on val loss


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
    return Schedule(lambda t: learning_rate / (1.0 + t / s) ** power)


def exponential(learning_rate, steps_per_epoch, total_steps, decay_every=10.0, unit="epoch") -> Schedule:
    """Exponential scheduling: lr(t) = lr0 * 0.1^(t/s), divided by 10 every s."""
    del total_steps
    s = _to_steps(decay_every, unit, steps_per_epoch)
    return Schedule(optax.exponential_decay(learning_rate, transition_steps=s, decay_rate=0.1))


def piecewise_constant(learning_rate, steps_per_epoch, total_steps, boundaries=(5, 15),
                       values=(1e-2, 5e-3, 1e-3), unit="epoch") -> Schedule:
    """Piecewise constant: values[i] for boundaries[i-1] <= t < boundaries[i] (values replace lr0)."""
    del learning_rate, total_steps
    if len(values) != len(boundaries) + 1:
        raise UserError(f"schedule.values: needs len(boundaries) + 1 = {len(boundaries) + 1} entries, "
                        f"got {len(values)}")
    bounds = jnp.asarray([_to_steps(b, unit, steps_per_epoch) for b in boundaries])
    table = jnp.asarray(values, dtype=jnp.float32)
    return Schedule(lambda t: table[jnp.sum(t >= bounds)])


def plateau(learning_rate, steps_per_epoch, total_steps, factor=0.5, patience=5, rtol=1e-4,
            cooldown=0, min_scale=0.0) -> Schedule:
    """Performance scheduling: multiply lr by `factor` when val loss has not improved for `patience` epochs."""
    del steps_per_epoch, total_steps
    return Schedule(optax.constant_schedule(learning_rate),
                    plateau=reduce_on_plateau(factor=factor, patience=patience, rtol=rtol,
                                              cooldown=cooldown, min_scale=min_scale))


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
    return Schedule(lambda t: jnp.interp(t, knots, rates), momentum_at=lambda t: jnp.interp(t, knots, momenta))


@shaped_by_run_length
def cosine(learning_rate, steps_per_epoch, total_steps, warmup=1.0, final_fraction=0.0, unit="epoch") -> Schedule:
    """Linear warm-up from 0 to lr0 over `warmup`, then cosine decay to lr0*final_fraction at the last step."""
    warmup_steps = min(_to_steps(warmup, unit, steps_per_epoch), total_steps - 1) if warmup else 0
    return Schedule(optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * final_fraction))
