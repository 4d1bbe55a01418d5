"""A resumed run's command line, rebuilt from the config the run saved when it started.

`python -m runner trainer.resume=true hydra.run.dir=DIR` continues the run as it was configured: the
overrides saved in DIR/.hydra/overrides.yaml come first, the new ones after. New overrides may only
extend the run (fields whose schema says `on_resume`); any other difference from DIR/.hydra/config.yaml
is refused in one line naming the keys, before anything in DIR changes.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from runner.config.checks import SPEC_KEY
from runner.errors import UserError
from runner.rundir.outputs import write_atomic
from runner.rundir.records import CONFIG_FILE, OVERRIDES_FILE, read_config, read_overrides


def override_key(override: str) -> str:
    """The key an override sets: `+trainer.epochs=3` -> `trainer.epochs`."""
    return override.split("=", 1)[0].lstrip("+~")


def resumed_overrides(run_dir: Path, overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> list[str]:
    """The saved overrides of the run in `run_dir`, then `overrides`; UserError if they change the run."""
    saved_cfg, saved_overrides = _saved(run_dir)
    new_keys = {override_key(o) for o in overrides}
    merged = [o for o in saved_overrides if override_key(o) not in new_keys | {"trainer.resume"}] + overrides
    # Keys the run's config lacks came with a later version of the runner: at their defaults they change nothing.
    try:
        defaults = OmegaConf.to_container(compose([o for o in saved_overrides if override_key(o) != "trainer.resume"]))
    except UserError as e:  # an override saved there that this runner's conf files no longer take (or an edit)
        raise UserError(f"{run_dir / OVERRIDES_FILE}: {e}") from None
    _refuse_changes(saved_cfg, compose(merged), f"these overrides change what {run_dir} was trained with", defaults)
    return merged


def check_same_job(run_dir: Path, cfg: DictConfig) -> None:
    """UserError if the run saved in `run_dir` (a re-launched sweep's job dir) was trained with another config
    than `cfg`, beyond what a resumed run may change: the conf files changed since, or the dir is another job's."""
    saved_cfg, _ = _saved(run_dir)
    _refuse_changes(saved_cfg, cfg, f"{run_dir} holds a run trained with another config")


def _refuse_changes(saved_cfg: DictConfig, cfg: DictConfig, what: str, defaults: dict | None = None) -> None:
    changed = _differences(OmegaConf.to_container(saved_cfg), OmegaConf.to_container(cfg))
    refused = [(key, old, new) for key, old, new in changed
               if not _may_change(cfg, key, old, new) and not _found_at_start(key, old, new)
               and not (old is _ABSENT and defaults is not None and _at(defaults, key) == new)]
    if refused:
        shown = ", ".join(f"{key} ({_show(old)} -> {_show(new)})" for key, old, new in _as_told(refused))
        raise UserError(f"trainer.resume: {what}: {shown}; valid on resume: {', '.join(_resume_keys(cfg))}")


def _as_told(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The changes as a person would name them: a node that names another callable (`optimizer=sgd` for adam) as
    one change of that node, not one per argument."""
    replaced = {key[:-len("._target_")] for key, _, _ in changes if key.endswith("._target_")}
    told = []
    for key, old, new in changes:
        node = key[:-len("._target_")] if key.endswith("._target_") else None
        if node is not None:
            told.append((node, old, new))
        elif not any(key.startswith(f"{r}.") for r in replaced):
            told.append((key, old, new))
    return told


def _saved(run_dir: Path) -> tuple[DictConfig, list[str]]:
    """The run's saved config and overrides (runner/rundir/records.py: a file that is not what Hydra saves is one line)."""
    config_file, overrides_file = run_dir / CONFIG_FILE, run_dir / OVERRIDES_FILE
    if not config_file.exists() or not overrides_file.exists():
        raise UserError(f"trainer.resume: {run_dir / '.hydra'} has no config.yaml/overrides.yaml to resume from; "
                        "valid: the run dir of a run started by python -m runner")
    return read_config(config_file), read_overrides(overrides_file)


_ABSENT = object()  # a key one config has and the other lacks


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Each (key, old, new) where the two configs differ, leaf by leaf; a conf file's `_valid_` declarations are
    not the run's values (a later runner may declare more) and are left out."""
    if isinstance(old, dict) and isinstance(new, dict) or old is _ABSENT and isinstance(new, dict) \
            or isinstance(old, dict) and new is _ABSENT:
        old = {} if old is _ABSENT else {k: v for k, v in old.items() if k != SPEC_KEY}
        new = {} if new is _ABSENT else {k: v for k, v in new.items() if k != SPEC_KEY}
        return [d for k in sorted(old.keys() | new.keys(), key=str)
                for d in _differences(old.get(k, _ABSENT), new.get(k, _ABSENT),
                                      f"{prefix}{k}" if not prefix else f"{prefix}.{k}")]
    return [] if old == new else [(prefix, old, new)]


def _at(tree: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _schema_field(cfg: DictConfig, key: str) -> dataclasses.Field | None:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    return next((f for f in dataclasses.fields(schema) if f.name == name), None)


def _may_change(cfg: DictConfig, key: str, old: Any, new: Any) -> bool:
    if key.split(".", 1)[0] == "logger":  # where a run is recorded to does not change its training
        return True
    field = _schema_field(cfg, key)
    rule = field.metadata.get("on_resume") if field else None
    if rule == "free":
        return True
    if rule == "raise" and isinstance(old, int) and isinstance(new, int) and new >= old:
        if key == "trainer.epochs" and _schedule_uses_run_length(cfg):
            raise UserError(f"trainer.epochs: the schedule {cfg.schedule._target_} is shaped by the run's length, "
                            "so raising epochs would change the steps already trained; start a new run instead")
        return True
    return False


def _found_at_start(key: str, old: Any, new: Any) -> bool:
    """`optimizer.learning_rate=auto` on a re-launched sweep's command line, where the job's saved config holds the
    rate the range test found when it started (runner/training/lr_range.py records it there; the resumed job reuses it)."""
    return key == "optimizer.learning_rate" and new == "auto" and isinstance(old, (int, float))


def _schedule_uses_run_length(cfg: DictConfig) -> bool:
    from hydra.utils import get_method  # imports the schedule's module (jax): only on this rare path

    return bool(getattr(get_method(cfg.schedule._target_), "uses_run_length", False))


def _resume_keys(cfg: DictConfig) -> list[str]:
    keys = []
    for group in ("dataset", "model", "trainer"):
        schema = OmegaConf.get_type(cfg[group])
        for f in dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ():
            rule = f.metadata.get("on_resume")
            if rule:
                keys.append(f"{group}.{f.name}" + (" (raise only)" if rule == "raise" else ""))
    return keys + ["logger"]


def _show(value: Any) -> str:
    if isinstance(value, dict):  # a node where the other config has a value: the callable it names
        return str(value.get("_target_", "{...}"))
    return "(absent)" if value is _ABSENT else "null" if value is None else str(value)


def record_resolved(run_dir: Path, key: str, value: Any) -> None:
    """Put what `key` resolved to where the typed value stood, in the run dir's saved config.yaml and
    overrides.yaml (Hydra wrote both before the job ran): optimizer.learning_rate=auto's found rate,
    transfer.source=best:DATASET's run dir. The run dir then records the run as it trained, and
    `trainer.resume=true` recomposes exactly that, without resolving again (a resumed run keeps its source even
    after a better run appeared)."""
    saved = _saved_config_dir(run_dir)
    if saved is None or not (saved / CONFIG_FILE.name).exists():
        return
    config = OmegaConf.load(saved / CONFIG_FILE.name)
    OmegaConf.update(config, key, value)
    write_atomic(saved / CONFIG_FILE.name, OmegaConf.to_yaml(config))
    overrides_file = saved / OVERRIDES_FILE.name
    overrides = read_overrides(overrides_file) if overrides_file.exists() else []
    text = str(value)
    typed = text if re.fullmatch(r"[\w./:+-]+", text) else "'" + text.replace("'", "\\'") + "'"
    kept = [o for o in overrides if override_key(o) != key]
    write_atomic(overrides_file, OmegaConf.to_yaml(OmegaConf.create(kept + [f"{key}={typed}"])))


def _saved_config_dir(run_dir: Path) -> Path | None:
    """Where Hydra saved this job's config (hydra.output_subdir, `.hydra` unless set; None if not saved)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return run_dir / ".hydra"
    subdir = HydraConfig.get().output_subdir
    return None if subdir is None else run_dir / subdir
