"""A run dir's two records, each read in one place: summary.json (how the run ended) and metrics.jsonl (one line
per epoch).

The runner writes both so that a reader never sees half of one (runner/outputs.py), but a run dir is a plain
dir: a file can be cut off by a full disk, copied in part, or edited. What is not what the runner writes is a
`UserError` naming the file and what is wrong with it; a reader that can go on without one line of
metrics.jsonl (a crash mid-write leaves its last line cut off) passes `on_bad_line` and gets that line's
message instead. Nothing here imports jax.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from runner.errors import UserError

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise _error(path, "not text (it is not UTF-8)") from None
    except OSError as e:
        raise _error(path, f"cannot be read ({e.strerror or type(e).__name__})") from None


def _error(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}")


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words: a list, a string, a number, ..."""
    if isinstance(value, bool):
        return "true or false"
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _not_json(e: json.JSONDecodeError) -> str:
    return f"{e.msg}: line {e.lineno} column {e.colno}"


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
    for key, value in record.items():  # every metric a number; null where it was not finite (runner/outputs.py)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return None, f"has {_kind(value)} for {key}, not a number"
    return record, None
