"""Checkpoints of a run, with orbax: everything needed to continue bit for bit.

A checkpoint holds the train state (params, batch statistics, optimizer state, step — which fixes the
schedule position and, through fold_in, every RNG draw), the epoch (which fixes the data order), and the
host loop's own state (early stopping). Orbax writes each one to a temporary dir and renames it when
complete, so a partly written checkpoint is never listed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization, traverse_util

from runner.errors import UserError, first_line


class Checkpoints:
    """The checkpoints/ dir of one run: save every few epochs, restore the newest usable one."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).resolve()
        self._manager = None
        self._keep = keep

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:  # created on first use, so a run that never saves leaves no dir
            options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                                   enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def close(self) -> None:
        """Finish orbax's background work now, not in interpreter shutdown (where it would print errors)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def save(self, epoch: int, trees: dict[str, Any], meta: dict) -> None:
        """Save pytrees (a train state, ...) and JSON metadata as the checkpoint of `epoch`."""
        items = {name: ocp.args.StandardSave(serialization.to_state_dict(tree)) for name, tree in trees.items()}
        self.manager.save(epoch, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items), force=True)

    def restore_latest(self, templates: dict[str, Any], warn: Callable[[str], None]) -> tuple[dict, dict]:
        """The newest checkpoint that restores onto `templates`, falling back past unusable ones.

        Returns (trees, meta); raises UserError when no checkpoint is usable.
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
        raise UserError(f"trainer.resume: no usable checkpoint in {self.directory} ({detail}); "
                        "resume needs hydra.run.dir=<the run dir of the run to continue>")

    def _restore(self, epoch: int, templates: dict[str, Any]) -> tuple[dict, dict]:
        names = [n for n in templates if (self.directory / str(epoch) / n).is_dir()]
        for name in names:  # checked first: orbax fails on a mismatch only after starting background reads
            _check_shapes(self.directory / str(epoch) / name, serialization.to_state_dict(templates[name]))
        args = {n: ocp.args.StandardRestore(serialization.to_state_dict(templates[n])) for n in names}
        restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **args))
        trees = {n: serialization.from_state_dict(templates[n], restored[n]) for n in names}
        return trees, dict(restored["meta"])


def _check_shapes(item_dir: Path, template: dict) -> None:
    """Raise ValueError naming the first array whose saved shape differs from the config's."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that the item dir has no step metadata: it is the step's
    try:
        metadata = ocp.StandardCheckpointer().metadata(item_dir).item_metadata
    finally:
        absl.setLevel(level)
    saved = {leaf.name: tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(metadata) if hasattr(leaf, "shape")}
    wanted = {".".join(path): tuple(np.shape(v)) for path, v in traverse_util.flatten_dict(template).items()
              if v is not None}
    for key in sorted(saved.keys() | wanted.keys()):
        if saved.get(key) != wanted.get(key):
            raise ValueError(f"does not match the config: {key} saved as {saved.get(key)}, "
                             f"the config makes {wanted.get(key)}")
