"""The optimizer: one optax.chain in a fixed order.

    clip (trainer.clip)  ->  optimizer (lr = schedule)  ->  regularizer transforms (max-norm projection)

Clipping sees raw gradients, so its threshold means the same for every optimizer; projections come last
so the constraint holds on the parameters actually stored after the step.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import optax
from hydra.utils import get_method

from runner.errors import UserError
from runner.techniques.clipping import clip_by_norm
from runner.techniques.schedules import Schedule

CLIPPERS = {"value": optax.clip, "norm": clip_by_norm, "global_norm": optax.clip_by_global_norm}
MOMENTUM_NAMES = ("b1", "momentum")  # how optax spells the momentum coefficient, Adam family first


def build_optimizer(optimizer_cfg: Mapping[str, Any], schedule: Schedule, clip: str = "none",
                    clip_threshold: float = 1.0,
                    transform: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """The whole update rule from the optimizer's config (`_target_` and its arguments)."""
    kwargs = {k: v for k, v in optimizer_cfg.items() if not k.startswith("_")}
    kwargs.pop("learning_rate", None)
    factory = get_method(optimizer_cfg["_target_"])
    kwargs["learning_rate"] = schedule.learning_rate
    if schedule.momentum is not None:
        name = next((n for n in MOMENTUM_NAMES if n in inspect.signature(factory).parameters), None)
        if name is None or (name == "momentum" and not kwargs.get("momentum")):
            raise UserError(f"schedule: cycles momentum, but optimizer {optimizer_cfg['_target_']} has none; "
                            "use optimizer=momentum|nesterov|adam|adamax|nadam|adamw")
        kwargs[name] = schedule.momentum
        # inject_hyperparams evaluates schedules given for any hyperparameter at each step.
        optimizer = optax.inject_hyperparams(factory)(**kwargs)
    else:
        optimizer = factory(**kwargs)
    parts = [] if clip == "none" else [CLIPPERS[clip](clip_threshold)]
    parts.append(optimizer)
    if transform is not None:
        parts.append(transform)
    return optax.chain(*parts) if len(parts) > 1 else optimizer
