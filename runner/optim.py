"""The optimizer: one optax.chain in a fixed order.

    clip (the clip group)  ->  optimizer (lr = schedule)  ->  regularizer transforms (max-norm projection)

Clipping sees raw gradients, so its threshold means the same for every optimizer; projections come last
so the constraint holds on the parameters actually stored after the step.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import optax
from hydra.utils import get_method

from runner.errors import UserError
from runner.techniques.schedules import Schedule

MOMENTUM_NAMES = ("b1", "momentum")  # how optax spells the momentum coefficient, Adam family first


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
    if transform is not None:
        parts.append(transform)
    return optax.chain(*parts)
