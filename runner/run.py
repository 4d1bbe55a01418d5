"""One run, from a validated config to metrics.jsonl and summary.json in its run dir.

Loads the data, builds the run's pieces and stages, resumes if asked, hands the epochs to the loop
(runner/loop.py) with its epoch-end handlers (runner/handlers.py), then writes the summary.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax
import numpy as np
from omegaconf import DictConfig

from runner.build import Parts, build_parts, instantiate
from runner.checkpoint import Checkpoints
from runner.console import Console
from runner.data import Splits, load_splits
from runner.diagnostics import layer_names, summarize
from runner.errors import UserError
from runner.handlers import (Checkpointer, DiagnosticsWriter, EarlyStopping, Interrupt, Plateau,
                             Progress, Validation, weights_of)
from runner.interrupts import Interrupted, deferred_signals
from runner.loggers import build_loggers, close_loggers
from runner.loop import Loop, Outcome, enter_stage
from runner.lr_find import resolve_auto_learning_rate
from runner.outputs import read_jsonl, rewrite_jsonl, write_json
from runner.stages import Stage, stage_optimizer
from runner.train import TrainState, create_train_state, make_evaluate


def load_data(cfg: DictConfig) -> Splits:
    """The dataset's splits, checked against the batch size."""
    splits = load_splits(cfg.dataset, seed=cfg.trainer.seed)
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
            self._jitted = self._fn = jax.jit(make_evaluate(batch, mc_samples))

    def compile(self, state: TrainState, key: jax.Array) -> None:
        """Compile for this state's structure now (each stage's optimizer state has its own)."""
        if self.size:
            self._fn = self._jitted.lower(state, *self.arrays, key).compile()

    def __call__(self, state: TrainState, key: jax.Array) -> dict[str, float]:
        if not self.size:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {k: float(v) for k, v in jax.device_get(self._fn(state, *self.arrays, key)).items()}


def train_and_evaluate(cfg: DictConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Train per the config, writing metrics.jsonl, checkpoints and summary.json in `run_dir`.

    Returns the summary; raises Interrupted (after saving) on SIGTERM/SIGINT.
    """
    start, tc = time.perf_counter(), cfg.trainer
    splits = load_data(cfg)
    cfg, found = resolve_auto_learning_rate(cfg, splits, run_dir, console)  # optimizer.learning_rate=auto
    tc = cfg.trainer
    steps_per_epoch = len(splits.x_train) // tc.batch_size
    parts = build_parts(cfg, splits.num_classes, steps_per_epoch)
    devices = [str(d) for d in jax.devices()]
    console.info(f"dataset {splits.name}: {len(splits.x_train)} train / {len(splits.x_val)} val / "
                 f"{len(splits.x_test)} test; devices: {', '.join(devices)}")
    init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(tc.seed), 3)
    x_train, y_train = jax.device_put(splits.x_train), jax.device_put(splits.y_train)
    stages = build_stages(cfg, parts.model.hidden_layers)
    state = create_train_state(init_key, parts, x_train[: tc.batch_size],
                               tx=stage_optimizer(parts.optimizer, stages[0]))
    files = RunFiles(run_dir)
    stopper = EarlyStopping(tc.early_stopping.patience, tc.early_stopping.monitor)
    checkpoints = Checkpoints(run_dir / "checkpoints", tc.keep_checkpoints)
    state_stage, first_epoch, missing = 0, 1, []
    if tc.resume:
        state, state_stage, first_epoch, missing = resume(checkpoints, state, parts, stages, stopper, files,
                                                          console)
    val = Evaluator(splits.x_val, splits.y_val, tc.eval_batch_size)
    checkpointer = Checkpointer(checkpoints, tc.checkpoint_every, stopper)
    # Signals wait for a chunk's end from here until summary.json is written: what training made is kept.
    with deferred_signals() as interrupt:
        with console.training(tc.epochs, steps_per_epoch, first_epoch - 1) as view:
            handlers = [Validation(lambda s: val(s, eval_key)),
                        *([Plateau(parts.schedule.plateau)] if parts.schedule.plateau is not None else []),
                        *build_loggers(cfg, run_dir, first_epoch, int(state.step)),  # metrics.jsonl and the chosen tools
                        DiagnosticsWriter(files.diagnostics, layer_names(state.params)),
                        Progress(view.epoch), stopper, Interrupt(interrupt), checkpointer]
            loop = Loop(parts, stages, tc.batch_size, tc.diagnostics_every, x_train, y_train, data_key, handlers,
                        files.diagnostics, on_compile=lambda s: val.compile(s, eval_key),
                        on_steps=lambda epoch, done, _, metrics: view.steps(epoch, done, metrics), interrupt=interrupt)
            outcome = loop.run(state, state_stage, first_epoch)
        if outcome.abandoned:  # stopped mid-epoch: the run continues from the end of the epoch before
            checkpointer.save(outcome.epoch, outcome.stage, outcome.state)
        summary = {"status": outcome.status, "epochs": outcome.epoch, "steps": int(outcome.state.step),
                   "best_val_accuracy": best_val_accuracy(files.metrics),
                   "train_examples_per_s": steps_per_epoch * tc.batch_size * outcome.timed_epochs / outcome.train_time
                   if outcome.train_time else None, "compile_time_s": outcome.compile_time, "devices": devices,
                   "seed": tc.seed, **found,
                   **({"missing_metric_epochs": missing} if missing else {})}
        return finish(cfg, splits, outcome, stopper, summary, run_dir, console, eval_key, start, interrupt)


def build_stages(cfg: DictConfig, layers: Sequence[str]) -> list[Stage]:
    """The run's stages from the stages group, for the run's epochs and the model's hidden layers."""
    return instantiate(cfg.stages, "stages", epochs=cfg.trainer.epochs, layers=tuple(layers))


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files a run appends to, in its run dir."""

    run_dir: Path

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def diagnostics(self) -> Path:
        return self.run_dir / "diagnostics.jsonl"


def finish(cfg: DictConfig, splits: Splits, outcome: Outcome, stopper: EarlyStopping, summary: dict,
           run_dir: Path, console: Console, eval_key: jax.Array, start: float, interrupt: threading.Event) -> dict:
    """Write summary.json for how the loop ended: test metrics, divergence, diagnostics; returns it.

    Raises Interrupted when a signal arrived (after writing the summary of what was trained)."""
    tc, state = cfg.trainer, outcome.state
    if outcome.status == "interrupted":
        summary.update(test_loss=None, test_accuracy=None, wall_time_s=time.perf_counter() - start)
        write_json(run_dir / "summary.json", summary)
        close_loggers(run_dir, summary)
        where = (f"during epoch {outcome.epoch + 1} (its steps so far dropped): checkpoint of epoch {outcome.epoch}"
                 if outcome.abandoned else f"at epoch {outcome.epoch}: checkpoint")
        console.warn(f"interrupted {where} saved; continue with trainer.resume=true hydra.run.dir={run_dir}")
        raise Interrupted(interrupt.signum)
    if outcome.divergence is not None:
        where = outcome.divergence["diverged_layer"]
        console.warn(f"diverged: non-finite {f'gradient of {where}' if where else 'loss'} at step "
                     f"{outcome.divergence['diverged_at_step']} (epoch {outcome.epoch + 1}); kept the weights before it")
        summary.update(outcome.divergence)
    if tc.diagnostics_every:
        summary.update(summarize(read_jsonl(run_dir / "diagnostics.jsonl")))
    if outcome.status == "early_stopped" and tc.early_stopping.restore_best and stopper.best_weights is not None:
        state = state.replace(**stopper.best_weights)
        console.info(f"early stopping: restored the weights of epoch {stopper.best_epoch}")
    summary.update(final_evaluation(cfg, splits, state, eval_key))
    summary["wall_time_s"] = time.perf_counter() - start
    write_json(run_dir / "summary.json", summary)
    close_loggers(run_dir, summary)
    if interrupt.is_set():  # after the last epoch's end: the run is whole, but the user asked to stop
        console.warn(f"interrupted after training ended: the run is complete, summary.json written ({run_dir})")
        raise Interrupted(interrupt.signum)
    return summary


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


def resume(checkpoints: Checkpoints, state: TrainState, parts: Parts, stages: Sequence[Stage],
           stopper: EarlyStopping, files: RunFiles, console: Console) -> tuple[TrainState, int, int, list[int]]:
    """Restore the newest usable checkpoint; drop metrics and diagnostics of epochs after it.

    Returns (state, the stage whose optimizer it carries, next epoch, epochs up to the checkpoint that
    metrics.jsonl lacks).
    """
    def templates(meta: dict) -> dict:
        stage = meta.get("stage", 0)
        return {"state": enter_stage(state, parts, stages[stage]) if stage else state,
                "best": weights_of(state)}

    trees, meta = checkpoints.restore_latest(templates, console.warn)
    epoch = int(meta["epoch"])
    stopper.restore(meta, trees.get("best"))
    for path in (files.metrics, files.diagnostics):
        if path.exists():
            rewrite_jsonl(path, [r for r in read_jsonl(path) if r["epoch"] <= epoch])
    missing = sorted(set(range(1, epoch + 1)) - {r["epoch"] for r in read_jsonl(files.metrics)})
    if missing:  # a torn line (a crash mid-write) cannot be rebuilt: that epoch's weights are gone
        console.warn(f"metrics.jsonl lacks epoch(s) {', '.join(map(str, missing))} (torn or removed lines); "
                     "they stay missing, and summary.json lists them as missing_metric_epochs")
    console.info(f"resumed from the checkpoint of epoch {epoch} (step {int(trees['state'].step)})")
    return trees["state"], meta.get("stage", 0), epoch + 1, missing


def best_val_accuracy(metrics_path: Path) -> float | None:
    values = [r["val_accuracy"] for r in read_jsonl(metrics_path) if r.get("val_accuracy") is not None]
    return max(values) if values else None
