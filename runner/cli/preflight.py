"""Compose and check every job's config before Hydra starts, turning Hydra's errors into one line each.

Hydra reports a bad override with several lines and exit code 1 after it has made the run dir; here the
same composition happens first, through Hydra's compose API, so a mistake costs nothing on disk. Nothing
here imports jax, flax, optax or orbax, and nothing is instantiated: a mistyped override is answered fast
and a `_target_` can run no code. The result is the command line Hydra will run (a resumed run's saved
overrides first, the output dir pinned) and the claim on the dir it writes; or, for a resumed run that
had ended for good, the one line that says there is nothing to train.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import re
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from runner.cli.relations import validate
from runner.cli.search import check_search
from runner.config.checks import TopLevel, describe, unchecked_parameters
from runner.config.compose import CONF_DIR, compose_config, compose_shared
from runner.config.safety import check_flags, check_interpolations, check_override, check_paths_inside
from runner.console import Console
from runner.errors import UserError, first_line
from runner.rundir.claim import RUN_OUTPUTS, RunDirClaim, has_checkpoint, holds_run, register_job_dir_resolver
from runner.rundir import relaunch
from runner.rundir.records import not_yaml
from runner.rundir.resumed import check_same_job, override_key, resumed_overrides
from runner.scale.distributed import launched_processes, process_index_from_env, shared_run_dir, wait_for_coordinator
from runner.training.loggers import check_logger_packages

FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg",
                    "-p", "--package", "--info", "--experimental-rerun"}
HELP_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "-c", "--cfg")
MAX_CHECKED_JOBS = 256
_PLAIN_PATH = re.compile(r"[\w./-]+")


@dataclasses.dataclass
class Invocation:
    """What a checked command line will do: Hydra's arguments and the dir it writes."""

    argv: list[str]
    multirun: bool = False
    claim: RunDirClaim | None = None  # the run dir (single run) or sweep dir (multirun); None for --help
    finished: str | None = None  # a resumed single run that had ended for good: why there is nothing to train
    # a resumed single run with no checkpoint: what to say, and the runner's files of the earlier attempt to clear
    restart: tuple[str, tuple[str, ...]] | None = None
    # hydra.mode as composed here for these argv (None where no config sets it), which Hydra would compose the
    # whole config again to read (runner/__main__.py `known_hydra_mode`); () where not known
    hydra_mode: tuple = ()


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a Hydra command line."""
    flags, overrides, skip = [], [], False
    for arg in argv:
        if skip:
            flags.append(arg)
            skip = False
        elif arg.startswith("-"):
            flags.append(arg)
            skip = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return flags, overrides


def _flag(flags: list[str], *names: str) -> str | None:
    return next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f in names), None)


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


def preflight(argv: list[str]) -> Invocation:
    """Check every job of this command line; raises UserError on the first bad one."""
    register_job_dir_resolver()  # a sweep's job dirs are named by it
    flags, overrides = split_argv(argv)
    if any(a in HELP_FLAGS for a in argv):
        _check_shown(flags, overrides)
        return Invocation(argv)
    multirun = any(a in ("-m", "--multirun") for a in flags)
    processes = launched_processes()  # srun's tasks, or JAX_NUM_PROCESSES by hand (no jax import)
    if processes > 1:
        overrides = _one_dir_for_all_processes(overrides, multirun)
    check_flags(flags)
    composer = Composer(_flag(flags, "-cn", "--config-name") or "config", _flag(flags, "-cd", "--config-dir"))
    hydra_cfg = _checked_command_line(overrides, composer)
    resume = OmegaConf.select(hydra_cfg, "trainer.resume") is True
    if resume and not multirun:
        overrides = _resumed(overrides, composer)
    if resume and multirun:
        _check_sweep_given(overrides)
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    out_dir, overrides = _pin_dir(dir_key, hydra_cfg, overrides)
    if multirun:
        check_search(hydra_cfg, overrides)
    cfg = _check_jobs(overrides, composer, hydra_cfg, out_dir, multirun, resume)
    if processes > 1 and process_index_from_env() != 0:  # process 0 claims, locks and writes .hydra/
        wait_for_coordinator()  # before Hydra makes anything: an unreachable one is one line, not a stack dump
        return Invocation(flags + overrides + ["hydra.output_subdir=null"], False, None)
    invocation = _claim(flags + overrides, out_dir, dir_key, multirun, cfg)
    # A resumed run's overrides are its earlier ones merged: composed for hydra_cfg before that merge.
    known = not (resume and not multirun) and invocation.argv == flags + overrides
    return dataclasses.replace(invocation, hydra_mode=(hydra_cfg.hydra.mode,) if known else ())


def _one_dir_for_all_processes(overrides: list[str], multirun: bool) -> list[str]:
    """The processes of one run (srun's tasks) share its run dir: the one given, or the one srun's job names."""
    if multirun:
        raise UserError("-m: a sweep cannot run across several processes; valid: one run per srun step")
    if any(override_key(o) == "hydra.run.dir" for o in overrides):
        return overrides
    shared = shared_run_dir()
    if shared is None:
        raise UserError("hydra.run.dir: the processes of one run need one run dir; "
                        "valid: hydra.run.dir=<the same path in every process>")
    return overrides + [f"hydra.run.dir={shared}"]


def _checked_command_line(overrides: list[str], composer: "Composer") -> DictConfig:
    """The first job's config with Hydra's node, once each override is known to be data (runner/config/safety.py)."""
    for override in overrides:
        check_override(override)
    hydra_cfg = composer.hydra(overrides)
    check_interpolations(hydra_cfg, overrides, hydra=True)
    check_interpolations(hydra_cfg, expand_sweep(overrides)[0])
    for override in overrides:
        check_override(override, hydra_cfg)  # now that the callbacks the conf files declare are known
    return hydra_cfg


def _check_jobs(overrides: list[str], composer: "Composer", hydra_cfg: DictConfig, out_dir: Path, multirun: bool,
                resume: bool) -> DictConfig:
    """Compose and check every job of the sweep (or the one run); returns the last job's config."""
    hydra_overrides = [o for o in overrides if _is_hydra(o)]
    # A job's dir is named by its overrides only where the user changed how: then each job's is checked.
    per_job_hydra = multirun and any(override_key(o).startswith("hydra.sweep.subdir") for o in overrides)
    unchecked: dict[str, None] = {}
    for job in expand_sweep(overrides):
        cfg = composer(job)
        check_interpolations(cfg, job)
        validate(cfg, composer.top_level, sweep=multirun)
        check_logger_packages(cfg)  # a chosen tool not installed: before Hydra writes anything
        unchecked.update(dict.fromkeys(unchecked_parameters(cfg)))
        check_paths_inside(composer.hydra(job + hydra_overrides) if per_job_hydra else hydra_cfg, out_dir, multirun)
        if cfg.dataset.check is not None:  # e.g. a local file: read now, before anything is written
            from runner.data import check_dataset  # only now: imports the check's module, no more

            check_dataset(cfg.dataset)
        if resume and multirun:
            _check_same_job(job, overrides, out_dir, cfg, composer)
    for key in unchecked:
        Console().warn(f"warning: {key} has no declared range (`_valid_` in its conf file), so its value is not "
                       "checked; declare one, e.g. _valid_: {" + key.rsplit(".", 1)[1] + ": '> 0'}")
    return cfg


def _claim(argv: list[str], out_dir: Path, dir_key: str, multirun: bool, cfg: DictConfig) -> Invocation:
    """The claim on the output dir, once what it holds agrees with what the command line asks of it."""
    resume = bool(cfg.trainer.resume)
    claim = RunDirClaim(out_dir, dir_key)
    if owner := claim.holder():  # a live run: what its dir holds so far says nothing yet
        raise UserError(f"{dir_key}: {claim.path} is in use by another runner process (pid {owner}); "
                        "wait for it to end, or choose another dir")
    found = _earlier_run(claim.path, multirun)
    if found and not resume:  # its files would be appended to and its .hydra/ rewritten
        raise UserError(f"{dir_key}: {claim.path} already holds a run ({found}); continue with "
                        f"trainer.resume=true {dir_key}={claim.path}, or choose a new dir")
    if resume and multirun and not _earlier_jobs(claim.path):
        raise UserError(f"trainer.resume: {claim.path} holds no sweep to continue; valid: the hydra.sweep.dir "
                        "of an earlier multirun (its job dirs hold .hydra/)")
    if resume and not multirun:
        plan = relaunch.plan(claim.path, cfg.trainer.epochs)
        if plan.action == "skip":
            return Invocation(argv, multirun, claim, finished=plan.line)
        if not has_checkpoint(claim.path):  # killed or failed before its first checkpoint: run it again
            return Invocation(argv + ["trainer.resume=false"], multirun, claim,
                              restart=(f"no checkpoint in {claim.path}/checkpoints (the run stopped before its "
                                       "first): starting it again from epoch 1", plan.clear or RUN_OUTPUTS))
    return Invocation(argv, multirun, claim)


def _check_shown(flags: list[str], overrides: list[str]) -> None:
    """`--help` and `--cfg` with overrides: the same one-line answer to a bad one as a run gets."""
    check_flags(flags)
    for override in overrides:
        check_override(override)
    if not any(f in ("-h", "--help", "-c", "--cfg") for f in flags):  # completion, --info: Hydra's own output
        return
    composer = Composer(_flag(flags, "-cn", "--config-name") or "config", _flag(flags, "-cd", "--config-dir"))
    for job in expand_sweep(overrides)[:1]:
        check_interpolations(composer(job), job)


def _is_hydra(override: str) -> bool:
    """Whether an override sets Hydra's own config (`hydra.run.dir=...`, `hydra/sweeper=optuna`)."""
    return override_key(override).startswith(("hydra.", "hydra/"))


def _earlier_run(path: Path, multirun: bool) -> str | None:
    """What shows that a run dir (or a sweep dir's job dirs) already holds a run, or None."""
    if not multirun:
        return holds_run(path)
    return next((f"{job.name}/{found}" for job in _earlier_jobs(path) if (found := holds_run(job))), None)


def _earlier_jobs(sweep_dir: Path) -> list[Path]:
    """The job dirs an earlier launch left in a sweep dir: Hydra saved a config in each (unless
    hydra.output_subdir=null), or the run wrote its files."""
    if not sweep_dir.is_dir():
        return []
    return [p for p in sorted(sweep_dir.iterdir()) if p.is_dir() and ((p / ".hydra").is_dir() or holds_run(p))]


def _check_sweep_given(overrides: list[str]) -> None:
    if not any(override_key(o) == "hydra.sweep.dir" for o in overrides):
        raise UserError("trainer.resume=true with -m needs hydra.sweep.dir=<the sweep dir of the sweep to continue>")


def _check_same_job(job: list[str], overrides: list[str], sweep_dir: Path, cfg: DictConfig,
                    composer: "Composer") -> None:
    """A re-launched sweep's job whose dir holds a run must be the job that ran there (runner/rundir/resumed.py)."""
    register_job_dir_resolver()
    hydra_cfg = composer.hydra(job + [o for o in overrides if _is_hydra(o)])
    try:
        subdir = OmegaConf.select(hydra_cfg, "hydra.sweep.subdir")
    except OmegaConfBaseException:  # named by what only a running sweep knows (${hydra.job.num}): not checked
        return
    job_dir = sweep_dir / str(subdir)
    if subdir and (job_dir / ".hydra" / "config.yaml").exists():
        check_same_job(job_dir, cfg)


def _resumed(overrides: list[str], composer: "Composer") -> list[str]:
    """A single run with trainer.resume=true: its saved overrides, then these (the dir's checkpoint, or its
    lack, decides later whether the run continues, starts again, or had ended for good)."""
    given = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "hydra.run.dir"), None)
    if not given:
        raise UserError("trainer.resume=true needs hydra.run.dir=<the run dir of the run to continue>")
    run_dir = Path(given)
    if not run_dir.is_dir():
        raise UserError(f"hydra.run.dir: {run_dir} does not exist, so there is no run to resume; valid: the run dir "
                        "of an earlier run (outputs/<date>/<time>)")
    hydra_overrides = [o for o in overrides if _is_hydra(o)]
    task = [o for o in overrides if not _is_hydra(o)]
    return resumed_overrides(run_dir, task, composer) + hydra_overrides


def _pin_dir(key: str, hydra_cfg: DictConfig, overrides: list[str]) -> tuple[Path, list[str]]:
    """The output dir, resolved once here so that the dir claimed is the dir Hydra writes (`${now:}` moves)."""
    given = next((o.split("=", 1)[1] for o in overrides if override_key(o) == key), None)
    if given is not None and not given.strip():
        raise UserError(f"{key}: empty; valid: a directory path, e.g. {key}=outputs/my_run")
    try:
        resolved = str(OmegaConf.select(hydra_cfg, key))
    except OmegaConfBaseException as e:
        raise UserError(f"{key}: {first_line(e)}; valid: a directory path, e.g. {key}=outputs/my_run") from None
    if not resolved.strip():
        raise UserError(f"{key}: {given!r} resolves to an empty path; valid: a directory path, "
                        f"e.g. {key}=outputs/my_run") from None
    if given is None or ("${" in given and _PLAIN_PATH.fullmatch(resolved)):
        overrides = [o for o in overrides if override_key(o) != key] + [f"{key}={resolved}"]
    return Path(resolved), overrides


class Composer:
    """Composes one job's config from conf/ the way `python -m runner` would, errors as one line."""

    def __init__(self, config_name: str, config_dir: str | None = None):
        self.config_name = config_name
        # `-cd DIR` adds the user's conf files to every group they name, as Hydra's own --config-dir does.
        if config_dir is not None and not Path(config_dir).is_dir():
            raise UserError(f"--config-dir {config_dir}: no such directory; valid: a dir of <group>/<choice>.yaml files")
        if config_dir is not None:
            _check_conf_dir(Path(config_dir), config_name)
        self.extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []

    @functools.cached_property
    def top_level(self) -> TopLevel:
        """The groups a config may and must have, composed when first asked: a command line that fails to compose
        is refused without it (a refused choice, `optimizer=adamm`: 0.31 s from start to exit, was 0.40 s)."""
        return _top_level(self.config_name, tuple(self.extra))

    def __call__(self, job: list[str]) -> DictConfig:
        # The first job's group choices were composed for hydra() already: compose_shared reuses that composition.
        return self._compose(job, hydra=False)

    def hydra(self, overrides: list[str]) -> DictConfig:
        """The config with Hydra's own node (hydra.run.dir, ...), for the first job of a sweep."""
        job = expand_sweep(overrides)[0]
        return self._compose(job + [o for o in overrides if _is_hydra(o)], hydra=True)

    def _compose(self, job: list[str], hydra: bool) -> DictConfig:
        return _compose(self.config_name, self.extra, job, hydra)


def _compose(config_name: str, extra: list[str], job: list[str], hydra: bool) -> DictConfig:
    """Hydra's compose, its errors turned into one line each."""
    config_dir = _config_dir(extra)
    try:
        return compose_shared(*job, *extra, config_name=config_name, hydra=hydra, config_dir=config_dir)
    except MissingConfigException as e:
        group, _, choice = (e.missing_cfg_file or "").rpartition("/")
        # A list group (logger=[jsonl,nosuch], regularizer=[...]) gets no options from Hydra: the same line anyway.
        options = e.options or (_group_choices(group, tuple(extra)) if group else [])
        if options and group:
            raise UserError(f"{group}={choice}: unknown choice; valid: {', '.join(sorted(options))}") from None
        if not group and choice == config_name:
            mine = sorted(p.stem for p in Path(config_dir).glob("*.yaml")) if config_dir else []
            raise UserError(f"-cn {choice}: no such primary config; valid: {', '.join(['config', *mine])}") from None
        raise UserError(first_line(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        if (line := _not_in_defaults(e, job, extra)) is not None:
            raise UserError(line) from None
        raise UserError(_explain(e, job)) from None
    except yaml.YAMLError as e:  # a conf file Hydra reads that _check_conf_dir did not (a group of the user's own)
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        raise UserError(f"{mark.name if mark else 'a conf file'}: not YAML ({not_yaml(e)}); valid: a YAML mapping, "
                        "like the runner's conf/<group>/<choice>.yaml") from None


def _config_dir(extra: list[str] | tuple[str, ...]) -> str | None:
    """The `-cd DIR` that `extra` (Composer.extra) names; None without one."""
    return next((path for override in extra for path in re.findall(r"file://([^,\]]+)", override)), None)


def _not_in_defaults(e: Exception, job: list[str], extra: list[str]) -> str | None:
    """`experiment=fast`, where the group has no default to override: the line saying to add it with `+`, or, for
    an unknown choice, the line every group's unknown choice gets."""
    found = re.match(r"Could not override '([\w/]+)'\. No match in the defaults list", str(e))
    if found is None:
        return None
    group = found[1]
    choice = next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0] == group), "CHOICE")
    options = _group_choices(group, tuple(extra))
    if options and choice not in options:
        return f"{group}={choice}: unknown choice; valid: {', '.join(options)} (added with +{group}=CHOICE)"
    return f"{group}={choice}: {group} has no default choice to override; valid: +{group}={choice} (adds it)"


@functools.lru_cache(maxsize=32)
def _group_choices(group: str, extra: tuple[str, ...]) -> list[str]:
    """The choices of a config group where Hydra looks: conf/, then a -cd DIR (`extra` names it)."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType

    search_path = create_config_search_path(f"file://{CONF_DIR}")
    if (config_dir := _config_dir(extra)) is not None:
        search_path.append("command-line", f"file://{config_dir}")
    repository = ConfigRepository(config_search_path=search_path)
    return sorted(repository.get_group_options(group, results_filter=ObjectType.CONFIG))


def _check_conf_dir(conf_dir: Path, config_name: str) -> None:
    """The conf files of a `-cd DIR` that Hydra may read, each read first: one that is not a YAML mapping (broken,
    cut off, not text, a list) is one line naming it, as is a primary config there, which Hydra never reads."""
    primary, builtin = conf_dir / f"{config_name}.yaml", CONF_DIR / f"{config_name}.yaml"
    if primary.is_file():  # (one only the dir has is the primary config, as Hydra finds it: read like the rest)
        mine = _read_conf_file(primary, None)
        if builtin.is_file() and mine != OmegaConf.to_container(OmegaConf.load(builtin)):  # a copy changes nothing
            raise UserError(f"{primary}: not read, so what it sets would be silently ignored: the runner's own "
                            f"conf/{config_name}.yaml is the primary config, and --config-dir adds choices to its "
                            f"groups; valid: remove it, or put what it changes in {conf_dir}/experiment/NAME.yaml "
                            "(starting with '# @package _global_') and add +experiment=NAME")
    for group in _conf_groups():
        for path in sorted((conf_dir / group).glob("*.yaml")):
            _read_conf_file(path, group)


@functools.lru_cache(maxsize=1)
def _conf_groups() -> tuple[str, ...]:
    """The runner's config groups, nested ones included (experiment/transfer, hydra/launcher)."""
    return tuple(sorted(str(d.relative_to(CONF_DIR)) for d in CONF_DIR.rglob("*") if d.is_dir()))


def _read_conf_file(path: Path, group: str | None) -> dict | None:
    """A user's conf file as Hydra will read it; UserError naming the file unless it is a YAML mapping (or empty),
    and, in a group whose every choice names a callable, one that names a callable too (or a defaults list)."""
    from omegaconf._utils import get_yaml_loader  # the loader Hydra reads conf files with

    example = _callable_example(group) if group else None
    if example:
        valid = f"valid: a YAML mapping naming a callable with _target_, like conf/{group}/{example}.yaml"
    else:
        valid = f"valid: a YAML mapping, like the runner's conf/{f'{group}/*' if group else 'config'}.yaml"
    try:
        value = yaml.load(path.read_text(), Loader=get_yaml_loader())
    except UnicodeDecodeError:
        raise UserError(f"{path}: not text (it is not UTF-8); {valid}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or type(e).__name__}); {valid}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not YAML ({not_yaml(e)}); {valid}") from None
    if value is not None and not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"the {type(value).__name__} {str(value)[:40]!r}"
        raise UserError(f"{path}: holds {kind}, not a mapping of keys; {valid}")
    if example and not (value and ("_target_" in value or "defaults" in value)):
        raise UserError(f"{path}: {'empty' if not value else 'names no callable (no _target_)'}; {valid}")
    return value


@functools.lru_cache(maxsize=64)
def _callable_example(group: str) -> str | None:
    """A built-in choice of `group` when every one of them names a callable (`_target_`), so a choice of the user's
    must too; None for groups of plain settings (dataset, experiment, ...)."""
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    loaded = [OmegaConf.load(f) for f in files]
    if files and all(isinstance(node, DictConfig) and "_target_" in node for node in loaded):
        return files[0].stem
    return None


@functools.lru_cache(maxsize=8)
def _top_level(config_name: str, extra: tuple[str, ...]) -> TopLevel:
    """The groups a config may and must have: its primary config's keys and defaults list (composed once)."""
    keys = {str(k) for k in _compose(config_name, list(extra), [], hydra=False)}
    groups = _default_groups(config_name, _config_dir(extra))
    return TopLevel(allowed=keys | set(groups),
                    required={g for g, choice in groups.items()
                              if choice is not None and not isinstance(choice, ListConfig)})


def _default_groups(config_name: str, config_dir: str | None) -> dict:
    """{group: choice} of a primary config's defaults list, where Hydra finds it (conf/, then a -cd DIR), with those
    of a primary config it names (a -cd DIR's `defaults: [config, _self_]` extends the runner's)."""
    dirs = [CONF_DIR] + ([Path(config_dir)] if config_dir else [])
    path = next(d / f"{config_name}.yaml" for d in dirs if (d / f"{config_name}.yaml").is_file())
    groups = {}
    for entry in OmegaConf.load(path).get("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_" and any((d / f"{entry}.yaml").is_file() for d in dirs):
            groups.update(_default_groups(entry, config_dir))
        elif isinstance(entry, DictConfig):
            groups.update({k: v for k, v in entry.items() if not str(k).startswith(("override ", "hydra/"))})
    return groups


def _explain(e: Exception, job: list[str]) -> str:
    """One line for a failed composition: the key, what was wrong, and what is valid."""
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, name = key.rpartition(".")
        return _no_such_key(key, job)
    message, spec = first_line(cause), _declared_range(cause)
    valid = f"valid: {describe(spec)}" if spec else "give a value"
    if key and "is not Optional" in message:
        return f"{key}: null is not valid here; {valid}"
    line = f"{key}: {message}" if key and not message.startswith(key) else message
    return f"{line}; {valid}" if spec else line


def _declared_range(cause: Exception) -> str | None:
    """The range a schema field declares (runner/config/compose.py), for a value OmegaConf could not convert to its type."""
    schema, name = getattr(cause, "object_type", None), getattr(cause, "key", None)
    if not dataclasses.is_dataclass(schema):
        return None
    for field in dataclasses.fields(schema):
        if field.name == name:
            return field.metadata.get("valid") or ("bool" if field.type in ("bool", bool) else None)
    return None


def _no_such_key(key: str, job: list[str]) -> str:
    """What to type instead of a key the chosen config lacks: `+key=value` for an optional argument its conf file
    declares, the choices of the group that set it, or the close matches and the keys there are."""
    parent, _, name = key.rpartition(".")
    value = next((o.split("=", 1)[1] for o in job if override_key(o) == key), "...")
    group = parent.split(".")[0]
    choice = next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0] == group), None) or _default_choice(group)
    chosen = f"{group}={choice}" if choice else parent
    optional = _declared_optional(parent, job)
    if name in optional:
        return f"{key}: {chosen} does not set it; it is an optional argument there: add it with +{key}={value}"
    setting = _choices_setting(group, parent[len(group) + 1:], name) if parent else []
    if setting:
        return (f"{key}: {chosen} has no {name}; " + ", ".join(f"{group}={c}" for c in setting)
                + f" set{'s' if len(setting) == 1 else ''} it: choose {'it' if len(setting) == 1 else 'one'}")
    valid = _valid_keys(parent, job)
    close = difflib.get_close_matches(name, valid, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    listed = f"; valid keys under {parent or 'the config'}: {', '.join(valid)}" if valid else \
        (f"; {chosen} takes no settings" if parent else "")
    return f"{key}: no such key{hint}{listed}"


def _default_choice(group: str) -> str | None:
    defaults = OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", [])
    return next((str(entry[group]) for entry in defaults if isinstance(entry, DictConfig) and group in entry
                 and isinstance(entry[group], str)), None)


def _declared_optional(parent: str, job: list[str]) -> set[str]:
    """The optional arguments (`_valid_` entries) of the node `parent` as this job's choices compose it."""
    choices = [o for o in job if "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
    try:
        node = OmegaConf.select(compose_config(*choices), parent) if parent else None
    except Exception:
        return set()
    return set(node.get("_valid_") or {}) - set(node.keys()) if isinstance(node, DictConfig) else set()


def _choices_setting(group: str, inner: str, name: str) -> list[str]:
    """The built-in choices of `group` whose conf file sets `name` (under `inner`, a dotted path inside it)."""
    found = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        try:
            node = OmegaConf.select(OmegaConf.load(path), inner) if inner else OmegaConf.load(path)
        except Exception:
            continue
        if isinstance(node, DictConfig) and name in node:
            found.append(path.stem)
    return found


def _valid_keys(parent: str, job: list[str]) -> list[str]:
    """Keys of `parent` in the config composed with this job's group choices only (`_valid_` lists extras)."""
    choices = [o for o in job if "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
    try:
        node = OmegaConf.select(compose_config(*choices), parent) if parent else None
    except Exception:
        return []
    if not hasattr(node, "keys"):
        return []
    return sorted({str(k) for k in node.keys() if not str(k).startswith("_")} | set(node.get("_valid_") or {}))
