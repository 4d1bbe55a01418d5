"""A finished run read back from its run dir: the config it trained with, its input scaling, its weights, and the
net they make.

The one reader for every command that reuses a trained net: `transfer.source` (its lower layers,
runner/reuse/transfer.py), `python -m runner.predict` (the whole net) and `python -m runner.export` (folded, serialized).
`model.safetensors` holds the weights the run's test metrics are of: the final ones, or the best epoch's when early
stopping restored them, after `trainer.sparsify_threshold` (runner/cli/run.py:finish). So reading it is all it takes
to get the best weights; nothing here looks at checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.data.splits import Scaling
from runner.errors import UserError, first_line
from runner.net import weights
from runner.rundir.records import CONFIG_FILE, SCALING_FILE, SUMMARY_FILE, read_config, read_scaling, read_summary

WEIGHTS_FILE = weights.WEIGHTS_FILE


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """What a finished run left in its run dir to rebuild its net."""

    path: Path
    cfg: DictConfig  # .hydra/config.yaml: the config it trained with
    weights: dict[str, np.ndarray]  # model.safetensors by name (runner/net/weights.py)
    scaling: Scaling | None  # input_scaling.json: what its inputs were scaled by
    summary: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.weights["head.bias"].shape[0])

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One example's shape, channel axis last, as summary.json records it (None for runs made before it did)."""
        shape = self.summary.get("input_shape")
        return tuple(int(n) for n in shape) if isinstance(shape, list) else None

    def dataset_config(self) -> DictConfig:
        """The run's `dataset` node over the current schema's defaults, so a run saved before a dataset key
        existed loads its data as it did then (the default is what it ran with)."""
        from runner.config.compose import DatasetConfig

        try:
            return OmegaConf.merge(OmegaConf.structured(DatasetConfig), self.cfg.dataset)
        except OmegaConfBaseException:  # a key the schema no longer has: as saved
            return self.cfg.dataset

    def scale(self, x: np.ndarray) -> np.ndarray:
        """Inputs as the run saw them: float32, (x - mean) / std per channel (runner/data/splits.py)."""
        x = x.astype(np.float32)
        return x if self.scaling is None else (x - self.scaling.mean) / self.scaling.std


def read_run(path: Path, key: str) -> TrainedRun:
    """The run in `path`; a dir that is no run dir, or a run without weights: one line naming `key`. A file of it
    that is not what the runner writes is one line naming the file (runner/rundir/records.py, runner/net/weights.py)."""
    path = Path(path).expanduser()
    if not (path / CONFIG_FILE).is_file():
        what = ": no such directory" if not path.is_dir() else f" is not a run dir (no {CONFIG_FILE})"
        raise UserError(f"{key}: {path}{what}; valid: the run dir of a finished run")
    summary = _read_summary(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"{key}: {path} has no {WEIGHTS_FILE} (its status: {summary.get('status', 'unfinished')}); "
                        "valid: a run that finished (completed, early_stopped or diverged)")
    cfg = read_config(path / CONFIG_FILE)
    if not isinstance(cfg.get("model"), DictConfig):
        raise UserError(f"{path / CONFIG_FILE}: has no model node; valid: the config Hydra saves in a run dir when "
                        "the run starts")
    _follow_moves(cfg)
    scaling = read_scaling(path / SCALING_FILE) if (path / SCALING_FILE).exists() else None
    return TrainedRun(path, cfg, weights.load_runner(path / WEIGHTS_FILE, key), scaling, summary)


# Where the runner's own `_target_`s of a saved model node live now: a run saved before runner/ was split into
# parts (runner.model.Net before runner.net.model.Net) still builds its net.
MOVED_TARGETS = {"runner.model.Net": "runner.net.model.Net"}


def _follow_moves(cfg: DictConfig) -> None:
    """The saved model node's `_target_`, where it names a callable that moved, set to where it is now."""
    target = cfg.model.get("_target_")
    if isinstance(target, str):
        cfg.model._target_ = MOVED_TARGETS.get(target, target)


def _read_summary(path: Path) -> dict:
    """summary.json, or {} if there is none or it is unreadable: the net is in the other files (it only tells the
    input shape and, for a message, the status)."""
    try:
        return read_summary(path / SUMMARY_FILE) if (path / SUMMARY_FILE).is_file() else {}
    except UserError:
        return {}


def build_net(run: TrainedRun, input_shape: tuple[int, ...]) -> tuple[Any, dict]:
    """(model, variables): the run's model built from its config (runner/training/build.py) and its weights, for inputs of
    one example's `input_shape`; a weight that does not fit the model on such inputs is one line naming it."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from runner.training.build import build_model, build_regularizer

    try:
        model = build_model(run.cfg, run.num_classes, build_regularizer(run.cfg))
    except (OmegaConfBaseException, KeyError, AttributeError, TypeError) as error:
        raise UserError(f"{run.path / CONFIG_FILE}: its model cannot be built ({first_line(error)}); valid: the "
                        "config of a run of this runner") from None
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    try:
        shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), example)
    except (TypeError, ValueError) as error:  # e.g. a convolution over too few axes
        raise UserError(f"{run.path}: its net does not take inputs of shape {tuple(input_shape)} "
                        f"({first_line(error)})") from None
    expected = {".".join(path): tuple(s.shape)
                for tree in (shapes["params"], shapes.get("batch_stats", {}))
                for path, s in traverse_util.flatten_dict(tree).items()}
    stored = {name: tuple(value.shape) for name, value in run.weights.items()}
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            raise UserError(f"{run.path}: its net on inputs of shape {tuple(input_shape)} has {name} of shape "
                            f"{expected.get(name)}, but {WEIGHTS_FILE} has {stored.get(name)}; valid: inputs of "
                            "the shape the run trained on")
    params, batch_stats = weights.nested_weights(run.weights, shapes["params"])
    return model, {"params": params, "batch_stats": batch_stats}
