"""Structured-config schemas and the checks that run before any work.

The groups whose keys are fixed (dataset, trainer) have dataclass schemas: OmegaConf checks
their types and rejects unknown keys; each field's valid range sits in its metadata, and runner/config/checks.py
checks those and the `_valid_` ranges of the conf files that name a callable. `__post_init__` keeps the
rules that involve two fields of one schema; runner/cli/relations.py runs them all, then the rules between groups.
Every failure is a `UserError` naming the key and what is valid.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, open_dict

from runner.errors import UserError

# An installed wheel carries the conf files inside the package (runner/conf, see pyproject.toml); a checkout and an
# editable install read the repo's top-level conf/.
_PACKAGE = Path(__file__).resolve().parents[1]  # runner/
_PACKAGED_CONF = _PACKAGE / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else _PACKAGE.parent / "conf"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


def _field(default: Any, valid: str | None = None, on_resume: str | None = None) -> Any:
    """A schema field: its valid range (runner/config/checks.py) and whether a resumed run may change it
    (runner/rundir/resumed.py: "free" for what does not change the training, "raise" for the epoch count)."""
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
    # Data parallel over this many local devices per process (runner/scale/distributed.py); auto: all of them. Free on
    # resume: a resumed run may land on another allocation; the numbers then differ by float summation order only.
    devices: Any = _field("auto", "auto or int >= 1", on_resume="free")


@dataclasses.dataclass
class TransferConfig:
    """Reuse the lower layers of another net (runner/reuse/transfer.py): a run dir of this runner, or a .safetensors file."""

    source: str | None = None  # a run dir (its .hydra/config.yaml and model.safetensors) or a .safetensors file
    reuse_layers: int | None = _field(None, "null or int >= 1")  # the lowest K hidden layers; null: all the source has
    layout: str = _field("flax", "one of flax, torch, keras")  # how a .safetensors file from elsewhere stores weights
    freeze: bool = True  # reused layers in inference mode, their parameters held (after the whole optax chain)
    unfreeze_after: int | None = _field(None, "null or int >= 1")  # epochs frozen, then a stage that trains them too
    reused_lr_scale: float = _field(0.1, "(0, 1]")  # the reused layers' learning rate, as a share, once unfrozen
    cache: bool = False  # frozen layers' outputs computed once per example; the upper layers train on them


def compose_config(*overrides: str, config_name: str = "config", hydra: bool = False,
                   config_dir: str | None = None) -> DictConfig:
    """The config `python -m runner` would see for these overrides (with Hydra's own node if `hydra`), and for
    `--config-dir config_dir` if given.

    The one place a config is composed: preflight, the benchmark and the tests all call it.
    """
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        if config_dir is not None:
            _add_config_dir(config_dir)
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def _add_config_dir(config_dir: str) -> None:
    """Put `config_dir` in the search path where Hydra's `--config-dir` puts it (hydra/_internal/utils.py,
    _run_hydra): after conf/, before the structured configs. Hydra looks for the primary config (`-cn NAME`) there
    too; a `hydra.searchpath` override comes too late for that (the primary config is looked up, and its absence
    cached, before the override is read)."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    loader.config_search_path.prepend(provider="command-line", path=f"file://{Path(config_dir).resolve()}",
                                      anchor=SearchPathQuery(provider="schema"))
    loader.repository = ConfigRepository(config_search_path=loader.config_search_path)


def compose_shared(*overrides: str, config_name: str = "config", hydra: bool = False,
                   config_dir: str | None = None) -> DictConfig:
    """compose_config's config, its costly part shared: what Hydra builds its defaults tree from (the group choices,
    `group=choice`, and hydra.searchpath; ~0.1 s a composition) is composed once per process, and the values
    (`group.key=value`: a dotted key names no group) are applied to a copy by the step of Hydra's compose that
    applies them (ConfigLoaderImpl._apply_overrides_to_config: the same values, the same errors), then recorded in
    Hydra's node as compose records them. Preflight composes a sweep's jobs with it: the jobs of
    `-m trainer.seed=range(0,5) activation=relu,elu,selu` share 3 compositions, not 15 (its preflight: 0.9 s,
    was 2.0 s).
    tests/test_safety.py holds it to compose_config."""
    def is_value(o) -> bool:
        return "." in o.key_or_group and o.key_or_group != "hydra.searchpath"

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    values = [o for o in parsed if is_value(o)]
    choices = tuple(o.input_line for o in parsed if not is_value(o))
    with_hydra = hydra or any(o.is_hydra_override() for o in values)
    cfg = copy.deepcopy(_composed_choices(choices, config_name, with_hydra, config_dir))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    if not with_hydra:
        return cfg
    # What compose does after applying them (hydra/_internal/config_loader_impl.py, _load_configuration_impl).
    task = [o for o in parsed if not o.is_hydra_override()]
    node = cfg.hydra
    node.overrides.task = [o.input_line for o in task]
    node.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    with open_dict(node):
        for key in node.job.env_copy:
            node.job.env_set[key] = os.environ[key]
    node.runtime.cwd = os.getcwd()
    dirname = node.job.config.override_dirname
    node.job.override_dirname = get_overrides_dirname(overrides=task, kv_sep=dirname.kv_sep,
                                                      item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@functools.cache
def _composed_choices(choices: tuple[str, ...], config_name: str, hydra: bool,
                      config_dir: str | None) -> DictConfig:
    if not hydra:  # the job's config alone: a third of the copying, for values outside Hydra's node
        cfg = copy.deepcopy(_composed_choices(choices, config_name, True, config_dir))
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg
    return compose_config(*choices, config_name=config_name, hydra=True, config_dir=config_dir)


def register_schemas() -> None:
    """Make the schemas available to the group files' defaults lists (`- /dataset_schema@_here_`).

    Stored outside the groups, so that --help and shell completion offer only the conf files as choices."""
    store = ConfigStore.instance()
    store.store(name="dataset_schema", node=DatasetConfig)
    store.store(name="trainer_schema", node=TrainerConfig)
    store.store(name="transfer_schema", node=TransferConfig)


AUTO = "auto"  # optimizer.learning_rate=auto: the range test finds the rate (runner/training/lr_range.py)


def is_auto_rate(cfg: Any) -> bool:
    """Whether the config leaves its learning rate to the range test (optimizer.learning_rate=auto)."""
    value = cfg.optimizer.get("learning_rate")
    return isinstance(value, str) and value == AUTO


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
