"""A run dir's files that the runner reads back, each read in one place: summary.json (how the run ended),
metrics.jsonl (one line per epoch), .hydra/config.yaml and .hydra/overrides.yaml (what Hydra saved of the config
and the command line, read to resume a run or to reuse its net) and input_scaling.json (what its inputs were
scaled by).

The runner writes them so that a reader never sees half of one (runner/rundir/outputs.py), but a run dir is a plain
dir: a file can be cut off by a full disk, copied in part, or edited. What is not what the runner writes (empty,
cut off, not JSON or YAML, the wrong type, the wrong shape) is a `UserError` naming the file and what is wrong with
it; a reader that can go on without one line of metrics.jsonl (a crash mid-write leaves its last line cut off)
passes `on_bad_line` and gets that line's message instead. Nothing here imports jax.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from runner.data.splits import Scaling
from runner.errors import UserError

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
SCALING_FILE = "input_scaling.json"


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise _error(path, "not text (it is not UTF-8)") from None
    except OSError as e:
        raise _error(path, f"cannot be read ({e.strerror or type(e).__name__})") from None


def _error(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}")


def _kind(value: Any, mapping: str = "an object") -> str:
    """What a JSON value is, in JSON's words: a list, a string, a number, ... (`mapping`: what YAML calls a dict)."""
    if isinstance(value, bool):
        return "true or false"
    names = {dict: mapping, list: "a list", str: "a string", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _not_json(e: json.JSONDecodeError) -> str:
    return f"{e.msg}: line {e.lineno} column {e.colno}"


def _yaml(path: Path, text: str, valid: str = "") -> Any:
    """The YAML value of a file's text, read as OmegaConf reads it (`1e-07` a number); not YAML: one line."""
    from omegaconf._utils import get_yaml_loader  # OmegaConf's own loader: what OmegaConf.load would read

    try:
        return yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError as e:
        raise _error(path, f"not YAML ({not_yaml(e)}){valid}") from None


def _json(path: Path, text: str, valid: str = "") -> Any:
    """The JSON value of a file's text; not JSON: one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(path, f"not JSON ({_not_json(e)}){valid}") from None


def _document(path: Path, valid: str, parse: Callable[[Path, str, str], Any]) -> Any:
    """A file's text parsed by `parse` (_yaml, _json); UserError naming the file when it is unreadable, empty or
    does not parse, each with `valid`, what the file should hold."""
    text = _text(path)
    if not text.strip():
        raise _error(path, f"empty; {valid}")
    return parse(path, text, f"; {valid}")


def not_yaml(e: yaml.YAMLError) -> str:
    """What a YAML parser found wrong and where, in one line: `expected ',' or ']', but got '<stream end>': line 2
    column 1`."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or type(e).__name__
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f": line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return " ".join(str(problem).split()) + where


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json as a dict. Raises UserError naming the file when it is missing or unreadable, empty, not
    JSON, or not a JSON object with a string `status`."""
    path = Path(path)
    text = _text(path)
    if not text.strip():
        raise _error(path, "empty; valid: a JSON object, as the runner writes it when a run ends")
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(path, f"not JSON ({_not_json(e)})") from None
    if not isinstance(summary, dict):
        raise _error(path, f"holds {_kind(summary)}, not a JSON object")
    if not isinstance(summary.get("status", ""), str):
        raise _error(path, f"its status is {_kind(summary['status'])}, not a string")
    return summary


def read_metrics(path: Path, on_bad_line: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl's records, one per epoch in the order written; [] when the file does not exist.

    A line that is not a JSON object with an integer `epoch` and numbers (or null) for the rest raises UserError
    naming the file, the line and what is wrong; with `on_bad_line`, that one-line message goes to it instead and
    the line is left out. Blank lines are skipped. An unreadable file raises in either case."""
    path = Path(path)
    if not path.exists():
        return []
    text = _text(path)
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record, problem = _record(line, last=number == len(lines) and not text.endswith("\n"))
        if problem is None:
            records.append(record)
        elif on_bad_line is None:
            raise _error(path, f"line {number} {problem}")
        else:
            on_bad_line(f"{path}: line {number} {problem}")
    return records


def best_val_accuracy(metrics: list[dict[str, Any]]) -> float | None:
    """The best validation accuracy among metrics.jsonl's records; None without one (no validation split writes
    null): what summary.json says, for a run, a replicas member and a sweep's skipped job alike."""
    values = [r["val_accuracy"] for r in metrics if isinstance(r.get("val_accuracy"), (int, float))]
    return max(values) if values else None


def leave_out(message: str) -> None:
    """`on_bad_line` for a reader that goes on as if the line had not been written: the run itself, after a crash
    cut its last line (a resumed run names the epochs metrics.jsonl lacks)."""
    del message


def _record(line: str, last: bool) -> tuple[dict[str, Any] | None, str | None]:
    """One line of metrics.jsonl: (its record, None), or (None, what is wrong with it)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        if last:  # the runner ends every line it writes: a last line without its end was cut off
            return None, "is cut off (no end of line: the run stopped while writing it, or the file was cut)"
        return None, f"is not JSON ({_not_json(e)})"
    if not isinstance(record, dict):
        return None, f"holds {_kind(record)}, not a JSON object"
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        return None, f"has no integer epoch (epoch: {json.dumps(epoch)})"
    for key, value in record.items():  # every metric a number; null where it was not finite (runner/rundir/outputs.py)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return None, f"has {_kind(value)} for {key}, not a number"
    return record, None


def read_config(path: Path) -> DictConfig:
    """A config Hydra saved (a run dir's .hydra/config.yaml). Raises UserError naming the file when it is missing
    or unreadable, empty, not YAML, or not a mapping of config groups."""
    path = Path(path)
    valid = "valid: the config Hydra saves in a run dir when the run starts"
    config = _document(path, valid, _yaml)
    if not isinstance(config, dict):
        raise _error(path, f"holds {_kind(config, 'a mapping')}, not a mapping of config groups; {valid}")
    try:
        return OmegaConf.create(config)
    except Exception as e:  # e.g. a key OmegaConf cannot take
        raise _error(path, f"not a config ({' '.join(str(e).split()[:30])}); {valid}") from None


def read_overrides(path: Path) -> list[str]:
    """The command line Hydra saved (a run dir's .hydra/overrides.yaml): a list of overrides, [] for none. Raises
    UserError naming the file when it is missing or unreadable, empty, not YAML, or not a list of strings."""
    path = Path(path)
    valid = "valid: a YAML list of overrides, as Hydra saves them ([] for none)"
    overrides = _document(path, valid, _yaml)
    if not isinstance(overrides, list):
        raise _error(path, f"holds {_kind(overrides, 'a mapping')}, not a list of overrides; {valid}")
    for number, override in enumerate(overrides, 1):
        if not isinstance(override, str) or "=" not in override and not override.startswith("~"):
            raise _error(path, f"its entry {number} ({json.dumps(override, default=str)}) is not an override "
                               f"(key=value); {valid}")
    return overrides


def read_scaling(path: Path) -> Scaling:
    """What a run's inputs were scaled by (its input_scaling.json): per channel, (x - mean) / std. Raises UserError
    naming the file when it is missing or unreadable, empty, not JSON, or not equally long lists of finite numbers
    (std > 0) under mean and std."""
    path = Path(path)
    valid = 'valid: {"mean": [...], "std": [...]}, one finite number per input channel each, std > 0'
    data = _document(path, valid, _json)
    if not isinstance(data, dict):
        raise _error(path, f"holds {_kind(data)}, not a JSON object; {valid}")
    for key in ("mean", "std"):
        values = data.get(key)
        if key not in data:
            raise _error(path, f"has no {key}; {valid}")
        if not isinstance(values, list) or not values:
            raise _error(path, f"its {key} is {_kind(values) if values != [] else 'an empty list'}, not a list of "
                               f"numbers; {valid}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise _error(path, f"its {key} holds a value that is not a finite number; {valid}")
    if len(data["mean"]) != len(data["std"]):
        raise _error(path, f"has {len(data['mean'])} means but {len(data['std'])} stds; {valid}")
    if min(data["std"]) <= 0:
        raise _error(path, f"has a std of {min(data['std'])}; {valid}")
    return Scaling.from_json(data)
