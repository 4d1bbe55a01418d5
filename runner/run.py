"""One run, from a validated config to metrics.jsonl and summary.json in its run dir.

The host loop only moves between compiled epochs: it reads each epoch's metrics once, evaluates on
the validation split, logs, and decides (early stopping, plateau, divergence).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import flax
import numpy as np
from omegaconf import DictConfig

from runner.build import build_experiment
from runner.console import Console
from runner.data import Splits, load_splits
from runner.diagnostics import layer_names, summarize, to_records
from runner.errors import UserError
from runner.checkpoint import Checkpoints
from runner.interrupts import Interrupted, deferred_signals
from runner.outputs import append_jsonl, read_jsonl, rewrite_jsonl, write_json
from runner.train import TrainState, create_train_state, make_evaluate, make_train_epoch


def load_data(cfg: DictConfig) -> Splits:
    """The dataset's splits, checked against the batch size."""
    d = cfg.dataset
    splits = load_splits(d.name, val_fraction=d.val_fraction, seed=cfg.trainer.seed, data_dir=d.data_dir,
                         path=d.path, train_subset=d.train_subset)
    n = len(splits.x_train)
    if cfg.trainer.batch_size > n:
        raise UserError(f"trainer.batch_size: {cfg.trainer.batch_size} is larger than the training set "
                        f"({n} examples); use at most {n}")
    return splits


def padded(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs, labels and a mask of real examples, padded to a whole number of batches, on device."""
    n = len(x)
    batch_size = max(1, min(batch_size, n))
    total = -(-n // batch_size) * batch_size
    pad = total - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mask = np.arange(total) < n
    return jax.device_put(x), jax.device_put(y), jax.device_put(mask)


class Evaluator:
    """A compiled evaluation of one split (padded once, kept on device)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mc_samples: int = 0):
        self.size = len(x)
        if self.size:
            batch = max(1, min(batch_size, self.size))
            self.arrays = padded(x, y, batch)
            self._fn = jax.jit(make_evaluate(batch, mc_samples))

    def compile(self, state: TrainState, key: jax.Array) -> None:
        if self.size:
            self._fn = self._fn.lower(state, *self.arrays, key).compile()

    def __call__(self, state: TrainState, key: jax.Array) -> dict[str, float]:
        if not self.size:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {k: float(v) for k, v in jax.device_get(self._fn(state, *self.arrays, key)).items()}


class EarlyStopping:
    """Stop when the monitored validation metric has not improved for `patience` epochs."""

    def __init__(self, patience: int, monitor: str):
        self.patience, self.monitor = patience, monitor
        self.sign = -1.0 if monitor == "val_loss" else 1.0
        self.best, self.best_epoch, self.best_state = -np.inf, 0, None

    def update(self, epoch: int, record: dict, state: TrainState) -> bool:
        """Record this epoch; True when training should stop."""
        value = record[self.monitor]
        if value is not None and np.isfinite(value) and self.sign * value > self.best:
            self.best, self.best_epoch = self.sign * value, epoch
            self.best_state = state if self.patience > 0 else None
        return self.patience > 0 and epoch - self.best_epoch >= self.patience


def train_and_evaluate(cfg: DictConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Train per the config, writing metrics.jsonl, checkpoints and summary.json in `run_dir`.

    Returns the summary; raises Interrupted (after saving) on SIGTERM/SIGINT.
    """
    start = time.perf_counter()
    tc = cfg.trainer
    splits = load_data(cfg)
    steps_per_epoch = len(splits.x_train) // tc.batch_size
    experiment = build_experiment(cfg, splits.num_classes, steps_per_epoch)
    devices = [str(d) for d in jax.devices()]
    console.info(f"dataset {splits.name}: {len(splits.x_train)} train / {len(splits.x_val)} val / "
                 f"{len(splits.x_test)} test; devices: {', '.join(devices)}")

    init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(tc.seed), 3)
    x_train, y_train = jax.device_put(splits.x_train), jax.device_put(splits.y_train)
    state = create_train_state(init_key, experiment, x_train[: tc.batch_size])
    val = Evaluator(splits.x_val, splits.y_val, tc.eval_batch_size)
    metrics_path, diagnostics_path = run_dir / "metrics.jsonl", run_dir / "diagnostics.jsonl"
    stopper = EarlyStopping(tc.early_stopping.patience, tc.early_stopping.monitor)
    checkpoints = Checkpoints(run_dir / "checkpoints", tc.keep_checkpoints)
    first_epoch = 1
    if tc.resume:
        state, first_epoch = resume(checkpoints, state, stopper, metrics_path, diagnostics_path, console)

    compile_start = time.perf_counter()
    train_epoch = jax.jit(make_train_epoch(experiment, tc.batch_size, tc.diagnostics_every)).lower(
        state, x_train, y_train, data_key).compile()
    # Compiled only if an epoch goes non-finite: it replays that epoch to name the step and layer.
    checked_epoch = jax.jit(make_train_epoch(experiment, tc.batch_size, tc.diagnostics_every, checked=True))
    val.compile(state, eval_key)
    compile_time = time.perf_counter() - compile_start

    layers = layer_names(state.params)
    status, divergence, epoch, timed_epochs, train_time = "completed", None, first_epoch - 1, 0, 0.0
    with deferred_signals() as interrupt, console.epochs(tc.epochs, start=epoch) as show:
        for epoch in range(first_epoch, tc.epochs + 1):
            epoch_start, epoch_key, before = time.perf_counter(), jax.random.fold_in(data_key, epoch), state
            state, m = train_epoch(state, x_train, y_train, epoch_key)
            m = jax.device_get(m)
            epoch_time = time.perf_counter() - epoch_start
            train_time, timed_epochs = train_time + epoch_time, timed_epochs + 1
            if m["first_nonfinite_step"] >= 0 or not m["params_finite"]:
                state, m, divergence = replay_divergence(checked_epoch, before, x_train, y_train, epoch_key, m,
                                                         layers)
            for diagnosed in to_records(epoch, m["diagnostics"], layers) if "diagnostics" in m else ():
                append_jsonl(diagnostics_path, diagnosed)
            if divergence is not None:
                status = "diverged"
                where = f"gradient of {divergence['diverged_layer']}" if divergence["diverged_layer"] else "loss"
                console.warn(f"diverged: non-finite {where} at step {divergence['diverged_at_step']} "
                             f"(epoch {epoch}); kept the weights before it")
                break
            v = val(state, eval_key)
            record = {"epoch": epoch, "step": int(state.step), "lr": current_lr(experiment, state),
                      "train_loss": float(m["loss"]), "train_accuracy": float(m["accuracy"]),
                      "val_loss": v["loss"], "val_accuracy": v["accuracy"], "epoch_time_s": epoch_time}
            append_jsonl(metrics_path, record)
            show(epoch, {k: record[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")})
            if experiment.schedule.plateau is not None:
                _, plateau = experiment.schedule.plateau.update(None, state.plateau, value=v["loss"])
                state = state.replace(plateau=plateau)
            stop = stopper.update(epoch, record, state)
            if interrupt.is_set() or stop or epoch == tc.epochs or (
                    tc.checkpoint_every and epoch % tc.checkpoint_every == 0):
                save_checkpoint(checkpoints, epoch, state, stopper)
            if interrupt.is_set():
                status = "interrupted"
                break
            if stop:
                status = "early_stopped"
                break

    summary = {"status": status, "epochs": epoch if status != "diverged" else epoch - 1,
               "steps": int(state.step), "best_val_accuracy": best_val_accuracy(metrics_path),
               "train_examples_per_s": steps_per_epoch * tc.batch_size * timed_epochs / train_time
               if train_time else None,
               "compile_time_s": compile_time, "devices": devices, "seed": tc.seed}
    if status == "interrupted":
        summary.update(test_loss=None, test_accuracy=None, wall_time_s=time.perf_counter() - start)
        write_json(run_dir / "summary.json", summary)
        console.warn(f"interrupted at epoch {epoch}: checkpoint saved; continue with "
                     f"trainer.resume=true hydra.run.dir={run_dir}")
        raise Interrupted(interrupt.signum)
    if divergence is not None:
        summary.update(divergence)
    if tc.diagnostics_every:
        summary.update(summarize(read_jsonl(diagnostics_path)))
    if status == "early_stopped" and tc.early_stopping.restore_best and stopper.best_state is not None:
        state = stopper.best_state
        console.info(f"early stopping: restored the weights of epoch {stopper.best_epoch}")
    summary.update(final_evaluation(cfg, splits, state, eval_key))
    summary["wall_time_s"] = time.perf_counter() - start
    write_json(run_dir / "summary.json", summary)
    return summary


def replay_divergence(checked_epoch, before: TrainState, x: jax.Array, y: jax.Array, key: jax.Array,
                      metrics: dict, layers: list[str]) -> tuple[TrainState, dict, dict]:
    """Replay an epoch that went non-finite with per-layer checks: (last finite state, metrics, divergence).

    divergence: `diverged_at_step`, the first step whose loss or a kernel gradient was not finite, and
    `diverged_layer`, the lowest layer whose gradient was not finite then (None if only the loss was).
    """
    state, checked = checked_epoch(before, x, y, key)
    checked = jax.device_get(checked)
    step, layer = int(checked["first_nonfinite_step"]), int(checked["nonfinite_layer"])
    if step < 0:  # the replay stayed finite (the programs may round differently): report the first pass's step
        step = int(metrics["first_nonfinite_step"]) if metrics["first_nonfinite_step"] >= 0 else int(state.step) - 1
    return state, checked, {"diverged_at_step": step, "diverged_layer": layers[layer] if layer >= 0 else None}


def final_evaluation(cfg: DictConfig, splits: Splits, state: TrainState, key: jax.Array) -> dict[str, Any]:
    """Test metrics (and MC dropout's, when asked) of the final weights, with their sparsity."""
    tc = cfg.trainer
    if tc.sparsify_threshold > 0:
        state = state.replace(params=sparsify(state.params, tc.sparsify_threshold))
    test = Evaluator(splits.x_test, splits.y_test, tc.eval_batch_size)(state, key)
    result = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
              "weight_sparsity": weight_sparsity(state.params)}
    if tc.mc_dropout_samples:
        mc = Evaluator(splits.x_test, splits.y_test, tc.eval_batch_size, tc.mc_dropout_samples)(state, key)
        result.update(mc_dropout_test_accuracy=mc["accuracy"], mc_dropout_test_loss=mc["loss"])
    return result


def sparsify(params: Any, threshold: float) -> Any:
    """Connection weights with |w| < threshold set to exactly zero (biases and norm parameters kept)."""
    return flax.traverse_util.unflatten_dict({
        path: jnp.where(jnp.abs(w) < threshold, 0.0, w) if path[-1] == "kernel" else w
        for path, w in flax.traverse_util.flatten_dict(params).items()})


def weight_sparsity(params: Any) -> float:
    """The fraction of connection weights (kernels) that are exactly zero."""
    kernels = [w for path, w in flax.traverse_util.flatten_dict(params).items() if path[-1] == "kernel"]
    return float(sum(int(jnp.sum(w == 0)) for w in kernels) / sum(w.size for w in kernels))


def save_checkpoint(checkpoints: Checkpoints, epoch: int, state: TrainState, stopper: EarlyStopping) -> None:
    """Everything the loop needs to continue after `epoch` exactly as if it had not stopped."""
    trees = {"state": state} if stopper.best_state is None else {"state": state, "best": stopper.best_state}
    checkpoints.save(epoch, trees, {"epoch": epoch, "best": stopper.best, "best_epoch": stopper.best_epoch})


def resume(checkpoints: Checkpoints, state: TrainState, stopper: EarlyStopping, metrics_path: Path,
           diagnostics_path: Path, console: Console) -> tuple[TrainState, int]:
    """Restore the newest usable checkpoint; drop metrics and diagnostics of epochs after it.

    Returns (state, next epoch).
    """
    trees, meta = checkpoints.restore_latest({"state": state, "best": state}, console.warn)
    epoch = int(meta["epoch"])
    stopper.best, stopper.best_epoch = float(meta["best"]), int(meta["best_epoch"])
    stopper.best_state = trees.get("best")
    for path in (metrics_path, diagnostics_path):
        if path.exists():
            rewrite_jsonl(path, [r for r in read_jsonl(path) if r["epoch"] <= epoch])
    console.info(f"resumed from the checkpoint of epoch {epoch} (step {int(trees['state'].step)})")
    return trees["state"], epoch + 1


def current_lr(experiment, state: TrainState) -> float:
    """The learning rate the next step will use (schedule times the plateau scale)."""
    scale = 1.0 if state.plateau is None else float(state.plateau.scale)
    return float(experiment.schedule.learning_rate(jnp.asarray(state.step))) * scale


def best_val_accuracy(metrics_path: Path) -> float | None:
    values = [r["val_accuracy"] for r in read_jsonl(metrics_path) if r.get("val_accuracy") is not None]
    return max(values) if values else None
