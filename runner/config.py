"""Structured-config schemas and the checks that run before any work.

The groups whose keys are fixed (dataset, model, trainer) have dataclass schemas: OmegaConf checks
their types and rejects unknown keys, `__post_init__` checks their ranges. The groups that name a
callable with `_target_` (initializer, activation, normalization, regularizer, optimizer, schedule)
are checked against the callable's own signature and a short table of value ranges.
Every failure is a `UserError` naming the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import MISSING, DictConfig, OmegaConf

from runner.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TARGET_GROUPS = ("initializer", "activation", "normalization", "optimizer", "schedule")
CLIP_CHOICES = ("none", "value", "norm", "global_norm")
MONITOR_CHOICES = ("val_loss", "val_accuracy")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


@dataclasses.dataclass
class DatasetConfig:
    name: str = MISSING  # each conf/dataset file names its dataset; dataset=tfds leaves it to the user
    path: str | None = None  # the .npz file for name=npz
    val_fraction: float = 0.1
    data_dir: str | None = None  # tfds data dir; null means tfds's default (~/tensorflow_datasets)
    train_subset: int | None = None  # keep only this many training examples

    def __post_init__(self):
        _require(0.0 <= self.val_fraction < 1.0, "dataset.val_fraction",
                 f"must be in [0, 1), got {self.val_fraction}")
        _require(self.name != "npz" or bool(self.path), "dataset.path",
                 "dataset=npz needs dataset.path=/path/to/file.npz")
        _require(self.train_subset is None or self.train_subset > 0, "dataset.train_subset",
                 f"must be a positive count or null, got {self.train_subset}")


@dataclasses.dataclass
class ModelConfig:
    name: str = "mlp"  # mlp | cnn
    depth: int = 3  # hidden dense layers
    width: int = 100  # units per hidden dense layer
    channels: list[int] = dataclasses.field(default_factory=list)  # conv layers (cnn only)

    def __post_init__(self):
        _require(self.name in ("mlp", "cnn"), "model.name", f"must be mlp or cnn, got {self.name!r}")
        _require(self.depth >= 1 or (self.name == "cnn" and self.depth >= 0), "model.depth",
                 f"must be >= 1, got {self.depth}")
        _require(self.width >= 1, "model.width", f"must be >= 1, got {self.width}")
        _require(all(c >= 1 for c in self.channels), "model.channels",
                 f"every entry must be >= 1, got {list(self.channels)}")


@dataclasses.dataclass
class EarlyStoppingConfig:
    patience: int = 0  # epochs without improvement before stopping; 0 turns it off
    monitor: str = "val_loss"  # val_loss | val_accuracy
    restore_best: bool = True

    def __post_init__(self):
        _require(self.patience >= 0, "trainer.early_stopping.patience", f"must be >= 0, got {self.patience}")
        _require(self.monitor in MONITOR_CHOICES, "trainer.early_stopping.monitor",
                 f"must be one of {', '.join(MONITOR_CHOICES)}, got {self.monitor!r}")


@dataclasses.dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 1000
    seed: int = 0
    clip: str = "none"  # none | value | norm | global_norm
    clip_threshold: float = 1.0
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    mc_dropout_samples: int = 0  # >0: also report the mean of N stochastic passes at test time
    diagnostics_every: int = 0  # steps; 0 turns per-layer diagnostics off
    checkpoint_every: int = 0  # epochs; 0 checkpoints only at the end
    keep_checkpoints: int = 2
    resume: bool = False  # continue from the newest checkpoint in the run dir (hydra.run.dir=...)
    sparsify_threshold: float = 0.0  # after training, connection weights with |w| below it become 0

    def __post_init__(self):
        for key in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
            _require(getattr(self, key) >= 1, f"trainer.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("mc_dropout_samples", "diagnostics_every", "checkpoint_every"):
            _require(getattr(self, key) >= 0, f"trainer.{key}", f"must be >= 0, got {getattr(self, key)}")
        _require(self.clip in CLIP_CHOICES, "trainer.clip",
                 f"must be one of {', '.join(CLIP_CHOICES)}, got {self.clip!r}")
        _require(self.sparsify_threshold >= 0, "trainer.sparsify_threshold",
                 f"must be >= 0, got {self.sparsify_threshold}")
        _require(self.clip_threshold > 0, "trainer.clip_threshold", f"must be > 0, got {self.clip_threshold}")


def register_schemas() -> None:
    """Make the schemas available to the group files' defaults lists (`- schema`)."""
    store = ConfigStore.instance()
    store.store(group="dataset", name="schema", node=DatasetConfig)
    store.store(group="model", name="schema", node=ModelConfig)
    store.store(group="trainer", name="schema", node=TrainerConfig)


# Ranges of hyperparameters, by name, wherever they appear in a `_target_` group.
_POSITIVE = ("learning_rate", "max_value", "decay_every", "steps", "epsilon", "eps")
_NON_NEGATIVE = ("strength", "l1", "l2", "weight_decay", "momentum", "patience", "shift", "scale",
                 "rotate_degrees", "initial_accumulator_value", "beta", "warmup")
_FRACTION = ("rate", "b1", "b2", "decay")  # probabilities and decay factors: must stay below 1
_CHOICES = {"mode": ("fan_in", "fan_out", "fan_avg"),
            "distribution": ("normal", "truncated_normal", "uniform"),
            "unit": ("epoch", "step")}


def _check_range(key: str, name: str, value: Any) -> None:
    if name in _CHOICES:
        _require(value in _CHOICES[name], key, f"must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if name in _POSITIVE:
        _require(value > 0, key, f"must be > 0, got {value}")
    elif name in _NON_NEGATIVE:
        _require(value >= 0, key, f"must be >= 0, got {value}")
    elif name in _FRACTION:
        _require(0 <= value < 1, key, f"must be in [0, 1), got {value}")


def _check_target_node(key: str, node: DictConfig, injected: tuple[str, ...] = ()) -> None:
    """Check a `_target_` node: the callable exists, every key is one of its arguments, values in range."""
    target = node.get("_target_")
    _require(isinstance(target, str), key, "needs a _target_ naming the callable to build")
    try:
        fn = get_method(target)
    except Exception:  # Hydra raises plain exceptions of several types for a bad import path
        raise UserError(f"{key}._target_: cannot import {target!r}") from None
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = [n for n in params if n not in injected and params[n].kind is not inspect.Parameter.VAR_POSITIONAL]
    for name, value in node.items():
        if name.startswith("_"):
            continue
        _require(takes_any or name in params, f"{key}.{name}",
                 f"not an argument of {target}; valid: {', '.join(valid)}")
        if isinstance(value, DictConfig) and "_target_" in value:
            _check_target_node(f"{key}.{name}", value)
        else:
            _check_range(f"{key}.{name}", name, value)


def validate(cfg: DictConfig) -> None:
    """Check the composed config: schemas' ranges, then every `_target_` group. Raises UserError."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    _require(not missing, missing[0] if missing else "", "needs a value, e.g. dataset=tfds dataset.name=kmnist")
    for group in ("dataset", "model", "trainer"):
        OmegaConf.to_object(cfg[group])  # runs the schema's __post_init__ checks
    for group in TARGET_GROUPS:
        node = cfg[group]
        if group == "normalization":
            _require(node.position in ("pre", "post"), "normalization.position",
                     f"must be pre or post, got {node.position!r}")
            if node.layer is not None:
                _check_target_node("normalization.layer", node.layer)
        elif group == "schedule":
            _check_target_node("schedule", node, injected=("learning_rate", "steps_per_epoch", "total_steps"))
        else:
            _check_target_node(group, node)
    regularizers = cfg.get("regularizer") or {}
    for name, node in regularizers.items():
        _check_target_node(f"regularizer.{name}", node)

