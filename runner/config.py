"""Structured-config schemas and the checks that run before any work.

The groups whose keys are fixed (dataset, trainer) have dataclass schemas: OmegaConf checks
their types and rejects unknown keys; each field's valid range sits in its metadata, and runner/checks.py
checks those and the `_valid_` ranges of the conf files that name a callable. `__post_init__` keeps the
rules that involve two fields of one schema, `check_relations` those between groups (a setting that acts only
with another is refused when that other is off, not ignored). Every failure is a `UserError` naming the key
and what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from runner.checks import TopLevel, check_config
from runner.errors import UserError

# An installed wheel carries the conf files inside the package (runner/conf, see pyproject.toml); a checkout and an
# editable install read the repo's top-level conf/.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else _PACKAGED_CONF.parent.parent / "conf"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _field(default: Any, valid: str | None = None, on_resume: str | None = None) -> Any:
    """A schema field: its valid range (runner/checks.py) and whether a resumed run may change it
    (runner/resumed.py: "free" for what does not change the training, "raise" for the epoch count)."""
    metadata = {k: v for k, v in (("valid", valid), ("on_resume", on_resume)) if v is not None}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class DatasetConfig:
    name: str = MISSING  # each conf/dataset file names its dataset; dataset=tfds leaves it to the user
    path: str | None = None  # the local file, for a source that reads one (`path: ${..path}`, as npz.yaml's)
    val_fraction: float = _field(0.1, "[0, 1)")
    # random: val_fraction of train, drawn with the seed; tail: the last val_size examples (the book's split)
    validation: str = _field("random", "one of random, tail")
    val_size: int = _field(5000, "int >= 0")  # how many examples validation=tail holds out
    scaling: str = _field("standardize", "one of standardize, unit")  # training split's mean/std, or pixels / 255
    data_dir: str | None = _field(None, on_resume="free")  # tfds data dir; null means tfds's default (~/tensorflow_datasets)
    train_subset: int | None = _field(None, "null or int >= 1")  # keep only this many training examples
    # only this many training examples keep their labels; the rest are inputs for pretraining (splits.x_unlabeled)
    labeled_examples: int | None = _field(None, "null or int >= 1")
    classes: Any = _field(None, "null or each int >= 0")  # keep these classes, relabelled 0..n-1 (task B of one dataset)
    resize: Any = _field(None, "null or each int >= 1")  # [H, W]: images resized once, at load
    source: Any = MISSING  # `_target_`: the callable that reads the data, given data_dir (runner/data/load.py)
    check: Any = None  # `_target_`: an optional callable that preflight runs, raising where `source` would

    def __post_init__(self):
        _require(self.path is None or "path" in self.source, "dataset.path",
                 f"dataset.name={self.name} reads no file; valid: a dataset= choice that reads one "
                 "(python -m runner --help), or no dataset.path")


@dataclasses.dataclass
class EarlyStoppingConfig:
    patience: int = _field(0, "int >= 0")  # epochs without improvement before stopping; 0 turns it off
    monitor: str = _field("val_loss", "one of val_loss, val_accuracy")
    restore_best: bool = True


@dataclasses.dataclass
class TrainerConfig:
    epochs: int = _field(20, "int >= 1", on_resume="raise")
    batch_size: int = _field(32, "int >= 1")
    eval_batch_size: int = _field(1000, "int >= 1", on_resume="free")
    seed: int = _field(0, "int [0, 4294967295]")  # jax.random.PRNGKey and NumPy take unsigned 32-bit seeds
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    mc_dropout_samples: int = _field(0, "int >= 0", on_resume="free")  # >0: also report the mean of N stochastic passes at test time
    diagnostics_every: int = _field(0, "int >= 0", on_resume="free")  # steps; 0 turns per-layer diagnostics off
    checkpoint_every: int = _field(0, "int >= 0", on_resume="free")  # epochs; 0 checkpoints only at the end
    keep_checkpoints: int = _field(2, "int >= 1", on_resume="free")
    resume: bool = _field(False, on_resume="free")  # continue from the newest checkpoint in the run dir (hydra.run.dir=...)
    replicas: int = _field(1, "int >= 1")  # >1: this many seeds (seed, seed+1, ...) in one vmapped program
    sparsify_threshold: float = _field(0.0, ">= 0")  # after training, connection weights with |w| below it become 0
    # Data parallel over this many local devices per process (runner/distributed.py); auto: all of them. Free on
    # resume: a resumed run may land on another allocation; the numbers then differ by float summation order only.
    devices: Any = _field("auto", "auto or int >= 1", on_resume="free")


@dataclasses.dataclass
class TransferConfig:
    """Reuse the lower layers of another net (runner/transfer.py): a run dir of this runner, or a .safetensors file."""

    source: str | None = None  # a run dir (its .hydra/config.yaml and model.safetensors) or a .safetensors file
    reuse_layers: int | None = _field(None, "null or int >= 1")  # the lowest K hidden layers; null: all the source has
    layout: str = _field("flax", "one of flax, torch, keras")  # how a .safetensors file from elsewhere stores weights
    freeze: bool = True  # reused layers in inference mode, their parameters held (after the whole optax chain)
    unfreeze_after: int | None = _field(None, "null or int >= 1")  # epochs frozen, then a stage that trains them too
    reused_lr_scale: float = _field(0.1, "(0, 1]")  # the reused layers' learning rate, as a share, once unfrozen
    cache: bool = False  # frozen layers' outputs computed once per example; the upper layers train on them


def compose_config(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
    """The config `python -m runner` would see for these overrides (with Hydra's own node if `hydra`).

    The one place a config is composed: preflight, the benchmark and the tests all call it.
    """
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def register_schemas() -> None:
    """Make the schemas available to the group files' defaults lists (`- /dataset_schema@_here_`).

    Stored outside the groups, so that --help and shell completion offer only the conf files as choices."""
    store = ConfigStore.instance()
    store.store(name="dataset_schema", node=DatasetConfig)
    store.store(name="trainer_schema", node=TrainerConfig)
    store.store(name="transfer_schema", node=TransferConfig)


def validate(cfg: DictConfig, top_level: TopLevel | None = None, sweep: bool = False) -> None:
    """Check the composed config: every range, then the schemas' cross-field rules, then the rules between
    groups (check_relations; `sweep`: the config is one job of a multirun). Raises UserError."""
    check_config(cfg, top_level)
    for group in ("dataset", "trainer", "transfer"):
        OmegaConf.to_object(cfg[group])  # runs the schema's __post_init__ checks
    check_relations(cfg, sweep)


def _choice(node: Any) -> str:
    """The conf file a group's node came from, as its `_target_` names it: `runner.stages.single` -> `single`."""
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(node, DictConfig) else ""


def no_validation_split(dataset: DictConfig) -> tuple[str, str] | None:
    """None when the run holds out a validation split, else (what leaves it none, what would give it one):
    (`dataset.val_fraction=0 leaves no validation split`, `dataset.val_fraction in (0, 1)`)."""
    if dataset.get("validation") == "tail":  # the last val_size examples, else a val_fraction share
        return (("dataset.validation=tail dataset.val_size=0 leaves no validation split", "dataset.val_size >= 1")
                if dataset.val_size == 0 else None)
    return (("dataset.val_fraction=0 leaves no validation split", "dataset.val_fraction in (0, 1)")
            if dataset.val_fraction == 0 else None)


def check_relations(cfg: DictConfig, sweep: bool = False) -> None:
    """The rules between values: an order a list must keep, a value that must fit another, and a setting that acts
    only with another, refused rather than silently ignored when that other is off. Each names both keys.

    `sweep`: the config is one job of a multirun, where a setting may be meant for the other jobs
    (`-m pretraining=none,supervised transfer.reuse_layers=2`); there only what would do harm is refused."""
    schedule, trainer, transfer = cfg.schedule, cfg.trainer, cfg.transfer
    boundaries = list(schedule.get("boundaries") or [])
    _require(all(a < b for a, b in zip(boundaries, boundaries[1:])), "schedule.boundaries",
             f"must be numbers > 0, each above the one before (e.g. [5, 15]), got {boundaries}")
    if "values" in schedule and "boundaries" in schedule:
        _require(len(schedule["values"]) == len(boundaries) + 1, "schedule.values",
                 f"must hold one rate more than schedule.boundaries ({len(boundaries) + 1} for {boundaries}), "
                 f"got {len(schedule['values'])}")
    frozen_epochs = cfg.stages.get("frozen_epochs")
    _require(frozen_epochs is None or frozen_epochs < trainer.epochs, "stages.frozen_epochs",
             f"must be below trainer.epochs ({trainer.epochs}), got {frozen_epochs}")

    # What needs a validation split: without one (runner/data/splits.py) every epoch's validation loss and accuracy
    # are NaN, so early stopping would stop at epoch patience + 1 and a plateau schedule cut the rate every
    # patience epochs.
    dataset = cfg.dataset
    if none_left := no_validation_split(dataset):
        no_validation = f"{none_left[0]}; valid: {none_left[1]}, or"
        _require(trainer.early_stopping.patience == 0, "trainer.early_stopping.patience",
                 f"early stopping watches {trainer.early_stopping.monitor}, and {no_validation} "
                 "trainer.early_stopping.patience=0")
        _require(_choice(schedule) != "plateau", "schedule=plateau",
                 f"the rate falls when the validation loss stops improving, and {no_validation} another schedule")

    # Reused layers: transfer.source, or the lower layers a pretraining= method trains first (runner/pretraining.py).
    pretraining = _choice(cfg.get("pretraining"))
    pretrained = pretraining not in ("", "none")
    _require(not (pretrained and transfer.source), f"pretraining={pretraining}",
             "reuses its own pretrained layers, and transfer.source names another net's; valid: one of them "
             "(pretraining=none, or transfer.source=null)")
    reusing = bool(transfer.source) or pretrained
    if reusing and transfer.freeze and transfer.unfreeze_after is not None:
        _require(transfer.unfreeze_after < trainer.epochs, "transfer.unfreeze_after",
                 f"must be below trainer.epochs ({trainer.epochs}), got {transfer.unfreeze_after}")
    if sweep:
        return
    if "validation" in dataset:  # each way to hold out validation has its own size
        tail = dataset.validation == "tail"
        unused = ("val_fraction", "random") if tail else ("val_size", "tail")
        default = next(f.default for f in dataclasses.fields(DatasetConfig) if f.name == unused[0])
        _require(dataset[unused[0]] == default, f"dataset.{unused[0]}",
                 f"sizes the split of dataset.validation={unused[1]}, and this run's is dataset.validation="
                 f"{dataset.validation}; valid: dataset.validation={unused[1]} with it, or "
                 f"dataset.{unused[0]}={default}")
    _check_transfer_acts(cfg, reusing, pretraining)


def _check_transfer_acts(cfg: DictConfig, reusing: bool, pretraining: str) -> None:
    """Each transfer setting changed from its default must act on this run: refused where nothing is reused, or
    where another setting turns it off."""
    transfer = cfg.transfer
    defaults = {f.name: f.default for f in dataclasses.fields(TransferConfig)}

    def default(key: str) -> str:
        value = defaults[key]
        return f"transfer.{key}={'null' if value is None else str(value).lower()}"

    if not reusing:
        for key in ("reuse_layers", "freeze", "unfreeze_after", "reused_lr_scale", "cache", "layout"):
            _require(transfer[key] == defaults[key], f"transfer.{key}",
                     "acts on reused layers, and this run reuses none (transfer.source=null, pretraining=none); "
                     f"valid: transfer.source=RUN_DIR or a pretraining= method to reuse layers, or {default(key)}")
        return
    reused = f"transfer.source={transfer.source}" if transfer.source else f"pretraining={pretraining}"
    _require(transfer.layout == defaults["layout"] or str(transfer.source).endswith(".safetensors"),
             "transfer.layout", f"says how a .safetensors file stores its weights, and the reused layers come from "
             f"{reused}; valid: {default('layout')}, or a FILE.safetensors as transfer.source")
    _require(_choice(cfg.stages) == "single", f"stages={_choice(cfg.stages)}",
             f"the reused layers of {reused} train in the stages transfer.freeze and transfer.unfreeze_after make; "
             "valid: stages=single, with transfer.unfreeze_after=N to train the reused layers after N epochs")
    if not transfer.freeze:
        _require(transfer.unfreeze_after is None, "transfer.unfreeze_after",
                 "ends the frozen epochs, and transfer.freeze=false freezes none; valid: transfer.unfreeze_after=null, "
                 "or transfer.freeze=true")
    elif transfer.unfreeze_after is None:
        _require(transfer.reused_lr_scale == defaults["reused_lr_scale"], "transfer.reused_lr_scale",
                 "scales the reused layers' rate once they train, and with transfer.freeze=true and "
                 "transfer.unfreeze_after=null they never do; valid: transfer.unfreeze_after=N or "
                 f"transfer.freeze=false, or {default('reused_lr_scale')}")


MAX_EPOCHS_VARIABLE = "RUNNER_MAX_EPOCHS"


def capped(cfg: DictConfig) -> DictConfig:
    """The config with trainer.epochs at most $RUNNER_MAX_EPOCHS, when that is set: a test aid, so that a test can
    run a command exactly as a person types it (tests/test_readme_commands.py) in less time. The run's saved
    config keeps what was typed; summary.json's `epochs` says how many ran."""
    cap = os.environ.get(MAX_EPOCHS_VARIABLE)
    if cap is not None and not cap.strip().isdigit():
        raise UserError(f"{MAX_EPOCHS_VARIABLE}={cap!r}: a test aid's epoch cap; valid: an integer >= 1, or unset")
    if not cap or cfg.trainer.epochs <= int(cap):
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.trainer.epochs = max(int(cap), 1)
    return cfg
