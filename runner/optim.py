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
import optax
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau
from hydra.utils import get_method

from runner.errors import UserError
from runner.techniques.schedules import Schedule

MOMENTUM_NAMES = ("b1", "momentum")  # how optax spells the momentum coefficient, Adam family first
# The chain's copy of optax's reduce_on_plateau only multiplies each step by its state's scale: it would decide
# after this many steps, which no run reaches. The decision is taken once an epoch on the validation loss
# (runner/handlers.py, Plateau), on the same state, by the schedule's own reduce_on_plateau.
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
_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectStatefulHyperparamsState)


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
