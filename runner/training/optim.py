"""The optimizer: one optax.chain in a fixed order.

    clip (the clip group)  ->  optimizer (lr = schedule)  ->  plateau scale  ->  regularizer transforms (max-norm)

Clipping sees raw gradients, so its threshold means the same for every optimizer; projections come last
so the constraint holds on the parameters actually stored after the step.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau

from runner.errors import UserError
from runner.techniques.optimizers import FtrlState
from runner.techniques.schedules import Schedule

MOMENTUM_NAMES = ("b1", "momentum")  # how optax spells the momentum coefficient, Adam family first
# The chain's copy of optax's reduce_on_plateau only multiplies each step by its state's scale: it would decide
# after this many steps, which no run reaches. The decision is taken once an epoch on the validation loss
# (runner/training/handlers.py, Plateau), on the same state, by the schedule's own reduce_on_plateau.
NEVER_DECIDES = 2**31 - 1


def plateau_scaling() -> optax.GradientTransformationExtraArgs:
    """optax's reduce_on_plateau as the chain's scaling step; its state is what the epoch-end decision updates."""
    return reduce_on_plateau(accumulation_size=NEVER_DECIDES)


def plateau_state(opt_state: Any) -> ReduceLROnPlateauState | None:
    """The reduce_on_plateau state inside an optimizer state, wherever the chain nests it; None if none."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(s)]
    return found[0] if found else None


def with_plateau_state(opt_state: Any, new: ReduceLROnPlateauState) -> Any:
    """The optimizer state with its reduce_on_plateau state replaced by `new`."""
    return jax.tree_util.tree_map(lambda s: new if _is_plateau(s) else s, opt_state, is_leaf=_is_plateau)


def _is_plateau(node: Any) -> bool:
    return isinstance(node, ReduceLROnPlateauState)


# The states whose count a learning-rate (or momentum) schedule is read at; Adam's own count is its moments' age.
# FTRL reads its rate at its own count (runner/techniques/optimizers.py), so a stage continues it like the others.
_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectStatefulHyperparamsState, FtrlState)


def schedule_count(opt_state: Any) -> jax.Array | None:
    """The step count the chain's learning-rate schedule is read at.

    scale_by_schedule or inject_hyperparams counts the updates, one per step; a stage's fresh optimizer state
    continues it from the run's step (`continue_schedule`). Where the chain has neither (FTRL keeps its own),
    any other counting state. None if nothing in the chain counts (the plateau's count, which counts its
    accumulated values, is left out).
    """
    found = [node.count for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_counts)
             if _counts(node) and not _is_plateau(node)]
    scheduled = [node.count for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_schedule)
                 if _is_schedule(node)]
    return scheduled[0] if scheduled else found[0] if found else None


def rate_inputs(opt_state: Any, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(count, scale): the count the chain's schedule is read at next (`schedule_count`; the run's `step` where
    nothing in the chain counts) and the plateau's scale (1 without one): all the applied rate depends on."""
    count, plateau = schedule_count(opt_state), plateau_state(opt_state)
    return (step if count is None else count), (jnp.float32(1.0) if plateau is None else plateau.scale)


def applied_rate(learning_rate_at: optax.Schedule, count: Any, scale: Any, offsets: Any = 0) -> jax.Array:
    """The learning rate the optimizer applies `offsets` updates after the one it makes next, given `rate_inputs`:
    the schedule at the count, times the scale. The one formula of the applied rate: metrics.jsonl's `lr` (the
    rate of an epoch's first step), lr_trace.jsonl (every step's), a replicas run's members."""
    counts = jnp.asarray(count) + jnp.asarray(offsets)
    return jax.vmap(learning_rate_at)(jnp.atleast_1d(counts)).reshape(jnp.shape(counts)) * scale


def written_rate(rate: Any) -> float:
    """A float32 rate as metrics.jsonl and lr_trace.jsonl write it: its shortest decimal form (0.001, not
    0.0010000000474974513), so that equal rates read back as equal floats."""
    return float(str(np.float32(rate)))


def continue_schedule(opt_state: Any, step: jax.Array) -> Any:
    """`opt_state` with its schedules' counts at `step`: a new stage's fresh optimizer state (fresh moments, so
    Adam's bias correction restarts) goes on along the run's schedule instead of starting it again."""
    def at_step(node: Any) -> Any:
        return node._replace(count=jnp.asarray(step, node.count.dtype)) if _is_schedule(node) else node

    return jax.tree_util.tree_map(at_step, opt_state, is_leaf=_is_schedule)


def _is_schedule(node: Any) -> bool:
    return isinstance(node, _SCHEDULE_STATES)


def _counts(node: Any) -> bool:
    return isinstance(node, tuple) and "count" in getattr(node, "_fields", ())


def build_optimizer(optimizer_cfg: Mapping[str, Any], schedule: Schedule,
                    clip: optax.GradientTransformation | None = None,
                    transform: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """The whole update rule from the optimizer's config (`_target_` and its arguments)."""
    kwargs = {k: v for k, v in optimizer_cfg.items() if not k.startswith("_")}
    kwargs.pop("learning_rate", None)
    from hydra.utils import get_method  # reading the config: the loop and the train step import this module too

    factory = get_method(optimizer_cfg["_target_"])
    kwargs["learning_rate"] = schedule.learning_rate_at
    if schedule.momentum_at is not None:
        name = next((n for n in MOMENTUM_NAMES if n in inspect.signature(factory).parameters), None)
        if name is None or (name == "momentum" and not kwargs.get("momentum")):
            raise UserError(f"schedule: cycles momentum, but optimizer {optimizer_cfg['_target_']} has none; "
                            f"valid: an optimizer with a momentum argument ({' or '.join(MOMENTUM_NAMES)} set), "
                            "e.g. optimizer=adam or optimizer=momentum")
        kwargs[name] = schedule.momentum_at
        # inject_hyperparams evaluates schedules given for any hyperparameter at each step.
        optimizer = optax.inject_hyperparams(factory)(**kwargs)
    else:
        optimizer = factory(**kwargs)
    parts = [clip or optax.identity(), optimizer]
    if schedule.plateau is not None:  # performance scheduling scales the step here, before any projection
        parts.append(plateau_scaling())
    if transform is not None:
        parts.append(transform)
    return optax.chain(*parts)
