"""The catalog of finished runs: what each net is, what it learned, where it is (`python -m runner.models` lists it).

A run is an entry when its summary.json says it finished (completed, early_stopped or diverged: runner/rundir/
relaunch.py's FINAL). Only the two small files are read (summary.json, .hydra/config.yaml) and nothing imports JAX.
`transfer.source=best:DATASET` (runner/reuse/transfer.py) takes `best_run`: the most accurate finished run on
DATASET under outputs/ whose input shape is the current run's.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import yaml

from runner.errors import UserError, first_line
from runner.rundir.outputs import find_run_dirs
from runner.rundir.records import SUMMARY_FILE, read_summary
from runner.rundir.relaunch import FINAL

DEFAULT_DIR = Path("outputs")
COLUMNS = ("dataset", "input_shape", "architecture", "layers", "test_accuracy", "date", "path")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser, where PyYAML has it
CONFIG_SECTIONS = ("dataset", "model", "activation", "normalization")  # what an entry reads of a saved config


@dataclass(frozen=True)
class Entry:
    """One finished run of the catalog."""

    path: Path
    dataset: str
    input_shape: tuple[int, ...] | None
    architecture: str
    layers: str
    test_accuracy: float | None
    finished: float  # seconds since the epoch: summary.json's modification time
    status: str

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.finished).strftime("%Y-%m-%d %H:%M")

    def record(self) -> dict[str, Any]:
        """The entry as `--json` prints it."""
        return {"dataset": self.dataset, "input_shape": list(self.input_shape) if self.input_shape else None,
                "architecture": self.architecture, "layers": self.layers, "test_accuracy": self.test_accuracy,
                "date": datetime.fromtimestamp(self.finished).isoformat(timespec="seconds"), "status": self.status,
                "path": str(self.path)}


SORTS = {  # --sort: each a key for sorted(), best or newest first
    "test_accuracy": lambda e: (-e.test_accuracy if e.test_accuracy is not None else math.inf, -e.finished),
    "date": lambda e: (-e.finished, str(e.path)),
    "dataset": lambda e: (e.dataset, -(e.test_accuracy or 0.0), -e.finished),
    "path": lambda e: str(e.path),
}


def read_entry(run_dir: Path) -> Entry | None:
    """The run's entry; None if it has not finished (running, interrupted, failed). Raises UserError (summary.json,
    runner/rundir/records.py), OSError, yaml.YAMLError or KeyError/TypeError/AttributeError (a config that is not the
    runner's) when unreadable."""
    summary_file = run_dir / SUMMARY_FILE
    if not summary_file.is_file():
        return None  # still running, or killed before its summary
    summary = read_summary(summary_file)
    if summary.get("status") not in FINAL:
        return None
    cfg = read_sections((run_dir / ".hydra" / "config.yaml").read_text(), CONFIG_SECTIONS)
    shape = summary.get("input_shape")
    accuracy = summary.get("test_accuracy")
    return Entry(run_dir, str(cfg["dataset"]["name"]), tuple(int(n) for n in shape) if shape else None,
                 architecture(cfg), layers(cfg["model"]),
                 float(accuracy) if isinstance(accuracy, (int, float)) else None,
                 summary_file.stat().st_mtime, summary["status"])


def read_sections(text: str, keys: Sequence[str]) -> dict:
    """The top-level `keys` of a YAML mapping as Hydra saves a config (block style, one key per unindented line),
    without their `_valid_` declarations: only those lines are parsed, a tenth of a run's config (parsing is most
    of what listing 1,000 runs costs)."""
    kept, keep, skip_below = [], False, None
    for line in text.splitlines():
        if line[:1] not in ("", " ", "-", "#"):  # a top-level key starts here; "- " lines continue its list
            keep = line.split(":", 1)[0] in keys
        indent = len(line) - len(line.lstrip(" "))
        if skip_below is not None and (indent > skip_below or not line.strip()):
            continue  # inside a `_valid_` block
        skip_below = indent if line.lstrip(" ").startswith("_valid_:") else None
        if keep and skip_below is None:
            kept.append(line)
    sections = yaml.load("\n".join(kept), Loader=_LOADER) or {}
    if not all(key in sections for key in keys):  # written some other way: the whole file
        sections = yaml.load(text, Loader=_LOADER)
    return sections


def architecture(cfg: dict) -> str:
    """"mlp, elu, batch_norm": the model kind, the activation and the normalization, named as conf/ names them."""
    model = cfg["model"]
    # runner/net/model.py's Net has depth and channels; a model of one's own is named by its callable
    kind = ("cnn" if model.get("channels") else "mlp") if "depth" in model and "channels" in model \
        else _name(model.get("_target_", "model"))
    norm = cfg["normalization"]
    normalization = "none" if norm.get("layer") is None else _name(norm["layer"]["_target_"])
    if norm.get("layer") is not None and norm.get("position") == "post":
        normalization += " (post)"
    return f"{kind}, {_name(cfg['activation']['_target_'])}, {normalization}"


def layers(model: dict) -> str:
    """The hidden layers: "conv 32,64; dense 3x100" (runner/net/model.py's Net fields)."""
    widths = model.get("widths") or [model.get("width")] * int(model.get("depth") or 0)
    dense = (f"{len(widths)}x{widths[0]}" if len(set(widths)) == 1 else ",".join(map(str, widths))) if widths else ""
    channels = model.get("channels") or []
    parts = ([f"conv {','.join(map(str, channels))}"] if channels else []) + ([f"dense {dense}"] if dense else [])
    return "; ".join(parts) or "none"


def _name(target: str) -> str:
    """`jax.nn.elu` -> elu, `flax.linen.BatchNorm` -> batch_norm: a callable's name as a conf file would be named."""
    return re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", "_", str(target).rsplit(".", 1)[-1]).lower()  # PReLU -> prelu


def catalog(dirs: Sequence[Path], dataset: str | None = None) -> tuple[list[Entry], list[tuple[Path, str]]]:
    """(entries of the finished runs under `dirs`, on `dataset` if given; (run dir, why) of the unreadable ones)."""
    entries, skipped = [], []
    for run_dir in sorted({Path(os.path.abspath(d)) for p in dirs for d in find_run_dirs(Path(p))}):
        try:
            entry = read_entry(run_dir)
        except (UserError, OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
            skipped.append((run_dir, first_line(e).replace(f"{run_dir}{os.sep}", "")))  # the file, within its dir
            continue
        if entry is not None and (dataset is None or entry.dataset == dataset):
            entries.append(entry)
    return entries, skipped


def best_run(dataset: str, input_shape: tuple[int, ...] | None, dirs: Sequence[Path] = (DEFAULT_DIR,)) -> Entry:
    """The finished run on `dataset` with the highest test accuracy whose input shape is `input_shape` (any, if
    None; ties: the newest); none is one line naming what was found."""
    key = f"transfer.source=best:{dataset}"
    try:
        entries = catalog([d for d in dirs if Path(d).is_dir()], dataset)[0]
    except UserError:  # no run dirs at all
        entries = []
    entries = [e for e in entries if e.test_accuracy is not None]
    fitting = [e for e in entries if input_shape is None or e.input_shape == tuple(input_shape)]
    if not fitting:
        where = ", ".join(map(str, dirs))
        shapes = sorted({"x".join(map(str, e.input_shape)) if e.input_shape else "unrecorded" for e in entries})
        seen = (f"its {len(entries)} finished run(s) there have input shape {', '.join(shapes)}, this run's is "
                f"{'x'.join(map(str, input_shape))}" if entries else "none there")
        raise UserError(f"{key}: no finished run on {dataset} under {where} fits ({seen}); valid: train one on "
                        f"{dataset} first (python -m runner dataset={dataset}), or transfer.source=RUN_DIR")
    return min(fitting, key=SORTS["test_accuracy"])
