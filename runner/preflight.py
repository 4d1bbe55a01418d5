"""Compose and check every job's config before Hydra starts, turning Hydra's errors into one line each.

Hydra reports a bad override with several lines and exit code 1 after it has made the run dir; here the
same composition happens first, through Hydra's compose API, so a mistake costs nothing on disk.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from runner.build import build_regularizer, build_schedule
from runner.checkpoint import has_checkpoint
from runner.config import CONF_DIR, validate
from runner.errors import UserError, first_line

FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg",
                    "-p", "--package", "--info", "--experimental-rerun"}
MAX_CHECKED_JOBS = 256


def overrides_of(argv: list[str]) -> list[str]:
    """The override arguments of a Hydra command line (flags and their values dropped)."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return overrides


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of the jobs a multirun would launch (listable sweeps; search spaces skipped)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(f"cannot parse overrides: {first_line(e)}") from None
    choices = []
    for override in parsed:
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # interval() and other search spaces are for the sweeper to sample
                continue
            choices.append([f"{override.get_key_element()}={value}" for value in values])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)]


def preflight(argv: list[str]) -> None:
    """Compose and validate every job of this command line; raises UserError on the first bad one."""
    if any(a in ("-h", "--help", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in expand_sweep(overrides_of(argv)):
            cfg = _compose(job)
            validate(cfg)
            # Building the pieces that need no data catches what only their factories can check.
            build_regularizer(cfg)
            build_schedule(cfg, steps_per_epoch=1)
            if cfg.trainer.resume and not multirun:  # in a sweep, jobs without a checkpoint start afresh
                _check_resumable(overrides_of(argv))
            if cfg.dataset.name == "npz":
                from runner.data import validate_npz  # only now: tfds is slow to import

                validate_npz(cfg.dataset.path)


def _check_resumable(overrides: list[str]) -> None:
    """A single run resumes only into an existing run dir with a complete checkpoint."""
    run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        raise UserError("trainer.resume=true needs hydra.run.dir=<the run dir of the run to continue>")
    if not has_checkpoint(Path(run_dir)):
        raise UserError(f"trainer.resume: no checkpoint in {run_dir}/checkpoints; "
                        "valid: the run dir of a run that saved one (see its summary.json)")


def _compose(job: list[str]):
    try:
        return compose(config_name="config", overrides=job)
    except MissingConfigException as e:
        group, _, choice = (e.missing_cfg_file or "").rpartition("/")
        if e.options:
            raise UserError(f"{group}={choice}: unknown choice; valid: {', '.join(sorted(e.options))}") from None
        raise UserError(first_line(e)) from None
    except HydraException as e:
        raise UserError(_explain(e, job)) from None
    except OmegaConfBaseException as e:
        raise UserError(_explain(e, job)) from None


def _explain(e: Exception, job: list[str]) -> str:
    """One line for a failed composition: the key, what was wrong, and what is valid."""
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, name = key.rpartition(".")
        valid = _valid_keys(parent, job)
        hint = f"; valid keys under {parent or 'the config'}: {', '.join(valid)}" if valid else ""
        return f"{key}: no such key{hint}"
    message = first_line(cause)
    return f"{key}: {message}" if key and key not in message else message


def _valid_keys(parent: str, job: list[str]) -> list[str]:
    """Keys of `parent` in the config composed with this job's group choices only."""
    choices = [o for o in job if "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
    try:
        node = OmegaConf.select(compose(config_name="config", overrides=choices), parent) if parent else None
    except Exception:
        return []
    return sorted(str(k) for k in node.keys()) if hasattr(node, "keys") else []

