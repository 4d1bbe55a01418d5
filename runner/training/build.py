"""Where config choices become objects: one function per group, all called from `build_parts`."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig

from runner.config.checks import strip_specs
from runner.errors import UserError, first_line
from runner.techniques.regularizers import Regularizer, combine
from runner.techniques.schedules import Schedule
from runner.training.optim import build_optimizer
from runner.training.stages import Stage
from runner.training.train import Parts


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, with a mistake found while building reported as the user's, by key."""
    try:
        return hydra_instantiate(strip_specs(node), _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise UserError(f"{key}: {first_line(e.__cause__ or e)}") from None


def build_regularizer(cfg: DictConfig) -> Regularizer:
    """All selected regularizers merged into one record of hooks."""
    return combine([instantiate(node, f"regularizer.{name}") for name, node in (cfg.get("regularizer") or {}).items()])


def build_model(cfg: DictConfig, num_classes: int, regularizer: Regularizer) -> nn.Module:
    """The model named by the model group, given the chosen initializer, activation, normalization and dropout."""
    layer = cfg.normalization.layer
    model, head = strip_specs(cfg.model), {}
    if "head_init" in model:  # Net's; a model of one's own may have no such field, and is passed none
        # a node of the initializer group (`+initializer@model.head_init=glorot_uniform`), built as the hidden
        # layers' is below; null: the head starts as the hidden layers do
        node = model.pop("head_init")
        head["head_init"] = None if node is None else instantiate(node, "model.head_init")
    # Partial, then called here: Hydra would try to turn the module arguments below into configs.
    make = instantiate(model, "model", _partial_=True)
    arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in make.keywords.items()}  # hashable fields
    return make.func(
        *make.args, **arguments, **head,
        num_classes=num_classes,
        kernel_init=instantiate(cfg.initializer, "initializer"),
        activation=instantiate(cfg.activation, "activation"),
        normalization=None if layer is None else instantiate(layer, "normalization.layer"),
        norm_position=cfg.normalization.position,
        hidden_dropout=regularizer.hidden_dropout,
        input_dropout=regularizer.input_dropout,
    )


def build_schedule(cfg: DictConfig, steps_per_epoch: int) -> Schedule:
    """The learning-rate schedule, with durations in steps."""
    return instantiate(cfg.schedule, "schedule", learning_rate=cfg.optimizer.learning_rate,
                       steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.trainer.epochs)


def build_stages(cfg: DictConfig, layers: Sequence[str]) -> list[Stage]:
    """The run's stages from the stages group, for the run's epochs and the model's hidden layers."""
    return instantiate(cfg.stages, "stages", epochs=cfg.trainer.epochs, layers=tuple(layers))


def build_parts(cfg: DictConfig, num_classes: int, steps_per_epoch: int) -> Parts:
    """Model, optimizer chain, regularizer and schedule for one run."""
    regularizer = build_regularizer(cfg)
    schedule = build_schedule(cfg, steps_per_epoch)
    optimizer = build_optimizer(cfg.optimizer, schedule, instantiate(cfg.clip, "clip"), regularizer.transform)
    return Parts(build_model(cfg, num_classes, regularizer), optimizer, regularizer, schedule)
