"""A trained net's weights as a safetensors file, the format PyTorch, Keras and Flax users all read, and back.

Every run writes `model.safetensors`: its final weights, or the best epoch's when early stopping restored them.
Parameters and batch statistics share one namespace, `<layer>.<name>`, in Flax's layouts:

    conv_0.kernel      (H, W, in, out)   conv_0.bias (out,)      a 3x3 convolution (1-D: (W, in, out))
    dense_1.kernel     (in, out)         dense_1.bias (out,)     a dense layer
    block_1.norm.scale, block_1.norm.bias                        batch or layer normalization's parameters
    block_1.norm.mean, block_1.norm.var                          batch normalization's running statistics
    block_1.act.alpha                                            PReLU's slopes
    head.kernel, head.bias                                       the classifier

A file named this way is a runner's weights file wherever it lies (`is_runner_file`): read by name, its hidden
layers are conv_i and dense_i, never the head. A file written by another framework is read by layer order instead
(`weight_layers`): its weight tensors of two or more axes, each with the bias beside it, in natural order of their
names ("2.weight" before "10.weight"). `layout` says how that framework stores them: `flax` and `keras` as above,
`torch` as `nn.Linear` [out, in] and `nn.Conv1d`/`nn.Conv2d` [out, in, (H,) W], transposed here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from flax import traverse_util

from runner.errors import UserError, first_line
from runner.net.layers import BLOCK, HEAD, HIDDEN, kind_of

LAYOUTS = ("flax", "torch", "keras")
WEIGHTS_FILE = "model.safetensors"  # what every run writes in its run dir
# The names `flat_weights` gives a net of runner/net/model.py: a weight layer, its block, the classifier.
_RUNNER_NAME = re.compile(rf"({HIDDEN.pattern}|{HEAD})\.(kernel|bias)|{BLOCK.pattern}\.[\w.]+")
_VALID_RUNNER_FILE = (f"valid: the {WEIGHTS_FILE} a run writes (dense_0.kernel, dense_0.bias, ..., head.kernel, "
                      "head.bias)")


def flat_weights(params: Any, batch_stats: Any) -> dict[str, np.ndarray]:
    """The net's parameters and batch statistics under their documented names."""
    flat = {}
    for tree in (params, batch_stats or {}):
        for path, value in traverse_util.flatten_dict(tree).items():
            flat[".".join(path)] = np.asarray(value)
    return flat


def nested_weights(flat: dict[str, np.ndarray], params_like: Any) -> tuple[dict, dict]:
    """(params, batch_stats) from the flat names: a name is a parameter when `params_like` has its path."""
    param_paths = set(traverse_util.flatten_dict(params_like))
    params, stats = {}, {}
    for name, value in flat.items():
        path = tuple(name.split("."))
        (params if path in param_paths else stats)[path] = value
    return traverse_util.unflatten_dict(params), traverse_util.unflatten_dict(stats)


def save(path: Path, params: Any, batch_stats: Any) -> None:
    """Writes `path` (a temp file renamed into place: a reader never sees half a file)."""
    from safetensors.numpy import save

    from runner.rundir.outputs import write_atomic

    write_atomic(Path(path), save(flat_weights(params, batch_stats), metadata={"format": "runner", "layout": "flax"}))


def load(path: Path, key: str = "transfer.source") -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file by name; a missing or unreadable file is one line naming it (and `key`,
    what the user typed to name it)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise UserError(f"{key}: {path} does not exist; valid: a run dir of a finished run or a .safetensors file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{key}: {path} is not a readable safetensors file ({first_line(error)})") from None
    except TypeError as error:  # a dtype NumPy lacks: bfloat16
        raise UserError(f"{key}: {path} holds a tensor NumPy cannot read ({first_line(error)}); valid: float32 or "
                        "float16 tensors (from PyTorch: save model.float().state_dict())") from None
    if not tensors:
        raise UserError(f"{key}: {path} holds no tensors; valid: a file of a net's weights")
    return tensors


def is_runner_file(tensors: dict[str, np.ndarray]) -> bool:
    """Whether the tensors are named as the runner names a net's (a run's model.safetensors, wherever it lies)."""
    return "head.kernel" in tensors and all(_RUNNER_NAME.fullmatch(name) for name in tensors)


def load_runner(path: Path, key: str) -> dict[str, np.ndarray]:
    """A run's weights file (`load`), checked to be what `save` writes: a head and weight layers whose biases fit
    their kernels, every tensor floating point. Anything else is one line naming the file and the tensor."""
    tensors = load(path, key)
    check_runner_file(path, tensors)
    return tensors


def check_runner_file(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Raises UserError naming the file and tensor unless `tensors` are a net's as `save` writes them."""
    for name in ("head.kernel", "head.bias"):
        if name not in tensors:
            raise UserError(f"{path}: has no {name}; {_VALID_RUNNER_FILE}")
    for name in sorted(tensors):
        if not _RUNNER_NAME.fullmatch(name):
            raise UserError(f"{path}: has {name}, a name no runner net's tensor has; {_VALID_RUNNER_FILE}")
    for name, value in sorted(tensors.items()):
        if value.dtype.kind != "f":
            raise UserError(f"{path}: {name} has dtype {value.dtype}; {_VALID_RUNNER_FILE}, floating point")
    for name in sorted(n for n in tensors if n.endswith(".kernel")):
        kernel, bias = tensors[name], tensors.get(name[:-len("kernel")] + "bias")
        layer = name[:-len(".kernel")]
        conv = layer != HEAD and kind_of(layer) == "conv"
        rank_ok = kernel.ndim in (3, 4) if conv else kernel.ndim == 2
        if not rank_ok:
            raise UserError(f"{path}: {name} has shape {kernel.shape}, which no layer of this kind has; "
                            f"{_VALID_RUNNER_FILE}")
        if bias is not None and bias.shape != kernel.shape[-1:]:
            raise UserError(f"{path}: {name} has shape {kernel.shape} but its bias {bias.shape}; valid: a bias of "
                            f"shape {kernel.shape[-1:]} (one per output), as {WEIGHTS_FILE} holds them")


class WeightLayer(NamedTuple):
    """One weight layer of a file from another framework, in Flax's layout."""

    name: str  # the file's own name of the weight, for messages
    kernel: np.ndarray
    bias: np.ndarray | None


def weight_layers(tensors: dict[str, np.ndarray], layout: str) -> list[WeightLayer]:
    """The file's weight layers in order: each weight of two or more axes with its bias, in Flax's layout."""
    if layout not in LAYOUTS:
        raise UserError(f"transfer.layout: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    layers = []
    for name in sorted(tensors, key=_natural):
        prefix, _, leaf = name.rpartition(".")
        if leaf not in ("weight", "kernel") or tensors[name].ndim < 2:
            continue
        bias = tensors.get(f"{prefix}.bias" if prefix else "bias")
        layers.append(WeightLayer(name, _to_flax(tensors[name], layout), bias))
    return layers


def _to_flax(weight: np.ndarray, layout: str) -> np.ndarray:
    if layout != "torch":
        return weight
    if weight.ndim == 2:  # nn.Linear: [out, in]
        return weight.T
    # nn.Conv1d / nn.Conv2d: [out, in, (H,) W] -> [(H,) W, in, out]
    return np.transpose(weight, tuple(range(2, weight.ndim)) + (1, 0))


def _natural(name: str) -> list:
    """Sort key that puts "2.weight" before "10.weight"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
