"""Checkpoints of a run, with orbax: everything needed to continue bit for bit.

A checkpoint holds the train state (params, batch statistics, optimizer state, step — which fixes the
schedule position and, through fold_in, every RNG draw), the epoch (which fixes the data order), and the
host loop's own state (early stopping). Orbax writes each one to a temporary dir and renames it when
complete, so a partly written checkpoint is never listed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orbax.checkpoint as ocp
from flax import serialization, traverse_util

from runner.errors import UserError, first_line
from runner.rundir.claim import note_created


def _quiet_closed_loop_callbacks() -> None:
    """Drop the "Event loop is closed" errors of tensorstore callbacks that arrive after orbax gave up on a
    torn checkpoint (dozens of tracebacks, reported as unraisable); every other unraisable error still shows."""
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook


_quiet_closed_loop_callbacks()


class _RaisedAgainInTheCaller(logging.Filter):
    """Orbax's worker threads log a failed write with its traceback, then the same error is raised where the
    checkpoint was saved, which reports it (in one line, for a full or read-only disk): drop the log. Orbax also
    logs each checkpoint whose _CHECKPOINT_METADATA is missing or torn as it lists them; `restore_latest` says in
    one line which checkpoint is unusable and why, so those logs go too."""

    DROPPED = ("_SignalingThread.run() raised an exception", "Failed to json parse Metadata file",
               "Metadata file does not exist")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.DROPPED)


logging.getLogger("absl").addFilter(_RaisedAgainInTheCaller())


class Checkpoints:
    """The checkpoints/ dir of one run: save every few epochs, restore the newest usable one."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).resolve()
        self._manager = None
        self._keep = keep

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:  # created on first use, so a run that never saves leaves no dir
            note_created(self.directory)
            options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                                   enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def close(self) -> None:
        """Finish orbax's background work now, not in interpreter shutdown (where it would print errors)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def has(self, epoch: int) -> bool:
        return self.directory.exists() and epoch in self.manager.all_steps()

    def save(self, epoch: int, trees: dict[str, Any], meta: dict) -> None:
        """Save pytrees (a train state, ...) and JSON metadata as the checkpoint of `epoch`."""
        states = {name: serialization.to_state_dict(tree) for name, tree in trees.items()}
        # Each array's whole shape: orbax's write_shape is one replica's slice when several devices hold it.
        meta = {**meta, "shapes": {name: {k: list(v) for k, v in _shapes(state).items()} for name, state in states.items()}}
        items = {name: ocp.args.StandardSave(state) for name, state in states.items()}
        self.manager.save(epoch, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items), force=True)

    def restore_latest(self, templates: Callable[[dict], dict[str, Any]],
                       warn: Callable[[str], None]) -> tuple[dict, dict]:
        """The newest checkpoint that restores onto `templates(meta)`, falling back past unusable ones.

        `templates` gets the checkpoint's metadata (its epoch, stage, ...) and returns the pytrees to restore
        onto, by name. Returns (trees, meta); raises UserError when no checkpoint is usable.
        """
        steps = sorted(self.manager.all_steps(), reverse=True) if self.directory.exists() else []
        problems = []
        for i, epoch in enumerate(steps):
            try:
                restored = self._restore(epoch, templates)
            except Exception as e:  # orbax raises many types for torn, corrupt or mismatched files
                problems.append((epoch, first_line(e)[:200]))
                continue
            if problems:  # one line, naming the newest unusable checkpoint and the one resumed from
                warn(f"checkpoint of epoch {problems[0][0]} is unusable ({problems[0][1]}); resuming from epoch {epoch}")
            for unusable in steps[:i]:  # the continued run saves these epochs again
                self.manager.delete(unusable)
            return restored
        self.close()
        detail = "; ".join(f"checkpoint {e}: {p}" for e, p in problems) if problems else "none found"
        raise UserError(f"trainer.resume: no usable checkpoint in {self.directory} ({detail}); valid: the run dir "
                        "of the run to continue, with an intact checkpoint (a run dir without checkpoints/ starts "
                        "again from epoch 1)")

    def _restore(self, epoch: int, templates_for: Callable[[dict], dict[str, Any]]) -> tuple[dict, dict]:
        meta = _read_meta(self.directory / str(epoch) / "meta" / "metadata")
        templates = templates_for(meta)
        names = [n for n in templates if (self.directory / str(epoch) / n).is_dir()]
        for name in names:  # checked first: orbax fails on a mismatch only after starting background reads
            _check_shapes(self.directory / str(epoch) / name, serialization.to_state_dict(templates[name]),
                          meta.get("shapes", {}).get(name))
        args = {n: ocp.args.StandardRestore(serialization.to_state_dict(templates[n])) for n in names}
        restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
        trees = {n: serialization.from_state_dict(templates[n], restored[n]) for n in names}
        return trees, dict(restored["meta"])


def _read_meta(path: Path) -> dict:
    """A checkpoint's own record (epoch, stage, shapes): ValueError saying what is wrong with the file."""
    where = "/".join(path.parts[-2:])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"its {where} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if not text.strip():
        raise ValueError(f"its {where} is empty")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"its {where} is not JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"its {where} is not a JSON object")
    return meta


def _shapes(state: dict) -> dict[str, tuple]:
    return {".".join(path): tuple(np.shape(v)) for path, v in traverse_util.flatten_dict(state).items()
            if v is not None}


def _check_shapes(item_dir: Path, template: dict, recorded: dict | None = None) -> None:
    """Raise ValueError naming the first array whose saved shape differs from the config's.

    Reads which arrays were written from orbax's `_METADATA` JSON file: asking orbax for metadata starts
    tensorstore reads whose callbacks, on a torn checkpoint, outlive their event loop and print hundreds of
    lines. Shapes come from the checkpoint's own record (`recorded`), else (older checkpoints, one device)
    from orbax's write_shape.
    """
    try:
        tree = json.loads((item_dir / "_METADATA").read_text())["tree_metadata"]
        saved = {".".join(str(k["key"]) for k in entry["key_metadata"]): entry["value_metadata"].get("write_shape")
                 for entry in tree.values()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"its {item_dir.name}/_METADATA is missing or torn ({type(e).__name__})") from None
    if recorded is not None:
        saved = {k: recorded.get(k, v) for k, v in saved.items()}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    wanted = _shapes(template)
    for key in sorted(saved.keys() | wanted.keys()):
        if key not in saved:
            raise ValueError(f"has no {key} (a torn or corrupt file, or another model)")
        if saved.get(key) != wanted.get(key):
            raise ValueError(f"does not match the config: {key} saved as {saved.get(key)}, "
                             f"the config makes {wanted.get(key)}")
