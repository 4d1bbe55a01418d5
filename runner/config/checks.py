"""The one checker: every parameter of every group against the valid range declared beside its definition.

Where ranges are declared:
  - a conf file that names a callable (`_target_`) lists its parameters' ranges under `_valid_`:
        _target_: optax.adam
        learning_rate: 0.001
        _valid_: {learning_rate: "> 0", b1: "[0, 1)"}
    (a key listed there but absent above is an optional argument the user may add with `+group.key=`);
  - a structured-config schema (dataset, model, trainer) gives `valid` in each field's metadata.

A range is a short string: `> 0`, `>= 1`, `[0, 1)`, `(0, inf)`, prefixed by `int` for whole numbers, `each`
for lists, `null or` where null is allowed, `auto or` where the word `auto` is (a value the run finds for
itself: `optimizer.learning_rate`, runner/training/lr_range.py); or `bool`, `str`, `node` (a mapping with a `_target_`),
`one of a, b, c`. Numbers must be finite.
`check_config` runs before Hydra starts (preflight) and again inside each job, for values a sweeper
samples at run time. Imports neither jax, flax, optax nor orbax, so a mistake is answered fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.errors import UserError

SPEC_KEY = "_valid_"
# Keys Hydra gives meaning to; a conf file sets them, the command line may not (they choose what runs).
RESERVED_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_", SPEC_KEY)
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")
_COMPARISON = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")


def _number(text: str) -> float:
    return float(text.replace("inf", "Infinity")) if "inf" in text else float(text)


def parse_spec(spec: str) -> Callable[[Any], bool]:
    """The predicate a range string describes; raises ValueError for a string that is not a range."""
    spec = spec.strip()
    if spec.startswith("null or "):
        inner = parse_spec(spec[len("null or "):])
        return lambda v: v is None or inner(v)
    if spec.startswith("auto or "):
        inner = parse_spec(spec[len("auto or "):])
        return lambda v: (isinstance(v, str) and v == "auto") or inner(v)
    if spec.startswith("each "):
        inner = parse_spec(spec[len("each "):])
        return lambda v: isinstance(v, (list, tuple)) and all(inner(x) for x in v)
    if spec == "bool":
        return lambda v: isinstance(v, bool)
    if spec == "node":
        return lambda v: isinstance(v, dict) and "_target_" in v
    if spec == "str":
        return lambda v: isinstance(v, str) and bool(v)
    if spec.startswith("one of "):
        options = [o.strip() for o in spec[len("one of "):].split(",")]
        return lambda v: isinstance(v, str) and v in options
    integer = spec.startswith("int ")
    body = spec[len("int "):] if integer else spec
    if m := _INTERVAL.match(body):
        low, high = _number(m[2]), _number(m[3])
        lo_ok = (lambda v: v >= low) if m[1] == "[" else (lambda v: v > low)
        hi_ok = (lambda v: v <= high) if m[4] == "]" else (lambda v: v < high)
        bound = lambda v: lo_ok(v) and hi_ok(v)  # noqa: E731
    elif m := _COMPARISON.match(body):
        limit, op = _number(m[2]), m[1]
        bound = {">": lambda v: v > limit, ">=": lambda v: v >= limit,
                 "<": lambda v: v < limit, "<=": lambda v: v <= limit}[op]
    else:
        raise ValueError(f"not a range: {spec!r}")

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (not integer or isinstance(v, int)) and bound(v)

    return check


def describe(spec: str) -> str:
    """A range string in words: `int >= 1` -> `an integer >= 1`, `[0, 1)` -> `in [0, 1)`."""
    spec = spec.strip()
    for prefix, words in (("null or ", "null or "), ("auto or ", "auto or "), ("each ", "a list, each ")):
        if spec.startswith(prefix):
            return words + describe(spec[len(prefix):])
    if spec == "bool":
        return "true or false"
    if spec == "node":
        return "a mapping with a _target_"
    if spec == "str":
        return "a non-empty string"
    if spec.startswith("one of "):
        return spec
    integer = spec.startswith("int ")
    body = spec[len("int "):] if integer else spec
    body = f"in {body}" if body[0] in "[(" else body
    return f"an integer {body}" if integer else f"a number {body}"


def check_value(key: str, value: Any, spec: str) -> None:
    """Raise UserError `key: must be <spec in words>, got <value>` unless value satisfies spec."""
    if not parse_spec(spec)(value):
        shown = "null" if value is None else repr(value)
        raise UserError(f"{key}: must be {describe(spec)}, got {shown}")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def check_target_node(key: str, node: DictConfig) -> None:
    """Check a node naming a callable: each value in its declared range; an undeclared key must be an
    argument of the callable (only then is the callable imported, so the common path stays free of jax)."""
    specs = node.get(SPEC_KEY) or {}
    undeclared = []
    for name in (str(k) for k in node):
        value = node[name]
        if name.startswith("_"):
            continue
        if isinstance(value, DictConfig) and "_target_" in value:
            check_target_node(f"{key}.{name}", value)
        elif name in specs:
            check_value(f"{key}.{name}", _plain(value), specs[name])
        else:
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{key}.{name}: must be a finite number, got {value}")
            undeclared.append(name)
    if undeclared:
        _check_arguments(key, node, undeclared)


def _check_arguments(key: str, node: DictConfig, names: list[str]) -> None:
    import inspect

    from hydra.utils import get_method

    target = node.get("_target_")
    valid = sorted(set(node.get(SPEC_KEY) or {}) | {str(k) for k in node if not str(k).startswith("_")} - set(names))
    if target is None:
        raise UserError(f"{key}.{names[0]}: no such key; valid: {', '.join(valid)}")
    try:
        params = inspect.signature(get_method(target)).parameters
    except Exception:  # Hydra raises plain exceptions of several types for a bad import path
        raise UserError(f"{key}._target_: cannot import {target!r}") from None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in names:
        if not (takes_any or name in params):
            raise UserError(f"{key}.{name}: not an argument of {target}{_close(name, valid)}; "
                            f"valid: {', '.join(valid)}")


def _close(name: str, candidates: list[str]) -> str:
    """`; did you mean epochs?` for a mistyped key, or nothing."""
    import difflib

    matches = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def check_schema_node(key: str, node: DictConfig) -> None:
    """Check a structured-config group against the `valid` metadata of its dataclass fields."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    for name in (str(k) for k in node if str(k) not in fields):  # `+trainer.epoch=1`: a schema is closed
        raise UserError(f"{key}.{name}: no such key{_close(name, fields)}; valid keys under {key}: "
                        f"{', '.join(fields)}")
    for field in dataclasses.fields(schema):
        value = node[field.name]
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            check_schema_node(f"{key}.{field.name}", value)
        elif isinstance(value, DictConfig) and "_target_" in value:  # a callable inside a schema (dataset.source)
            check_target_node(f"{key}.{field.name}", value)
        elif "valid" in field.metadata:
            check_value(f"{key}.{field.name}", _plain(value), field.metadata["valid"])


@dataclasses.dataclass(frozen=True)
class TopLevel:
    """The top-level keys a config may have (its groups) and those it must have."""

    allowed: set[str]
    required: set[str]


def check_config(cfg: DictConfig, top_level: TopLevel | None = None) -> None:
    """Check a composed config: no missing values, no unknown top-level keys, every group in range."""
    if top_level is not None:
        _check_top_level(cfg, top_level)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]}: needs a value, e.g. dataset=tfds dataset.name=kmnist")
    for key in cfg:
        key = str(key)
        node = cfg[key]
        if not isinstance(node, DictConfig):
            continue
        if dataclasses.is_dataclass(OmegaConf.get_type(node)):
            check_schema_node(key, node)
        elif "_target_" in node or SPEC_KEY in node:
            check_target_node(key, node)
        else:  # a group of named nodes (regularizer.<name>) or of nested ones (normalization.layer)
            _check_named_nodes(key, node)


def _check_named_nodes(key: str, node: DictConfig) -> None:
    """Each mapping of a group of named nodes names a callable: one that does not holds settings of a choice that
    is not chosen (a preset's `regularizer.l1` after `regularizer=[]`), which nothing would build."""
    chosen = [str(name) for name in node if isinstance(node[name], DictConfig) and "_target_" in node[name]]
    for name in (str(n) for n in node):
        child = node[name]
        if not isinstance(child, DictConfig):
            continue
        if "_target_" in child:
            check_target_node(f"{key}.{name}", child)
        elif SPEC_KEY not in child:
            raise UserError(f"{key}.{name}: settings of {name}, which is not chosen ({key}=[{','.join(chosen)}]); "
                            f"valid: choose it ({key}=[{','.join([*chosen, name])}]) or drop {key}.{name}")


def unchecked_parameters(cfg: DictConfig) -> list[str]:
    """The parameters of nodes naming a callable that declare no range under `_valid_` (a conf file of the user's,
    under -cd DIR): only their names are checked (against the callable's signature), never their values."""
    found = []

    def walk(key: str, node: DictConfig) -> None:
        specs = node.get(SPEC_KEY) or {}
        callable_node = "_target_" in node and not dataclasses.is_dataclass(OmegaConf.get_type(node))
        for name in (str(k) for k in node if not str(k).startswith("_")):
            child = node._get_node(name)  # not its value: a missing one (???) is checked elsewhere
            if isinstance(child, DictConfig):
                walk(f"{key}.{name}" if key else name, child)
            elif callable_node and name not in specs:
                found.append(f"{key}.{name}")

    walk("", cfg)
    return found


def _check_top_level(cfg: DictConfig, top_level: TopLevel) -> None:
    keys = {str(k) for k in cfg}
    valid = ", ".join(sorted(top_level.allowed))
    for key in sorted(keys - top_level.allowed):
        raise UserError(f"{key}: unknown top-level key; valid groups: {valid}")
    for key in sorted(top_level.required - keys):
        raise UserError(f"{key}: this group cannot be removed (~{key}); choose another with {key}=<choice>; "
                        f"valid groups: {valid}")


def strip_specs(node: Any) -> Any:
    """A plain container without the `_valid_` declarations (what `instantiate` and logs should see)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: strip_specs(v) for k, v in node.items() if k != SPEC_KEY}
    if isinstance(node, list):
        return [strip_specs(v) for v in node]
    return node
