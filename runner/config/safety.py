"""What the command line may do: its values are data, and what it makes the runner write stays inside the run dir.

Two rules, checked before Hydra starts (preflight) and, for values a sweeper samples, again inside each job:
  - Config is data. A command-line override names no key Hydra gives meaning to (`_target_`, `_args_`,
    `_partial_`, `_recursive_`, `_convert_`, `_valid_`) anywhere in its text, at any depth of its value; an
    interpolation in a value resolves to a plain value, never to a config node (which could carry a `_target_`);
    `hydra.callbacks` takes only new values for the keys its conf file gave; `--experimental-rerun` (a pickle)
    is refused. Conf files (conf/, `-cd DIR`, `hydra.searchpath`) may name callables: they are trusted code.
  - Nothing escapes. Every path Hydra writes for a run (its `.hydra/` output subdir, a sweep's job dirs, log
    files) resolves inside the run dir or sweep dir, checked before anything is written.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.config.checks import RESERVED_KEYS
from runner.errors import UserError, first_line

REFUSED_FLAGS = {"--experimental-rerun": "it loads a pickled config, which can run any code"}
SET_BY_HYDRA = ("hydra.runtime", "hydra.overrides", "hydra.job.num", "hydra.job.id", "hydra.job.override_dirname",
                "hydra.job.config_name", "hydra.mode")
MAX_VALUE_LENGTH = 4096  # characters of one override's value: beyond any path or list a run takes
_RESERVED = re.compile("|".join(re.escape(k) for k in RESERVED_KEYS))
_INTERPOLATION = re.compile(r"\$\{")


def check_flags(flags: list[str]) -> None:
    """Refuse the Hydra flags that would run what the user did not write."""
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in REFUSED_FLAGS:
            raise UserError(f"{name}: refused, {REFUSED_FLAGS[name]}; valid: the overrides themselves "
                            "(a run's .hydra/overrides.yaml lists them)")


def check_override(line: str, hydra_cfg: DictConfig | None = None) -> None:
    """One override as typed: data only. With `hydra_cfg` (the composed config with Hydra's node), also the
    `hydra.callbacks` rule, which needs to know the callbacks and keys the conf files declared."""
    key, _, value = line.partition("=")
    bare = key.lstrip("+~")
    if found := _RESERVED.search(line):
        raise UserError(f"{bare}: {found[0]} cannot be set on the command line, in a key or at any depth of a "
                        "value (config is data: callables come from conf files); valid: group=choice, or a conf "
                        "file of your own under -cd DIR")
    if bare.startswith(SET_BY_HYDRA):
        raise UserError(f"{bare}: Hydra sets it as the job runs, so a value given here would be ignored; valid: "
                        "hydra.run.dir, hydra.sweep.dir, hydra.job.name and the other keys of `--cfg hydra`")
    if len(value) > MAX_VALUE_LENGTH:
        raise UserError(f"{bare}: a value of {len(value):,} characters; valid: at most {MAX_VALUE_LENGTH:,}")
    if hydra_cfg is not None and bare.startswith(("hydra/callbacks", "hydra.callbacks")):
        _check_callback_override(key, bare, value, hydra_cfg)


def _check_callback_override(key: str, bare: str, value: str, hydra_cfg: DictConfig | None) -> None:
    declared = OmegaConf.select(hydra_cfg, "hydra.callbacks") if hydra_cfg is not None else None
    parts = bare.split(".")
    ok = (not key.startswith(("+", "~")) and len(parts) == 4 and declared is not None
          and parts[2] in declared and parts[3] in declared[parts[2]]
          and not isinstance(declared[parts[2]][parts[3]], (DictConfig, ListConfig))
          and not value.lstrip().startswith(("{", "[")))
    if not ok:
        valid = ", ".join(f"hydra.callbacks.{name}.{k}" for name in (declared or {})
                          for k in declared[name] if not str(k).startswith("_")) or "none"
        raise UserError(f"{bare}: the command line may not add, remove or replace Hydra callbacks (they run "
                        f"code); valid: a new value for {valid}")


def check_interpolations(cfg: DictConfig, lines: list[str], hydra: bool = False) -> None:
    """An interpolation in a command-line value resolves, and to a plain value: `${oc.env:HOME}` is data,
    `${optimizer}` (a node, which may name a callable) is not. Every value of a job's config must resolve.
    With `hydra`, the overrides of Hydra's own node are checked, in the config with Hydra's node."""
    if hydra:
        cfg = with_runtime(cfg)
    for line in lines:
        key, _, value = line.partition("=")
        bare = key.lstrip("+~")
        if not _INTERPOLATION.search(value) or bare.startswith(("hydra.", "hydra/")) != hydra or key.startswith("~"):
            continue
        try:
            node = OmegaConf.select(cfg, bare, throw_on_resolution_failure=True)
        except OmegaConfBaseException as e:
            raise UserError(f"{bare}: cannot resolve {value!r}: {first_line(e)}; valid: a value, or an "
                            "interpolation that resolves to one (e.g. ${oc.env:NAME,default})") from None
        if isinstance(node, (DictConfig, ListConfig)) and _has_interpolated_node(cfg, bare):
            raise UserError(f"{bare}: {value!r} resolves to a config node; valid: an interpolation that gives "
                            "a plain value (a number, a string, a path), e.g. ${oc.env:HOME}")
    if not hydra:  # Hydra's node holds values only a running job knows
        for group in (str(k) for k in cfg if str(k) != "hydra"):
            resolve_all(cfg[group], group) if isinstance(cfg[group], (DictConfig, ListConfig)) else None


def with_runtime(hydra_cfg: DictConfig) -> DictConfig:
    """A copy of a composed config with Hydra's node, its values known only once a sweep runs (the job's number
    and id) filled in: any value names a subdir as well as the real one."""
    cfg = copy.deepcopy(hydra_cfg)
    for key, value in (("job.num", 0), ("job.id", "0")):
        if OmegaConf.select(cfg.hydra, key, default=None) is None:
            OmegaConf.update(cfg.hydra, key, value, force_add=True)
    return cfg


def _has_interpolated_node(cfg: DictConfig, key: str) -> bool:
    """Whether the node at `key` is itself an interpolation, or holds one that gives a node."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is not None and OmegaConf.is_interpolation(parent, name):
        return True
    node = OmegaConf.select(cfg, key)
    children = node.keys() if isinstance(node, DictConfig) else range(len(node))
    return any(OmegaConf.is_interpolation(node, child) and
               isinstance(OmegaConf.select(node, str(child)), (DictConfig, ListConfig)) for child in children)


def resolve_all(cfg: DictConfig, prefix: str = "") -> Any:
    """The config as plain data, every interpolation resolved; a value that cannot be is one line naming it."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or prefix or "the config"
        raise UserError(f"{key}: cannot resolve: {first_line(e)}; valid: a value, or an interpolation "
                        "that resolves (e.g. ${oc.env:NAME,default})") from None
    except RecursionError:
        raise UserError(f"{prefix or 'the config'}: an interpolation refers to itself; valid: a value") from None


def check_paths_inside(hydra_cfg: DictConfig, out_dir: Path, multirun: bool) -> None:
    """Every path Hydra would write for this job lies inside the run dir (or for a sweep, the sweep dir):
    the output subdir, the job's dir, and any log file a logging handler names."""
    root = out_dir.absolute()
    node = with_runtime(hydra_cfg).hydra
    job_dir = root
    if multirun:
        subdir = _select(node, "sweep.subdir")
        job_dir = _inside(root, subdir, "hydra.sweep.subdir", allow_same=False)
    subdir = _select(node, "output_subdir")
    if subdir is not None:
        _inside(job_dir, subdir, "hydra.output_subdir", allow_same=False)
    node.runtime.output_dir = str(job_dir)  # log file names interpolate it: resolve them against this job's dir
    for group in ("job_logging", "hydra_logging"):
        handlers = OmegaConf.select(node, f"{group}.handlers") or {}
        for name in handlers:
            filename = _select(node, f"{group}.handlers.{name}.filename")
            if filename is not None:
                _inside(job_dir if group == "job_logging" else root, filename,
                        f"hydra.{group}.handlers.{name}.filename", allow_same=False, relative_to=Path.cwd())


def _select(node: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(node, key, throw_on_resolution_failure=True)
    except OmegaConfBaseException as e:
        raise UserError(f"hydra.{key}: cannot resolve: {first_line(e)}") from None


def _inside(root: Path, path: Any, key: str, allow_same: bool, relative_to: Path | None = None) -> Path:
    """`path` (relative to `relative_to`, else to root) resolved; UserError unless it lies inside root."""
    text = str(path)
    target = Path(text) if Path(text).is_absolute() else (relative_to or root) / text
    resolved, base = target.resolve(), root.resolve()
    if resolved == base and not allow_same:
        raise UserError(f"{key}: {text!r} is {base} itself; valid: a relative path inside it, e.g. a name")
    if not text.strip() or not resolved.is_relative_to(base):
        raise UserError(f"{key}: {text!r} resolves to {resolved}, outside {base}; valid: a relative path "
                        "inside it, without '..'")
    return target
