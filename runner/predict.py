"""`python -m runner.predict RUN_DIR INPUT.npz`: a finished run's net on new inputs, written as predictions.npz.

The net is the run's own (runner/reuse/trained.py: its config, input scaling and model.safetensors, the weights its test
metrics are of, the best epoch's when early stopping restored them). INPUT.npz holds `x` (or, a dataset file in the
Keras convention, `x_test`): N examples of the shape the run trained on, raw as its dataset gives them (the run's
input scaling is applied here); a channel axis of 1 may be left out. The output, beside INPUT or at --out FILE:

    probabilities       (N, K) float32   softmax of the logits; with --mc-samples S > 0, the mean over S passes
                                         with dropout active (MC dropout, Gal & Ghahramani 2016)
    labels              (N,) int32       argmax of probabilities
    probabilities_std   (N, K) float32   with --mc-samples S > 0 only: the passes' per-class standard deviation

The inputs go through one jitted program in batches of --batch-size (default: the run's trainer.eval_batch_size),
the last one padded; MC passes draw from fold_in(PRNGKey(0), batch), so a file gives the same predictions every
time. If INPUT also holds labels (`y` or `y_test`), the accuracy is printed. A mistake (no run dir, no `x`, a wrong
shape or dtype) is one line on stderr, exit 2, and nothing written; the file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runner.console import Console, command
from runner.data.npz import read_members
from runner.errors import ArgumentParser, UserError
from runner.reuse.trained import TrainedRun, build_net, read_run
from runner.rundir.outputs import write_atomic

INPUT_KEYS = ("x", "x_test")  # the first the file has is predicted
LABEL_KEYS = {"x": "y", "x_test": "y_test"}
OUTPUT_NAME = "predictions.npz"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m runner.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run dir of a finished run")
    parser.add_argument("input", type=Path, metavar="INPUT.npz", help="an .npz with x (or x_test)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help=f"where to write (default: {OUTPUT_NAME} beside INPUT)")
    parser.add_argument("--mc-samples", type=int, default=0, metavar="N",
                        help="mean of N stochastic passes with dropout active, and their std (default 0: one "
                             "deterministic pass)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="examples per call (default: the run's "
                                                                     "trainer.eval_batch_size)")
    args = parser.parse_args(argv)
    if args.mc_samples < 0:
        raise UserError(f"--mc-samples: must be >= 0, got {args.mc_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {args.batch_size}")
    return args


def read_inputs(path: Path, input_shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, labels or None) from INPUT.npz; `x` checked against the run's example shape when it is known."""
    valid = (f"an .npz with x (or x_test) of shape (N, {', '.join(map(str, input_shape))})" if input_shape
             else "an .npz with x (or x_test) of the inputs' shape the run trained on")
    if not path.is_file():
        raise UserError(f"INPUT: {path}: no such file; valid: {valid}")

    def inputs_and_labels(files: list[str]) -> list[str]:
        key = next((k for k in INPUT_KEYS if k in files), None)
        if key is None:
            raise UserError(f"INPUT: {path} has no x or x_test (it has: {', '.join(files) or 'nothing'}); "
                            f"valid: {valid}")
        return [key] + ([LABEL_KEYS[key]] if LABEL_KEYS[key] in files else [])

    arrays = read_members(str(path), inputs_and_labels, valid, prefix="INPUT: ")
    key = next(k for k in INPUT_KEYS if k in arrays)
    x, y = arrays[key], arrays.get(LABEL_KEYS[key])
    if x.dtype.kind not in "iuf":
        raise UserError(f"INPUT: {path}: {key} has dtype {x.dtype}; valid: integer (e.g. uint8) or float inputs")
    if x.ndim < 2 or len(x) == 0:
        raise UserError(f"INPUT: {path}: {key} has shape {x.shape}; valid: {valid}, N >= 1")
    if input_shape is not None:
        if x.shape[1:] + (1,) == input_shape:  # a channel axis of 1 left out, as (N, H, W) images often are
            x = x[..., None]
        if x.shape[1:] != input_shape:
            raise UserError(f"INPUT: {path}: {key} has shape {x.shape}; valid: (N, {', '.join(map(str, input_shape))})"
                            ", the shape of the run's examples")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"INPUT: {path}: {key} has NaN or infinite values; valid: finite inputs")
    if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu"):
        y = None  # labels are only for the printed accuracy: ones that cannot be class ids are left alone
    return x, y


def make_predict(model, mc_samples: int) -> Callable:
    """`predict(variables, x, key) -> (probabilities, std)`: one batch; std is 0 without MC passes."""
    import jax
    import jax.numpy as jnp

    from runner.training.train import predictive_passes

    def predict(variables, x, key):
        if mc_samples == 0:
            probabilities = jax.nn.softmax(model.apply(variables, x, train=False))
            return probabilities, jnp.zeros_like(probabilities)
        passes = predictive_passes(model.apply, variables, x, jax.random.split(key, mc_samples))
        return passes.mean(0), passes.std(0)

    return predict


def predict_arrays(run: TrainedRun, x: np.ndarray, batch_size: int, mc_samples: int = 0) -> dict[str, np.ndarray]:
    """The predictions.npz arrays for raw inputs `x` (N, *example shape) of the run's net."""
    import jax

    model, variables = build_net(run, tuple(x.shape[1:]))
    x = run.scale(x)
    batch = min(batch_size, len(x))
    padded = np.concatenate([x, np.zeros((-len(x) % batch, *x.shape[1:]), x.dtype)])
    predict = jax.jit(make_predict(model, mc_samples))
    key = jax.random.PRNGKey(0)
    parts = [jax.device_get(predict(variables, padded[i:i + batch], jax.random.fold_in(key, i // batch)))
             for i in range(0, len(padded), batch)]
    probabilities = np.concatenate([p for p, _ in parts])[: len(x)].astype(np.float32)
    arrays = {"probabilities": probabilities, "labels": probabilities.argmax(-1).astype(np.int32)}
    if mc_samples:
        arrays["probabilities_std"] = np.concatenate([s for _, s in parts])[: len(x)].astype(np.float32)
    return arrays


def output_path(args: argparse.Namespace) -> Path:
    out = args.out if args.out is not None else args.input.parent / OUTPUT_NAME
    if out.exists() and out.resolve() == args.input.resolve():
        raise UserError(f"--out: {out} is the input file; valid: another path (default: {OUTPUT_NAME} beside INPUT)")
    if out.is_dir():
        raise UserError(f"--out: {out} is a directory; valid: a file path, e.g. {out / OUTPUT_NAME}")
    if not out.parent.is_dir():
        raise UserError(f"--out: {out.parent} does not exist; valid: a file in an existing directory")
    return out


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Predict and write; 0, or 2 after one line for a mistake."""
    console = Console()
    args = parse_args(argv)
    run = read_run(args.run_dir, "RUN_DIR")
    x, y = read_inputs(args.input, run.input_shape)
    out = output_path(args)
    if args.mc_samples and not _has_dropout(run):
        console.warn(f"--mc-samples {args.mc_samples}: the run's net has no dropout, so every pass is the same "
                     "(probabilities_std is 0)")
    arrays = predict_arrays(run, x, args.batch_size or int(run.cfg.trainer.eval_batch_size), args.mc_samples)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(out, buffer.getvalue())
    accuracy = f"; accuracy {np.mean(arrays['labels'] == y):.4f} against its labels" if y is not None else ""
    passes = f", mean of {args.mc_samples} MC dropout passes" if args.mc_samples else ""
    console.info(f"predicted {len(x)} examples ({arrays['probabilities'].shape[1]} classes{passes}){accuracy}: {out}")
    return 0


def _has_dropout(run: TrainedRun) -> bool:
    """Whether any regularizer of the run puts dropout into the net (its hidden or input dropout)."""
    from runner.training.build import build_regularizer

    regularizer = build_regularizer(run.cfg)
    return regularizer.hidden_dropout is not None or regularizer.input_dropout is not None


if __name__ == "__main__":
    import sys

    sys.exit(main())
