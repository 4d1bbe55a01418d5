"""A run's parts and compiled programs, kept for the next run of this process that would build them again.

A multirun's jobs run one after another in one process (Hydra's basic launcher), and jobs whose configs differ only
in their seed build the same parts and trace, lower and compile the same programs: the seed reaches a program only
as an argument (the PRNG key). Tracing and lowering are most of a short job (0.9 of the 1.6 s of each job of a seed
sweep of the default config; 5 of 10 s for the 100-layer net): the later jobs reuse the first one's instead.

`shared_parts(key, build)` gives the same `Parts` object for the same key (a run's: its config but trainer.seed,
runner/cli/run.py), kept for the last KEPT keys; `compiled(parts, key, build)` keeps what `build` made for that parts
object under `key`, which names everything else the program depends on: the shapes, dtypes and tree structure of its
inputs (`signature`), and its settings. Parts built elsewhere (the bench's, pretraining's own) are not kept: their
programs are built afresh.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable, Hashable, TypeVar

import jax

from runner.training.train import Parts

T = TypeVar("T")

# Configs whose parts (and programs) are kept: a sweep's jobs cycle through its configs seed by seed
# (`trainer.seed=range(0,5) activation=relu,elu,selu` runs relu, elu, selu, relu, ...).
KEPT = 8


@dataclasses.dataclass
class _Kept:
    parts: Parts
    programs: dict[Hashable, Any] = dataclasses.field(default_factory=dict)


_kept: collections.OrderedDict[tuple, _Kept] = collections.OrderedDict()
_lock = threading.RLock()  # a launcher that ran jobs in threads of one process would share the registry


def shared_parts(key: Hashable, build: Callable[[], Parts]) -> Parts:
    """What `build()` returns, the same object for a key of the last KEPT built here."""
    with _lock:
        if key not in _kept:
            _kept[key] = _Kept(build())
            while len(_kept) > KEPT:
                _kept.popitem(last=False)
        _kept.move_to_end(key)
        return _kept[key].parts


def compiled(parts: Parts | None, key: Hashable, build: Callable[[], T]) -> T:
    """What `build()` returns, kept under `key` for `parts` when `parts` came from shared_parts; else (parts built
    elsewhere, or None) built anew."""
    with _lock:
        kept = next((k for k in _kept.values() if k.parts is parts), None)
        if kept is None:
            return build()
        if key not in kept.programs:
            kept.programs[key] = build()
        return kept.programs[key]


def signature(*trees: Any) -> tuple:
    """What a compiled program's inputs fix: each tree's structure (a TrainState's static fields among it: its
    apply_fn and optimizer chain) and each leaf's shape, dtype and placement."""
    def leaf(x: Any) -> tuple:
        if not hasattr(x, "shape"):
            return type(x), x
        return tuple(x.shape), str(x.dtype), getattr(getattr(x, "aval", None), "weak_type", False), \
            getattr(x, "sharding", None)

    return tuple((jax.tree_util.tree_structure(t), tuple(leaf(x) for x in jax.tree_util.tree_leaves(t)))
                 for t in trees)


def forget() -> None:
    """Keep nothing built so far (a test starts as a fresh process would)."""
    with _lock:
        _kept.clear()
