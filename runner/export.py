"""`python -m runner.export RUN_DIR [--dtype bfloat16|float16]`: a finished run's net made ready to serve.

Writes into the run dir:

    model.folded.safetensors   the weights with batch norm folded into the layer before it (runner/net/weights.py's
                               names, without the folded `block_<i>.norm.*`), in --dtype if given
    model.jax_export           a serialized `jax.export` program: raw float32 inputs (batch, *example shape), the
                               run's input scaling applied inside, to float32 logits (batch, classes); the batch
                               dimension is symbolic; lowered for CPU and CUDA. It needs only jax to run:
                               `jax.export.deserialize(open(FILE, "rb").read()).call(x)`
    export.json                what was written: each file's sha256, the example shape, dtype, folded layers

Batch norm at inference is an affine map per channel with constants (its running statistics), so where it directly
follows a dense or convolution layer z = xW + b it folds into it (Jacob et al. 2018, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", sec. 3.2):

    BN(z) = scale * (z - mean) / sqrt(var + eps) + bias = x (W * s) + ((b - mean) * s + bias),
    s = scale / sqrt(var + eps)   (per output unit or channel)

That holds for `normalization.position=pre` only: after the activation (`post`) batch norm does not follow the
affine layer, and layer norm's statistics are each example's own, not constants; both are kept, and said so in one
line. `--dtype` casts the weights (and the program's computation) and prints the test accuracy change on the run's
test split. The command overwrites only its own earlier output (files export.json lists with their contents);
anything else in the way is one line, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from runner.console import Console, command
from runner.errors import ArgumentParser, UserError
from runner.net.layers import block_of
from runner.reuse.trained import TrainedRun, build_net, read_run
from runner.rundir.outputs import write_atomic

FOLDED_FILE = "model.folded.safetensors"
PROGRAM_FILE = "model.jax_export"
MANIFEST_FILE = "export.json"
DTYPES = ("bfloat16", "float16")
PLATFORMS = ("cpu", "cuda")  # lowered for both: the program runs where it is loaded, with or without a GPU


@dataclasses.dataclass(frozen=True)
class Folded:
    """A net with its batch norm folded (`folded`: the layers that took it), or as it was and `kept` saying why."""

    model: Any
    variables: dict
    folded: tuple[str, ...] = ()
    kept: str | None = None


def fold_batch_norm(model: Any, variables: dict) -> Folded:
    """The net with each hidden layer's batch norm folded into it, where batch norm directly follows the layer
    (the module doc's formula, computed in float64); otherwise the net as it is, with the reason in `kept`."""
    import flax.linen as nn

    norm = model.normalization
    if norm is None:
        return Folded(model, variables, kept="no normalization layers: nothing to fold")
    if not isinstance(norm, nn.BatchNorm):
        return Folded(model, variables, kept=f"{type(norm).__name__} uses each example's own statistics, not "
                                             "constants, so it cannot be folded into the layer before it; kept")
    if model.norm_position != "pre":
        return Folded(model, variables, kept="batch norm comes after the activation (normalization.position=post), "
                                             "not directly after the dense/conv layer, so it cannot be folded; kept")
    params = {name: dict(tree) for name, tree in variables["params"].items()}
    stats = variables["batch_stats"]
    for name in model.hidden_layers:
        block = block_of(name)
        bn, running = params[block].pop("norm"), stats[block]["norm"]
        kernel, bias = (np.asarray(params[name][k], np.float64) for k in ("kernel", "bias"))
        s = np.asarray(bn.get("scale", 1.0), np.float64) / np.sqrt(np.asarray(running["var"], np.float64)
                                                                   + norm.epsilon)
        shift = np.asarray(bn.get("bias", 0.0), np.float64) - np.asarray(running["mean"], np.float64) * s
        dtype = np.asarray(params[name]["kernel"]).dtype
        params[name] = {"kernel": (kernel * s).astype(dtype), "bias": (bias * s + shift).astype(dtype)}
        if not params[block]:  # the block had nothing else (a PReLU's slopes stay)
            del params[block]
    return Folded(model.clone(normalization=None), {"params": params, "batch_stats": {}}, model.hidden_layers)


def make_program(model: Any, variables: dict, scaling: Any, dtype: str = "float32") -> Callable:
    """`logits(x)`: raw float32 inputs scaled as the run scaled them, the net in `dtype`, float32 logits."""
    import jax
    import jax.numpy as jnp

    cast = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                  variables)

    def logits(x):
        if scaling is not None:
            x = (x - scaling.mean) / scaling.std
        return model.apply(cast, x.astype(dtype), train=False).astype(jnp.float32)

    return logits


def export_program(program: Callable, input_shape: Sequence[int]) -> bytes:
    """The program serialized by `jax.export`, for float32 inputs (batch, *input_shape) with a symbolic batch."""
    import jax
    import jax.numpy as jnp

    batch, = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(program), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32))
    return bytes(exported.serialize())


def safetensors_bytes(variables: dict, dtype: str, metadata: dict[str, str]) -> bytes:
    """runner/net/weights.py's names and layout; through safetensors' flax writer, which knows bfloat16."""
    import jax.numpy as jnp
    from safetensors.flax import save

    from runner.net import weights

    flat = weights.flat_weights(variables["params"], variables.get("batch_stats"))
    return save({k: jnp.asarray(v, dtype) if np.issubdtype(v.dtype, np.floating) else jnp.asarray(v)
                 for k, v in flat.items()}, metadata={"format": "runner", "layout": "flax", **metadata})


def raw_test_split(run: TrainedRun) -> tuple[np.ndarray, np.ndarray]:
    """The run's test inputs as its dataset gives them (unscaled: the programs scale them) and their labels."""
    from runner.data import load_splits
    from runner.data.splits import Scaling

    channels = run.scaling.mean.shape[0] if run.scaling is not None else 1
    raw = Scaling(np.zeros(channels, np.float32), np.ones(channels, np.float32))  # (x - 0) / 1: the inputs as given
    splits = load_splits(run.dataset_config(), seed=int(run.cfg.trainer.seed), scaling=raw)
    return splits.x_test, splits.y_test


def accuracies(programs: dict[str, Callable], x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, float]:
    """Each program's accuracy on (x, y), in batches."""
    import jax

    result = {}
    for name, program in programs.items():
        jitted = jax.jit(program)
        labels = np.concatenate([np.asarray(jitted(x[i:i + batch])).argmax(-1) for i in range(0, len(x), batch)])
        result[name] = float(np.mean(labels == y))
    return result


def check_own_outputs(run_dir: Path) -> None:
    """Refuse (one line) if a file this command writes exists and is not its own earlier output."""
    manifest = run_dir / MANIFEST_FILE
    listed: Any = {}
    if manifest.exists():
        try:
            listed = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError, OSError):
            listed = None
        if not isinstance(listed, dict):
            raise UserError(f"{manifest} exists and is not runner.export's; valid: move it away, then run again")
    for name in (FOLDED_FILE, PROGRAM_FILE):
        path = run_dir / name
        if path.exists() and listed.get(name) != _sha256(path.read_bytes()):
            raise UserError(f"{path} exists and is not runner.export's output ({MANIFEST_FILE} does not list it "
                            "with these contents); valid: move it away, then run again")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m runner.export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run dir of a finished run")
    parser.add_argument("--dtype", choices=DTYPES, help="cast the weights; prints the test accuracy change")
    return parser.parse_args(argv)


def export(run_dir: Path, dtype: str | None, console: Console) -> dict:
    """Fold, serialize and write (see the module doc); returns export.json's contents."""
    run = read_run(run_dir, "RUN_DIR")
    check_own_outputs(run.path)
    test = raw_test_split(run) if dtype or run.input_shape is None else None  # (runs before summary's input_shape)
    input_shape = run.input_shape or tuple(test[0].shape[1:])
    folded = fold_batch_norm(*build_net(run, input_shape))
    console.info(f"folded batch norm into {', '.join(folded.folded)}" if folded.folded else folded.kept)
    program = make_program(folded.model, folded.variables, run.scaling, dtype or "float32")
    files = {FOLDED_FILE: safetensors_bytes(folded.variables, dtype or "float32",
                                            {"folded": ",".join(folded.folded)}),
             PROGRAM_FILE: export_program(program, input_shape)}
    manifest = {"files": {name: _sha256(data) for name, data in files.items()}, "input_shape": list(input_shape),
                "num_classes": run.num_classes, "dtype": dtype or "float32", "folded": list(folded.folded),
                "kept": folded.kept, "platforms": list(PLATFORMS)}
    if dtype:
        measured = accuracies({"float32": make_program(folded.model, folded.variables, run.scaling), dtype: program},
                              *test, int(run.cfg.trainer.eval_batch_size))
        manifest["test_accuracy"] = measured
        change = 100 * (measured[dtype] - measured["float32"])
        console.info(f"--dtype {dtype}: test accuracy {measured[dtype]:.4f} against {measured['float32']:.4f} in "
                     f"float32 ({change:+.2f} points) on the test split of {run.cfg.dataset.name} "
                     f"({len(test[1])} examples)")
    for name, data in files.items():
        write_atomic(run.path / name, data)
    write_atomic(run.path / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    console.info(f"{PROGRAM_FILE}: float32 inputs (batch, {', '.join(map(str, input_shape))}) -> logits "
                 f"(batch, {run.num_classes}); {FOLDED_FILE}, {MANIFEST_FILE} in {run.path}")
    return manifest


@command
def main(argv: Sequence[str] | None = None) -> int:
    """0, or 2 after one line for a mistake."""
    args = parse_args(argv)
    export(args.run_dir, args.dtype, Console())
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
