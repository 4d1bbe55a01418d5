"""One run, from a validated config to metrics.jsonl and summary.json in its run dir.

Loads the data, builds the run's pieces and stages, resumes if asked, hands the epochs to the loop
(runner/training/loop.py) with its epoch-end handlers (runner/training/handlers.py), then writes the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax
from omegaconf import DictConfig

from runner.config.compose import is_auto_rate
from runner.console import Console
from runner.data import Splits, load_data
from runner.errors import UserError
from runner.net import weights
from runner.reuse.pretraining.methods import pretrain
from runner.reuse.transfer import (BEST, WEIGHTS_FILE, Source, check_cache, graft, read_source, reused_layers,
                                   save_scaling, transfer_stages, with_cached_inputs)
from runner.rundir.outputs import read_jsonl, rewrite_jsonl, write_json
from runner.rundir.records import best_val_accuracy, leave_out, read_metrics
from runner.rundir.resumed import record_resolved
from runner.scale.distributed import AgreedEvent, DataParallel, initialize_processes, is_writer
from runner.techniques.schedules import beyond_run
from runner.training.build import build_parts, build_stages
from runner.training.checkpoint import Checkpoints
from runner.training.diagnostics import layer_names, summarize
from runner.training.evaluate import Evaluator
from runner.training.handlers import (Checkpointer, DiagnosticsWriter, EarlyStopping, Interrupt, LearningRateTrace,
                                      Plateau, Progress, Validation, weights_of)
from runner.training.interrupts import Interrupted, deferred_signals
from runner.training.loggers import build_loggers, close_loggers
from runner.training.loop import AgreedPacer, Loop, Outcome, Pacer, enter_stage, stage_chain
from runner.training.lr_range import resolve_auto_learning_rate
from runner.training.programs import compiled, shared_parts
from runner.training.stages import Stage, entering
from runner.training.train import Parts, TrainState, init_program


def train_and_evaluate(cfg: DictConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Train per the config, writing metrics.jsonl, checkpoints and summary.json in `run_dir`.

    Returns the summary; raises Interrupted (after saving) on SIGTERM/SIGINT.
    With several processes (runner/scale/distributed.py) every process trains; only process 0 writes files.
    """
    return train(setup(cfg, run_dir, console))


@dataclasses.dataclass
class Run:
    """A run set up from its config and ready to train: its data, parts, stages and state (resumed where asked)."""

    cfg: DictConfig
    run_dir: Path
    console: Console
    start: float  # when the run began (perf_counter), for its wall time
    data_parallel: DataParallel
    writer: bool  # whether this process writes the run's files (process 0)
    source: Source | None  # the net whose lower layers it reuses (pretraining or transfer.source)
    splits: Splits
    parts: Parts
    stages: list[Stage]
    keys: tuple[jax.Array, jax.Array, jax.Array]  # init, data order, evaluation
    state: TrainState
    summary: dict[str, Any]  # what the summary says from the start: devices, seed, input shape, a found rate
    state_stage: int = 0  # the stage and epoch to continue from (a resumed run's)
    first_epoch: int = 1
    stopper: EarlyStopping | None = None
    checkpoints: Checkpoints | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.splits.x_train) // self.cfg.trainer.batch_size

    @property
    def several(self) -> bool:
        return jax.process_count() > 1


def setup(cfg: DictConfig, run_dir: Path, console: Console) -> Run:
    """Data, parts, stages and the first state of a run (from its source's layers, or its checkpoint)."""
    start, tc = time.perf_counter(), cfg.trainer
    initialize_processes()  # several processes (SLURM, JAX_COORDINATOR_ADDRESS): join them before any JAX work
    data_parallel = DataParallel.over(tc.devices)
    for key in ("batch_size", "eval_batch_size"):  # before anything is written: the run dir is taken back
        data_parallel.check_batch_size(f"trainer.{key}", tc[key])
    several, writer = jax.process_count() > 1, is_writer()
    if several and is_auto_rate(cfg):
        raise UserError("optimizer.learning_rate: auto runs the range test in one process; valid with several "
                        "processes: a number (find it first with python -m runner.lr_find)")
    # pretraining=...: the lower layers learn first, held in memory; else another net's, if transfer.source names one
    # (transfer.source=best:DATASET picks a run whose input shape fits this dataset's: the data's shape, asked first)
    source = pretrain(cfg, run_dir, console) or (read_source(cfg.transfer, lambda: load_data(cfg).x_train.shape[1:])
                                                 if cfg.transfer.source else None)
    if writer and str(cfg.transfer.source).startswith(BEST):  # what best: picked, so that a resumed run keeps it
        record_resolved(run_dir, "transfer.source", str(source.path))
    splits = load_data(cfg, source.scaling if source else None)
    input_shape = list(splits.x_train.shape[1:])  # one example's; before transfer.cache swaps inputs for features
    cfg, found = resolve_auto_learning_rate(cfg, splits, run_dir, console)  # optimizer.learning_rate=auto
    tc = cfg.trainer
    steps_per_epoch = len(splits.x_train) // tc.batch_size
    # The parts, and so the programs, of the config but its seed are shared with the process's earlier runs of it (a
    # sweep's seeds): runner/training/programs.py.
    parts = shared_parts((_but_seed(cfg), splits.num_classes, steps_per_epoch),
                         lambda: build_parts(cfg, splits.num_classes, steps_per_epoch))
    devices = data_parallel.devices
    console.info(f"dataset {splits.name}: {len(splits.x_train)} train / {len(splits.x_val)} val / "
                 f"{len(splits.x_test)} test; devices: {', '.join(devices)}"
                 + (f" ({jax.process_count()} processes, this is {jax.process_index()})" if several else ""))
    init_key, data_key, eval_key = data_parallel.put(jax.random.split(jax.random.PRNGKey(tc.seed), 3))
    reused = reused_layers(cfg.transfer, source, parts.model.hidden_layers) if source else ()
    stages = transfer_stages(cfg.transfer, tc.epochs, reused) if source else \
        build_stages(cfg, parts.model.hidden_layers)
    if writer:
        for warning in beyond_run(parts.schedule, steps_per_epoch * tc.epochs):  # the schedule runs across stages
            console.warn(warning)
    tx, sharding = stage_chain(parts, stages[0]), data_parallel.replicated
    init = compiled(parts, ("init", tx, sharding), lambda: init_program(parts, tx, sharding))
    state = init(init_key, data_parallel.put(splits.x_train[: tc.batch_size]))
    if source:
        state, splits = start_from_source(cfg, source, reused, state, parts, splits, console)
    if writer:
        save_scaling(run_dir, splits.scaling)
    summary = {"compile_time_s": None, "devices": devices, "seed": tc.seed, "input_shape": input_shape, **found,
               **({"transfer_source": str(source.path)} if cfg.transfer.source else {})}
    run = Run(cfg, run_dir, console, start, data_parallel, writer, source, splits, parts, stages,
              (init_key, data_key, eval_key), state, summary,
              stopper=EarlyStopping(tc.early_stopping.patience, tc.early_stopping.monitor),
              checkpoints=Checkpoints(run_dir / "checkpoints", tc.keep_checkpoints))
    if tc.resume:
        run.state, run.state_stage, run.first_epoch, missing = resume(run.checkpoints, state, parts, stages,
                                                                      run.stopper, RunFiles(run_dir), console, writer)
        run.summary.update({"missing_metric_epochs": missing} if missing else {})
    return run


def train(run: Run) -> dict[str, Any]:
    """Train the run's stages in one loop with its handlers, then finish it: its summary.json, returned."""
    cfg, tc, files, writer = run.cfg, run.cfg.trainer, RunFiles(run.run_dir), run.writer
    _, data_key, eval_key = run.keys
    x_train, y_train = run.data_parallel.put((run.splits.x_train, run.splits.y_train))  # on every device (small)
    val = Evaluator(run.splits.x_val, run.splits.y_val, tc.eval_batch_size, data_parallel=run.data_parallel,
                    parts=run.parts)
    checkpointer = Checkpointer(run.checkpoints, tc.checkpoint_every, run.stopper)
    # Signals wait for a chunk's end from here until summary.json is written: what training made is kept.
    with deferred_signals() as interrupt:
        interrupt = AgreedEvent(interrupt, run.data_parallel) if run.several else interrupt
        with run.console.training(tc.epochs, run.steps_per_epoch, run.first_epoch - 1) as view:
            # Every process validates, decides and checkpoints (collectively); process 0 alone writes and shows.
            writers = [*build_loggers(cfg, run.run_dir, run.first_epoch, int(run.state.step)),  # metrics.jsonl, tools
                       DiagnosticsWriter(files.diagnostics, layer_names(run.state.params)),
                       Progress(view.epoch)] if writer else []
            trace = [LearningRateTrace(run.run_dir / "lr_trace.jsonl", run.parts.schedule.learning_rate_at,
                                       run.steps_per_epoch)] if writer else []
            plateau = run.parts.schedule.plateau
            handlers = [*trace,  # before Plateau: the scale this epoch trained with
                        Validation(lambda s: val(s, eval_key)), *([Plateau(plateau)] if plateau is not None else []),
                        *writers, run.stopper, Interrupt(interrupt), checkpointer]
            loop = Loop(run.parts, run.stages, tc.batch_size, tc.diagnostics_every, x_train, y_train, data_key,
                        handlers, files.diagnostics, on_compile=lambda s: val.compile(s, eval_key),
                        on_compiling=view.compiling,
                        on_stage=functools.partial(announce_stage, run.console) if writer else None,
                        on_steps=lambda epoch, done, _, metrics: view.steps(epoch, done, metrics), interrupt=interrupt,
                        pacer=AgreedPacer() if run.several else Pacer(), data_parallel=run.data_parallel)
            outcome = loop.run(run.state, run.state_stage, run.first_epoch)
            if outcome.status == "interrupted":
                view.discard()  # the bar goes: the lines that follow say where the run stopped
        if outcome.abandoned:  # stopped mid-epoch: the run continues from the end of the epoch before
            checkpointer.save(outcome.epoch, outcome.stage, outcome.state)
        examples = run.steps_per_epoch * tc.batch_size * outcome.timed_epochs
        run.summary = {"status": outcome.status, "epochs": outcome.epoch, "steps": int(outcome.state.step),
                       "best_val_accuracy": best_val_accuracy(_metrics(files.metrics)),
                       "train_examples_per_s": examples / outcome.train_time if outcome.train_time else None,
                       **run.summary, "compile_time_s": outcome.compile_time}
        return finish(run, outcome, interrupt)


def announce_stage(console: Console, left: Stage, entered: Stage, epoch: int) -> None:
    """One console line when a stage changes which layers train (transferred layers unfreeze)."""
    line = entering(left, entered, epoch)
    if line is not None:
        console.info(line)


def _sweep() -> Any:
    """Hydra's config of this job when it is one of a multirun's, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def continue_with(run_dir: Path) -> str:
    """`continue with: COMMAND`: the command that takes up what a signal stopped. A single run resumes from its
    dir; a sweep's job names the whole sweep (its command line: runner.cli.callbacks.sweep_command_line), since the
    signal stopped the sweep, and continuing the job alone would leave the others undone."""
    hydra = _sweep()
    if hydra is None:
        typed = _typed_run_dir() or str(run_dir)
        return f"continue with: python -m runner trainer.resume=true hydra.run.dir={shlex.quote(typed)}"
    from runner.cli.callbacks import sweep_command_line

    given = sweep_command_line(Path(hydra.sweep.dir)) or ["-m", *hydra.overrides.task]
    kept = [a for a in given if a.partition("=")[0].lstrip("+~") not in ("trainer.resume", "hydra.sweep.dir")]
    command = [*kept, "trainer.resume=true", f"hydra.sweep.dir={hydra.sweep.dir}"]
    return "continue the sweep with: python -m runner " + " ".join(shlex.quote(a) for a in command)


def _typed_run_dir() -> str | None:
    """hydra.run.dir as the command line gave it (`outputs/long`; the pre-run checks pin a default's `${now:}`),
    where Hydra runs this job; None elsewhere."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    typed = OmegaConf.select(HydraConfig.get(), "run.dir", default=None) if HydraConfig.initialized() else None
    return None if typed is None else str(typed)


def start_from_source(cfg: DictConfig, source: Source, reused: Sequence[str], state: TrainState, parts: Parts,
                      splits: Splits, console: Console) -> tuple[TrainState, Splits]:
    """The state with the source's layers grafted in; with transfer.cache, also the splits as their outputs and a
    model applied from the cut up."""
    params, batch_stats = graft(state.params, state.batch_stats, source, reused)
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))
    console.info(f"transfer: {', '.join(reused)} from {source.path}"
                 f"{' (frozen)' if cfg.transfer.freeze else ''}{', cached' if cfg.transfer.cache else ''}")
    if cfg.transfer.cache:
        check_cache(cfg.transfer, parts.regularizer, cfg.trainer.diagnostics_every)
        splits = with_cached_inputs(splits, parts.model, {"params": params, "batch_stats": batch_stats}, len(reused))
        state = state.replace(apply_fn=functools.partial(parts.model.apply, start=len(reused)))
    return state, splits


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


def finish(run: Run, outcome: Outcome, interrupt: threading.Event) -> dict:
    """Write summary.json for how the loop ended: test metrics, divergence, diagnostics; returns it.

    Raises Interrupted when a signal arrived (after writing the summary of what was trained). Only the process
    that writes (process 0) writes; the others evaluate with it."""
    cfg, splits, stopper, summary, run_dir, console = run.cfg, run.splits, run.stopper, run.summary, run.run_dir, \
        run.console
    eval_key, start, data_parallel, writer = run.keys[2], run.start, run.data_parallel, run.writer
    tc, state = cfg.trainer, outcome.state
    if outcome.status == "interrupted":
        summary.update(test_loss=None, test_accuracy=None, wall_time_s=time.perf_counter() - start)
        if writer:
            write_json(run_dir / "summary.json", summary)
            close_loggers(run_dir, summary)
        where = (f"during epoch {outcome.epoch + 1} (its steps so far dropped): checkpoint of epoch {outcome.epoch}"
                 if outcome.abandoned else f"at epoch {outcome.epoch}: checkpoint")
        console.warn(f"interrupted {where} saved; {continue_with(run_dir)}")
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
    if tc.sparsify_threshold > 0:
        state = state.replace(params=sparsify(state.params, tc.sparsify_threshold))
    if writer:
        weights.save(run_dir / WEIGHTS_FILE, state.params, state.batch_stats)  # the weights the test metrics are of
    summary.update(final_evaluation(cfg, splits, state, eval_key, data_parallel, run.parts))
    summary["wall_time_s"] = time.perf_counter() - start
    if writer:
        write_json(run_dir / "summary.json", summary)
        close_loggers(run_dir, summary)
    if interrupt.is_set():  # after the last epoch's end: the run is whole, but the user asked to stop
        console.warn(f"interrupted after training ended: the run is complete, summary.json written ({run_dir})"
                     + (f"; {continue_with(run_dir)}" if _sweep() is not None else ""))
        raise Interrupted(interrupt.signum)
    return summary


def final_evaluation(cfg: DictConfig, splits: Splits, state: TrainState, key: jax.Array,
                     data_parallel: DataParallel | None = None, parts: Parts | None = None) -> dict[str, Any]:
    """Test metrics (and MC dropout's, when asked) of the final weights, with their sparsity (`parts`: the run's,
    whose programs are kept: runner/training/programs.py)."""
    tc = cfg.trainer
    test = Evaluator(splits.x_test, splits.y_test, tc.eval_batch_size, data_parallel=data_parallel,
                     parts=parts)(state, key)
    result = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
              "weight_sparsity": weight_sparsity(state.params)}
    if tc.mc_dropout_samples:
        mc = Evaluator(splits.x_test, splits.y_test, tc.eval_batch_size, tc.mc_dropout_samples,
                       data_parallel, parts)(state, key)
        result.update(mc_dropout_test_accuracy=mc["accuracy"], mc_dropout_test_loss=mc["loss"])
    return result


def _but_seed(cfg: DictConfig) -> str:
    """The config but trainer.seed, resolved, as text: what a run's parts and programs are built from (the seed
    reaches them only as the PRNG key, an argument); a value that interpolates the seed keeps it."""
    from omegaconf import OmegaConf

    rest = OmegaConf.to_container(cfg, resolve=True)
    rest["trainer"].pop("seed", None)
    return OmegaConf.to_yaml(OmegaConf.create(rest))


def sparsify(params: Any, threshold: float) -> Any:
    """Connection weights with |w| < threshold set to exactly zero (biases and norm parameters kept)."""
    return flax.traverse_util.unflatten_dict({
        path: jnp.where(jnp.abs(w) < threshold, 0.0, w) if path[-1] == "kernel" else w
        for path, w in flax.traverse_util.flatten_dict(params).items()})


def weight_sparsity(params: Any) -> float:
    """The fraction of connection weights (kernels) that are exactly zero. Counted on the host: as jnp ops it compiled
    two small programs per kernel shape (~0.25 s at the end of a run of a new net)."""
    kernels = [np.asarray(w) for path, w in flax.traverse_util.flatten_dict(params).items() if path[-1] == "kernel"]
    return float(sum(int(np.count_nonzero(w == 0)) for w in kernels) / sum(w.size for w in kernels))


def resume(checkpoints: Checkpoints, state: TrainState, parts: Parts, stages: Sequence[Stage],
           stopper: EarlyStopping, files: RunFiles, console: Console,
           writer: bool = True) -> tuple[TrainState, int, int, list[int]]:
    """Restore the newest usable checkpoint; drop metrics and diagnostics of epochs after it (`writer` only).

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
    if stopper.stopped(epoch):  # early stopping ended the run at this epoch: the loop would train one more
        from runner.rundir.relaunch import NothingToTrain

        checkpoints.close()
        raise NothingToTrain("early_stopped", f"early stopping ended the run at epoch {epoch} (best epoch "
                             f"{stopper.best_epoch}), as its checkpoint records; nothing to train in {files.run_dir}")
    for path, read in ((files.metrics, _metrics), (files.diagnostics, read_jsonl)) if writer else ():
        if path.exists():
            rewrite_jsonl(path, [r for r in read(path) if r["epoch"] <= epoch])
    missing = sorted(set(range(1, epoch + 1)) - {r["epoch"] for r in _metrics(files.metrics)})
    if missing:  # a torn line (a crash mid-write) cannot be rebuilt: that epoch's weights are gone
        console.warn(f"metrics.jsonl lacks epoch(s) {', '.join(map(str, missing))} (torn or removed lines); "
                     "they stay missing, and summary.json lists them as missing_metric_epochs")
    console.info(f"resumed from the checkpoint of epoch {epoch} (step {int(trees['state'].step)})")
    return trees["state"], meta.get("stage", 0), epoch + 1, missing


def _metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a torn line (a crash mid-write) is left out, and its epoch counts as missing."""
    return read_metrics(path, on_bad_line=leave_out)

