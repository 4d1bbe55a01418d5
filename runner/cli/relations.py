"""Whether a composed config can run: every range, each schema's own rules, then the rules between groups.

The rules between groups ask the objects the config builds (the schedule, the stages, the pretraining function),
never the names of their callables: a conf file of one's own that builds a plateau schedule is one. Building
imports JAX (about 1.5 s), so a rule builds only where its answer matters (a run that reuses layers, a run
without a validation split): a mistake or `--help` is answered without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from runner.config.checks import TopLevel, check_config
from runner.config.compose import DatasetConfig, TransferConfig, is_auto_rate
from runner.errors import UserError
from runner.reuse import pretraining


def validate(cfg: DictConfig, top_level: TopLevel | None = None, sweep: bool = False) -> None:
    """Check the composed config: every range, then the schemas' cross-field rules, then the rules between
    groups (check_relations; `sweep`: the config is one job of a multirun). Raises UserError."""
    check_config(cfg, top_level)
    for group in ("dataset", "trainer", "transfer"):
        OmegaConf.to_object(cfg[group])  # runs the schema's __post_init__ checks
    check_relations(cfg, sweep)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def no_validation_split(dataset: DictConfig) -> tuple[str, str] | None:
    """None when the run holds out a validation split, else (what leaves it none, what would give it one):
    (`dataset.val_fraction=0 leaves no validation split`, `dataset.val_fraction in (0, 1)`)."""
    if dataset.get("validation") == "tail":  # the last val_size examples, else a val_fraction share
        return (("dataset.validation=tail dataset.val_size=0 leaves no validation split", "dataset.val_size >= 1")
                if dataset.val_size == 0 else None)
    return (("dataset.val_fraction=0 leaves no validation split", "dataset.val_fraction in (0, 1)")
            if dataset.val_fraction == 0 else None)


def plateau_schedule(cfg: DictConfig) -> bool:
    """Whether the chosen schedule follows the validation loss (performance scheduling), asked of it built."""
    from runner.training.build import build_schedule

    # optimizer.learning_rate=auto is found after these checks; any number builds a schedule of the same kind
    rate = 1.0 if is_auto_rate(cfg) else cfg.optimizer.learning_rate
    return build_schedule(OmegaConf.merge(cfg, {"optimizer": {"learning_rate": rate}}), 1).plateau is not None


def staged(cfg: DictConfig) -> bool:
    """Whether the stages group makes more than the plain run (one stage, nothing frozen or scaled); its factory
    checks its own arguments against the run's epochs and the model's layers here, before anything runs."""
    from runner.training.build import build_model, build_regularizer, build_stages

    layers = build_model(cfg, num_classes=2, regularizer=build_regularizer(cfg)).hidden_layers  # names only
    stages = build_stages(cfg, layers)
    return len(stages) > 1 or bool(stages[0].frozen or stages[0].scaled)


def _factory(node: DictConfig) -> str:
    """The name of the function a group's node calls (`freeze_lower`), for messages."""
    return get_method(node._target_).__name__


def pretraining_function(cfg: DictConfig) -> str | None:
    """The name of the pretraining function the config calls; None for none (which imports nothing heavy)."""
    node = cfg.get("pretraining")
    function = None if node is None else get_method(node._target_)
    return None if function is None or function is pretraining.none else function.__name__


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
        _require(not plateau_schedule(cfg), "schedule=plateau",
                 f"the rate falls when the validation loss stops improving, and {no_validation} another schedule")

    # Reused layers: transfer.source, or the lower layers a pretraining= method trains first (runner/reuse/pretraining.py).
    pretraining = pretraining_function(cfg)
    _require(not (pretraining and transfer.source), f"pretraining={pretraining}",
             "reuses its own pretrained layers, and transfer.source names another net's; valid: one of them "
             "(pretraining=none, or transfer.source=null)")
    reusing = bool(transfer.source) or pretraining is not None
    if reusing:
        # transfer's own settings make a reusing run's stages; a stages= choice as well would be silently dropped
        # (and the saved config would say it ran)
        reused = f"transfer.source={transfer.source}" if transfer.source else f"pretraining={pretraining}"
        _require(not staged(cfg), f"stages={_factory(cfg.stages)}", f"the reused layers of {reused} train in the stages transfer.freeze and "
                 "transfer.unfreeze_after make; valid: stages=single, with transfer.unfreeze_after=N to train the "
                 "reused layers after N epochs")
        if transfer.freeze and transfer.unfreeze_after is not None:
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


def _check_transfer_acts(cfg: DictConfig, reusing: bool, pretraining: Any) -> None:
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
    if not transfer.freeze:
        _require(transfer.unfreeze_after is None, "transfer.unfreeze_after",
                 "ends the frozen epochs, and transfer.freeze=false freezes none; valid: transfer.unfreeze_after=null, "
                 "or transfer.freeze=true")
    elif transfer.unfreeze_after is None:
        _require(transfer.reused_lr_scale == defaults["reused_lr_scale"], "transfer.reused_lr_scale",
                 "scales the reused layers' rate once they train, and with transfer.freeze=true and "
                 "transfer.unfreeze_after=null they never do; valid: transfer.unfreeze_after=N or "
                 f"transfer.freeze=false, or {default('reused_lr_scale')}")
