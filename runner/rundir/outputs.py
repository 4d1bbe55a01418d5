"""Files in a run dir, written so that a crash or interrupt never leaves one half-written.

summary.json and other whole files go through a temp file and a rename; metrics.jsonl is appended one
flushed line at a time, and readers skip a torn last line. Each writer notes a path it creates in the run dir's
manifest (runner/rundir/claim.py), so a failed run takes back exactly what it wrote.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from runner.rundir.claim import note_created


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: a non-finite float is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would otherwise survive the rename


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` (or bytes) to `path` so readers see the old file or the new one, never a part."""
    path = Path(path)
    note_created(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_atomic(path, json.dumps(_clean(obj), indent=2) + "\n")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return finite_or_none(obj)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and push it to disk before returning."""
    note_created(path)
    with open(path, "a") as f:
        f.write(json.dumps(_clean(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every complete record of a JSON-lines file; a torn last line (a crash mid-write) is skipped."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def rewrite_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Atomically replace a JSON-lines file (used when a resumed run drops records past its checkpoint)."""
    write_atomic(path, "".join(json.dumps(_clean(r)) + "\n" for r in records))


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself if it is a run dir, else every run dir below it, in name order (the report's and the
    catalog's runs)."""
    from runner.errors import UserError

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; give run dirs or multirun dirs (e.g. outputs/multirun/...)")
    def is_run(p: Path) -> bool:
        return (p / ".hydra").is_dir() and ((p / "metrics.jsonl").exists() or (p / "summary.json").exists())

    # A run dir is itself; anything else (a multirun dir, outputs/, a trainer.replicas run) holds its runs below.
    runs = [path] if is_run(path) else sorted(p.parent for p in path.rglob(".hydra") if is_run(p.parent))
    if not runs:
        raise UserError(f"{path}: no run dirs in it (a run dir has .hydra/ and metrics.jsonl or summary.json)")
    return runs
