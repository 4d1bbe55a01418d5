"""Transfer: a new net that starts from the lowest K hidden layers of another, with a fresh head.

`transfer.source` is either a run dir of this runner (its `model.safetensors`, written at the end of every run
with the final or restored best weights, and its `input_scaling.json`; read by runner/reuse/trained.py), `best:DATASET`
(the most accurate finished run on that dataset under outputs/ whose input shape fits this run's, from the catalog
of runner/models.py), or a `.safetensors` file. A runner's own weights file (named as runner/net/weights.py names a
net's, wherever it lies) gives what its run dir gives: its hidden layers by name, each with its block
(normalization parameters and batch statistics, PReLU slopes), never its head, and the `input_scaling.json` beside
it when there is one. A file from any other framework is matched by weight layer, in order (`transfer.layout` says
how it stores them); blocks start fresh.

The reused layers are frozen (`transfer.freeze`, the default: inference mode, parameters held after the whole
optax chain, runner/training/stages.py), optionally only for `transfer.unfreeze_after` epochs, after which a second stage
trains them too at `transfer.reused_lr_scale` times the learning rate, with a fresh optimizer state.
With `transfer.cache` the frozen layers' outputs are computed once per example and the upper layers train on
them: exact, because a frozen layer runs in inference mode (no dropout, fixed batch statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from omegaconf import DictConfig

from runner.data.splits import Scaling, Splits
from runner.errors import UserError
from runner.net import weights
from runner.net.layers import block_of, hidden_layers, kind_of
from runner.reuse.trained import WEIGHTS_FILE, read_run  # noqa: F401 (WEIGHTS_FILE: run.py imports it here)
from runner.rundir.records import SCALING_FILE, read_scaling
from runner.training.stages import Stage

BEST = "best:"  # transfer.source=best:DATASET


@dataclass
class SourceLayer:
    """One reusable weight layer and its block, as the source stores them."""

    name: str  # the source's own name, for messages
    kind: str  # conv | dense
    layer: dict[str, np.ndarray]  # kernel, bias
    block_params: dict = field(default_factory=dict)  # flat names under block_i: norm.scale, act.alpha, ...
    block_stats: dict = field(default_factory=dict)  # norm.mean, norm.var


@dataclass
class Source:
    """What a run reuses: the source's weight layers from the input up, and its input scaling."""

    path: Path
    layers: list[SourceLayer]
    scaling: Scaling | None


def read_source(cfg: DictConfig, input_shape: Callable[[], Sequence[int]] | None = None) -> Source:
    """The source `transfer.source` names; a missing or unusable one is one line naming what is wrong.

    `input_shape` gives this run's example shape (channels last), asked only to pick `best:DATASET`'s run.
    """
    if str(cfg.source).startswith(BEST):
        from runner.reuse.catalog import best_run

        shape = tuple(input_shape()) if input_shape is not None else None
        return _read_run_dir(best_run(str(cfg.source)[len(BEST):], shape).path)
    path = Path(cfg.source).expanduser()
    if path.is_dir():
        return _read_run_dir(path)
    if path.suffix == ".safetensors":
        tensors = weights.load(path)
        if weights.is_runner_file(tensors):
            return _read_runner_file(path, tensors, cfg.layout)
        layers = [SourceLayer(w.name, "dense" if w.kernel.ndim == 2 else "conv",
                              {"kernel": w.kernel, **({"bias": w.bias} if w.bias is not None else {})})
                  for w in weights.weight_layers(tensors, cfg.layout)]
        if not layers:
            raise UserError(f"transfer.source: {path} holds no weight of two or more axes; valid: a file of "
                            "dense or convolution weights")
        return Source(path, layers, None)
    raise UserError(f"transfer.source: {path} is neither a run dir nor a .safetensors file; valid: the run dir of "
                    "a finished run (outputs/<date>/<time>) or FILE.safetensors")


def _read_run_dir(path: Path) -> Source:
    run = read_run(path, "transfer.source")
    return Source(run.path, _runner_layers(run.weights, run.cfg.model.get("_target_", "the source model")),
                  run.scaling)


def _read_runner_file(path: Path, tensors: dict[str, np.ndarray], layout: str) -> Source:
    """A run's weights file given by itself: what its run dir would give (the input scaling only if it lies
    beside the file)."""
    if layout != "flax":
        raise UserError(f"transfer.layout={layout}: {path} is a runner's weights file (dense_0.kernel, ..., "
                        "head.kernel), read by name in Flax's layout; valid: transfer.layout=flax (the default) "
                        "with it")
    weights.check_runner_file(path, tensors)
    scaling_file = path.parent / SCALING_FILE
    return Source(path, _runner_layers(tensors, str(path)),
                  read_scaling(scaling_file) if scaling_file.exists() else None)


def _runner_layers(flat: dict[str, np.ndarray], label: str) -> list[SourceLayer]:
    """The hidden layers of a runner's weights, from the input up, each with its block; the head is not one."""
    layers = []
    for name in hidden_layers(key.split(".")[0] for key in flat):
        prefix = f"{block_of(name)}."
        block = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        stats = {k: v for k, v in block.items() if k.rsplit(".", 1)[-1] in ("mean", "var")}
        layers.append(SourceLayer(f"{name} of {label}", kind_of(name),
                                  {k: flat[f"{name}.{k}"] for k in ("kernel", "bias") if f"{name}.{k}" in flat},
                                  {k: v for k, v in block.items() if k not in stats}, stats))
    return layers


def reused_layers(cfg: DictConfig, source: Source, layers: Sequence[str]) -> tuple[str, ...]:
    """The new model's hidden layers that take the source's: the lowest `reuse_layers` (default: all it has)."""
    have, fit = len(source.layers), min(len(source.layers), len(layers))
    if not have:
        raise UserError(f"transfer.source: {source.path} has no hidden layers (its net is only a head); valid: a "
                        "source with at least one hidden layer")
    if cfg.reuse_layers is None:  # not set: all the source has, which must fit
        if have > len(layers):
            raise UserError(f"transfer.source: {source.path} has {have} layers to reuse and this model {len(layers)} "
                            f"hidden layers, so not all of them fit; valid: transfer.reuse_layers=1..{fit}, or a "
                            f"model with at least {have} hidden layers")
        return tuple(layers[:have])
    if cfg.reuse_layers > fit:
        raise UserError(f"transfer.reuse_layers: {cfg.reuse_layers}, but the source has {have} hidden layers and "
                        f"this model {len(layers)}; valid: 1..{fit}")
    return tuple(layers[:cfg.reuse_layers])


def graft(params: Any, batch_stats: Any, source: Source, reused: Sequence[str]) -> tuple[dict, dict]:
    """(params, batch_stats) with the reused layers (and, from a run dir, their blocks) taken from the source.

    Every shape must match: a mismatch is one line naming the source's tensor and this model's.
    """
    params = jax.tree_util.tree_map(np.asarray, dict(params))
    batch_stats = jax.tree_util.tree_map(np.asarray, dict(batch_stats or {}))
    for i, (name, layer) in enumerate(zip(reused, source.layers)):
        if kind_of(name) != layer.kind:
            raise UserError(f"transfer: the source's layer {i} ({layer.name}) is a {layer.kind} layer, this model's "
                            f"{name} is not; valid: a model whose lowest layers are of the source's kinds")
        params[name] = _fit(params[name], layer.layer, f"{layer.name}", name)
        block = block_of(name)
        if layer.block_params or layer.block_stats:
            params[block] = _fit(params.get(block, {}), layer.block_params, f"{source.path} block", block)
            if layer.block_stats or block in batch_stats:
                batch_stats[block] = _fit(batch_stats.get(block, {}), layer.block_stats, f"{source.path} block",
                                          block)
    return params, batch_stats


def _fit(target: dict, source: dict, source_name: str, target_name: str) -> dict:
    """`source`'s arrays in place of `target`'s (nested by dotted names), checked key by key and shape by shape."""
    from flax import traverse_util

    flat_target = {".".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
    missing, extra = set(source) - set(flat_target), set(flat_target) - set(source)
    if missing or extra:
        key = sorted(missing or extra)[0]
        where = "source" if key in missing else "model"
        raise UserError(f"transfer: {target_name}.{key} is in the {where} only ({source_name}); valid: a model whose "
                        "reused layers have the source's parameters (same normalization and activation)")
    for key, value in source.items():
        if value.shape != flat_target[key].shape:
            raise UserError(f"transfer: {source_name} {key} has shape {tuple(value.shape)}, this model's "
                            f"{target_name}.{key} {tuple(flat_target[key].shape)}; valid: a model whose lowest "
                            "layers have the source's shapes (input shape, widths, channels)")
    return traverse_util.unflatten_dict({tuple(k.split(".")): np.asarray(v, flat_target[k].dtype)
                                         for k, v in source.items()})


def transfer_stages(cfg: DictConfig, epochs: int, reused: Sequence[str]) -> list[Stage]:
    """Frozen reused layers (for `unfreeze_after` epochs or the whole run), then all layers with the reused ones'
    steps scaled by `reused_lr_scale`."""
    reused = frozenset(reused)
    if not cfg.freeze:
        return [Stage("fine_tune", epochs, scaled=reused, scale=cfg.reused_lr_scale)]
    if cfg.unfreeze_after is None:
        return [Stage("reused_frozen", epochs, frozen=reused)]
    if cfg.unfreeze_after >= epochs:
        raise UserError(f"transfer.unfreeze_after: must be below trainer.epochs ({epochs}), got {cfg.unfreeze_after}")
    return [Stage("reused_frozen", cfg.unfreeze_after, frozen=reused),
            Stage("fine_tune", epochs - cfg.unfreeze_after, scaled=reused, scale=cfg.reused_lr_scale)]


def check_cache(cfg: DictConfig, regularizer: Any, diagnostics_every: int) -> None:
    """Caching is exact only when the reused layers stay frozen all run and nothing random acts below the cut."""
    if not cfg.freeze or cfg.unfreeze_after is not None:
        raise UserError("transfer.cache: needs the reused layers frozen for the whole run; valid: transfer.freeze=true "
                        "and transfer.unfreeze_after=null, or transfer.cache=false")
    if diagnostics_every:
        raise UserError("transfer.cache: the reused layers do not run, so per-layer diagnostics cannot see them; "
                        "valid: trainer.diagnostics_every=0 with transfer.cache=true, or transfer.cache=false")
    random_below = [what for what, hook in (("augmentation", regularizer.augment),
                                            ("input dropout (on_inputs=true)", regularizer.input_dropout),
                                            ("dropconnect (it perturbs every weight)", regularizer.perturb))
                    if hook is not None]
    if random_below:
        raise UserError(f"transfer.cache: {random_below[0]} acts below the cut, so the reused layers' outputs differ "
                        "at every step; valid: transfer.cache=false, or a regularizer that leaves the inputs and "
                        "the reused weights alone")


def cached_features(model: Any, variables: dict, x: np.ndarray, stop: int, batch_size: int = 1000) -> np.ndarray:
    """The outputs of hidden layers [0, stop) in inference mode, computed once, in batches."""
    forward = jax.jit(lambda v, xb: model.apply(v, xb, train=False, stop=stop))
    return np.concatenate([np.asarray(forward(variables, x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)]) if len(x) else x


def with_cached_inputs(splits: Splits, model: Any, variables: dict, stop: int) -> Splits:
    """The splits with each input replaced by the reused layers' output."""
    import dataclasses

    return dataclasses.replace(splits, **{name: cached_features(model, variables, getattr(splits, name), stop)
                                          for name in ("x_train", "x_val", "x_test")})


def save_scaling(run_dir: Path, scaling: Scaling | None) -> None:
    from runner.rundir.outputs import write_json

    if scaling is not None:
        write_json(run_dir / SCALING_FILE, scaling.to_json())
