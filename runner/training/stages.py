"""Stages: a run is a list of stages over one train state.

A stage says how many epochs it trains and which hidden layers it keeps frozen. A frozen layer runs in
inference mode (batch statistics fixed, no dropout) and its parameters do not move: the stage's optimizer is
the run's whole chain followed by a mask that zeroes the frozen layers' updates, so nothing in the chain
(weight decay, max-norm projection, plateau scaling) can move them. Each stage starts with a fresh optimizer
state for its own chain.

The `stages` conf group names a factory here; each takes its YAML arguments plus the run's `epochs` and the
model's `layers` (hidden layer names, from the input up), injected by the runner, and returns the stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import optax
from flax import traverse_util

from runner.errors import UserError
from runner.net.layers import block_of


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run."""

    name: str
    epochs: int
    frozen: frozenset[str] = frozenset()  # hidden layers (`dense_0`, `conv_1`, ...) kept as they are, blocks too
    scaled: frozenset[str] = frozenset()  # hidden layers whose steps are scaled by `scale` (reused layers' lower lr)
    scale: float = 1.0


def single(epochs: int, layers: Sequence[str]) -> list[Stage]:
    """The plain run: one stage, every layer trains for all epochs."""
    del layers
    return [Stage("train", epochs)]


def freeze_lower(epochs: int, layers: Sequence[str], frozen_layers: int = 1, frozen_epochs: int = 5) -> list[Stage]:
    """The lowest `frozen_layers` hidden layers frozen for `frozen_epochs`, then every layer trains."""
    if frozen_layers > len(layers):
        raise UserError(f"stages.frozen_layers: the model has {len(layers)} hidden layers, got {frozen_layers}; "
                        f"valid: 0..{len(layers)}")
    if frozen_epochs >= epochs:
        raise UserError(f"stages.frozen_epochs: must be below trainer.epochs ({epochs}), got {frozen_epochs}")
    return [Stage("frozen", frozen_epochs, frozenset(layers[:frozen_layers])),
            Stage("unfrozen", epochs - frozen_epochs)]


def stage_optimizer(chain: optax.GradientTransformation, stage: Stage) -> optax.GradientTransformation:
    """The run's chain, then the scaled layers' steps scaled, then zero updates for the stage's frozen layers (the
    last transform, on purpose: nothing in the chain can move them). A layer's block (`block_i` of `dense_i`)
    goes with it."""
    transforms = [chain]
    if stage.scaled and stage.scale != 1.0:
        transforms.append(optax.masked(optax.scale(stage.scale), _leaves_of(stage.scaled)))
    if stage.frozen:
        transforms.append(optax.masked(optax.set_to_zero(), _leaves_of(stage.frozen)))
    return chain if len(transforms) == 1 else optax.chain(*transforms)


def _leaves_of(layers: frozenset[str]):
    """A mask function: True at the parameters of `layers` and of their blocks."""
    keys = layers | {block_of(name) for name in layers}

    def mask(params: Any) -> Any:
        return traverse_util.path_aware_map(lambda path, _: path[0] in keys, params)

    return mask


def stage_at(stages: Sequence[Stage], epoch: int) -> int:
    """The index of the stage that trains (1-based, global) `epoch`."""
    end = 0
    for i, stage in enumerate(stages):
        end += stage.epochs
        if epoch <= end:
            return i
    return len(stages) - 1


def entering(left: Stage, entered: Stage, epoch: int) -> str | None:
    """The console line for a run that leaves stage `left` for `entered` at `epoch`: the layers that unfreeze or
    freeze, and the scale of the reused layers' steps; None when no layer changes."""
    unfrozen, frozen = _in_order(left.frozen - entered.frozen), _in_order(entered.frozen - left.frozen)
    changes = []
    if unfrozen:
        scaled = [name for name in unfrozen if name in entered.scaled]
        changes.append(f"{', '.join(unfrozen)} unfrozen" + (
            f" (their steps scaled by {entered.scale:g})" if scaled and entered.scale != 1.0 else ""))
    if frozen:
        changes.append(f"{', '.join(frozen)} frozen")
    if not changes:
        return None
    return f"epoch {epoch}: {'; '.join(changes)}; a fresh optimizer state, the learning-rate schedule goes on"


def _in_order(layers: frozenset[str]) -> list[str]:
    """Layer names from the input up: `dense_2` before `dense_10`."""
    def key(name: str) -> tuple:
        kind, _, index = name.rpartition("_")
        return (kind, int(index) if index.isdigit() else -1, name)
    return sorted(layers, key=key)


def first_epoch_of(stages: Sequence[Stage], index: int) -> int:
    """The global epoch (1-based) with which stage `index` starts."""
    return 1 + sum(stage.epochs for stage in stages[:index])
