"""`trainer.replicas=K`: K seeds of one config trained as one compiled program (`jax.vmap` over the train state).

Member i is the run `trainer.seed=<seed + i>` would be: its own validation split and input scaling (both drawn
from its seed), initialization, dropout draws and data order; the compiled epoch is the runner's own
(runner/train.py) mapped over the members. Small models leave a GPU (or a CPU's vector units) mostly idle, and
K members in one program fill them.

Each member writes its own run dir, `<run dir>/seed_<s>/` (.hydra/ with its config and overrides, metrics.jsonl,
summary.json, model.safetensors, and what the chosen loggers write: logger=[csv,tensorboard,mlflow] as for a
single run), which `python -m runner.report` reads like any other run, so seed groups and intervals come for free.
The run dir itself gets `replicas.json`, naming the members.

What a member cannot do alone inside one program is refused in one line: early stopping, performance
scheduling (plateau), stages and transfer, per-layer diagnostics, checkpoints and resume. A member whose loss
goes non-finite keeps its last finite epoch's weights and is `diverged`; the others go on. The program runs on
JAX's default device (`trainer.devices` is not split over the members). Ctrl-C stops after
the current epoch (a whole epoch is one call here) and the members' summaries say `interrupted`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from runner import weights
from runner.build import build_parts
from runner.console import Console
from runner.errors import UserError
from runner.handlers import EpochEnd
from runner.interrupts import Interrupted, deferred_signals
from runner.loggers import build_loggers, close_loggers
from runner.outputs import write_atomic, write_json
from runner.records import read_metrics
from runner.train import create_train_state, make_evaluate, make_train_epoch

MEMBER_DIR = "seed_{seed}"


def check_replicas(cfg: DictConfig) -> None:
    """Refuse, in one line, what a member of a vmapped program cannot do on its own."""
    tc = cfg.trainer
    unsupported = [
        (tc.early_stopping.patience > 0, "trainer.early_stopping.patience", "0"),
        ("plateau" in str(cfg.schedule.get("_target_", "")), "schedule=plateau", "another schedule"),
        (cfg.stages.get("_target_", "").rsplit(".", 1)[-1] != "single", "stages", "stages=single"),
        (cfg.transfer.source is not None, "transfer.source", "null"),
        (cfg.get("pretraining") is not None and cfg.pretraining.get("_target_") is not None
         and not str(cfg.pretraining._target_).endswith(".none"), "pretraining", "pretraining=none"),
        (tc.diagnostics_every > 0, "trainer.diagnostics_every", "0"),
        (tc.checkpoint_every > 0, "trainer.checkpoint_every", "0"),
        (tc.resume, "trainer.resume", "false"),
        (str(cfg.optimizer.get("learning_rate")) == "auto", "optimizer.learning_rate=auto", "a number"),
        (str(tc.devices) not in ("auto", "1"), "trainer.devices", "auto"),  # the members share JAX's default device
    ]
    for bad, key, valid in unsupported:
        if bad:
            raise UserError(f"trainer.replicas={tc.replicas}: {key} acts on each run alone, which one program of "
                            f"{tc.replicas} members cannot; valid: {key.split('=')[0]}={valid} with replicas, "
                            "or a multirun over trainer.seed")


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    member.trainer.seed, member.trainer.replicas = seed, 1
    return member


def train_replicas(cfg: DictConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Train the members, write their run dirs; returns the run's summary (means over the members, their paths)."""
    from runner.run import load_data  # the same data path as a run

    check_replicas(cfg)
    start, tc = time.perf_counter(), cfg.trainer
    seeds = [tc.seed + i for i in range(tc.replicas)]
    members = [member_config(cfg, s) for s in seeds]
    splits = [load_data(m) for m in members]
    first = splits[0]
    steps_per_epoch = len(first.x_train) // tc.batch_size
    parts = build_parts(cfg, first.num_classes, steps_per_epoch)
    console.info(f"dataset {first.name}: {len(first.x_train)} train / {len(first.x_val)} val / {len(first.x_test)} "
                 f"test; {len(seeds)} replicas (seeds {seeds[0]}..{seeds[-1]}) in one program")
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(s), 3) for s in seeds])  # init, data, eval per member
    init_keys, data_keys, eval_keys = keys[:, 0], keys[:, 1], keys[:, 2]
    x = jnp.stack([s.x_train for s in splits])
    y = jnp.stack([s.y_train for s in splits])
    states = jax.vmap(lambda k, xs: create_train_state(k, parts, xs[: tc.batch_size]))(init_keys, x)
    epoch = jax.jit(jax.vmap(make_train_epoch(parts, tc.batch_size)))
    val = _Evaluation([(s.x_val, s.y_val) for s in splits], tc.eval_batch_size)
    typed = run_dir / ".hydra" / "overrides.yaml"  # what Hydra saved of the command line
    overrides = yaml.safe_load(typed.read_text()) or [] if typed.is_file() else []
    dirs = [_member_dir(run_dir, cfg, overrides, s) for s in seeds]
    # Each member's loggers, as its run alone would have them (metrics.jsonl first); open side by side.
    loggers = [build_loggers(m, d, alongside=i > 0) for i, (m, d) in enumerate(zip(members, dirs))]
    status = ["completed"] * len(seeds)
    diverged_at: list[int | None] = [None] * len(seeds)
    with deferred_signals() as interrupt, console.training(tc.epochs, steps_per_epoch) as view:
        for e in range(1, tc.epochs + 1):
            began = time.perf_counter()
            new, raw = epoch(states, x, y, jax.vmap(jax.random.fold_in, in_axes=(0, None))(data_keys, e))
            raw = jax.device_get(raw)
            seconds = time.perf_counter() - began
            finite = (np.asarray(raw["first_nonfinite_step"]) < 0) & np.asarray(raw["params_finite"])
            states = _keep_where(jnp.asarray(finite), new, states)  # a diverged member keeps its last finite weights
            scores = val(states, eval_keys)
            for i, d in enumerate(dirs):
                if status[i] != "completed":
                    continue
                if not finite[i]:
                    status[i], diverged_at[i] = "diverged", int(raw["first_nonfinite_step"][i])
                    continue
                record = {
                    "epoch": e, "step": int(states.step[i]), "lr": float(parts.schedule.learning_rate_at(states.step[i])),
                    "train_loss": float(raw["loss"][i]), "train_accuracy": float(raw["accuracy"][i]),
                    "val_loss": scores["loss"][i], "val_accuracy": scores["accuracy"][i], "epoch_time_s": seconds}
                # The member's own state only for loggers beyond metrics.jsonl, which reads the record alone.
                end = EpochEnd(e, 0, _member(states, i) if len(loggers[i]) > 1 else None, record, {}, e == tc.epochs)
                for logger in loggers[i]:
                    logger.on_epoch_end(end)
            view.epoch(e, {"train_loss": float(np.mean(raw["loss"])), "val_accuracy": float(np.mean(scores["accuracy"]))})
            if interrupt.is_set():
                status = ["interrupted" if s == "completed" else s for s in status]
                break
        test = _Evaluation([(s.x_test, s.y_test) for s in splits], tc.eval_batch_size)(states, eval_keys)
        summaries = []
        for i, (d, s) in enumerate(zip(dirs, seeds)):
            member = _member(states, i)
            weights.save(d / "model.safetensors", member.params, member.batch_stats)
            metrics = read_metrics(d / "metrics.jsonl")
            summary = {"status": status[i], "epochs": len(metrics), "steps": int(states.step[i]),
                       "best_val_accuracy": max((r["val_accuracy"] for r in metrics), default=None),
                       "test_loss": test["loss"][i], "test_accuracy": test["accuracy"][i], "seed": s,
                       "replica": i, "replicas": len(seeds), "wall_time_s": time.perf_counter() - start,
                       "input_shape": list(first.x_train.shape[1:]),
                       **({"diverged_at_step": diverged_at[i]} if diverged_at[i] is not None else {})}
            write_json(d / "summary.json", summary)
            close_loggers(d, summary)
            summaries.append(summary)
        trained = sum(s["epochs"] for s in summaries) * steps_per_epoch * tc.batch_size
        result = {"status": "interrupted" if interrupt.is_set() else "completed", "replicas": len(seeds),
                  "members": [str(d.relative_to(run_dir)) for d in dirs], "member_status": status,
                  "epochs": max(s["epochs"] for s in summaries),
                  # means over the members; each member's own numbers are in its summary.json
                  "best_val_accuracy": float(np.mean([s["best_val_accuracy"] or 0.0 for s in summaries])),
                  "test_accuracy": float(np.mean([s["test_accuracy"] for s in summaries])),
                  "test_loss": float(np.mean([s["test_loss"] for s in summaries])),
                  "train_examples_per_s": trained / (time.perf_counter() - start),
                  "wall_time_s": time.perf_counter() - start}
        write_json(run_dir / "replicas.json", result)
        if interrupt.is_set():
            console.warn(f"interrupted: {len(seeds)} members' metrics and summaries written in {run_dir}; replicas "
                         "do not checkpoint, so a new run starts over")
            raise Interrupted(interrupt.signum)
    return result


def _member_dir(run_dir: Path, cfg: DictConfig, overrides: list[str], seed: int) -> Path:
    """`<run dir>/seed_<s>/` with the .hydra/ files a run of that seed would have (the report reads them)."""
    d = run_dir / MEMBER_DIR.format(seed=seed)
    own = [o for o in overrides if not o.lstrip("+~").split("=")[0] in ("trainer.seed", "trainer.replicas")]
    write_atomic(d / ".hydra" / "config.yaml", OmegaConf.to_yaml(member_config(cfg, seed)))
    write_atomic(d / ".hydra" / "overrides.yaml", yaml.safe_dump([*own, f"trainer.seed={seed}"]))
    return d


def _member(states: Any, i: int) -> Any:
    """Member i's train state, out of the stacked states of all members."""
    return jax.tree_util.tree_map(lambda leaf: leaf[i], states)


@jax.jit
def _keep_where(ok: jax.Array, new: Any, old: Any) -> Any:
    """Per member: the new state where `ok`, else the old one."""
    def pick(a, b):
        return jnp.where(ok.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


class _Evaluation:
    """Every member's loss and accuracy on its own split, one compiled program over the members."""

    def __init__(self, splits: list[tuple[np.ndarray, np.ndarray]], batch_size: int):
        from runner.run import padded

        self.size = len(splits[0][0])
        if self.size:
            batch = max(1, min(batch_size, self.size))
            arrays = [padded(xs, ys, batch) for xs, ys in splits]
            self.x, self.y, self.mask = (jnp.stack([a[i] for a in arrays]) for i in range(3))
            self.fn = jax.jit(jax.vmap(make_evaluate(batch)))

    def __call__(self, states: Any, keys: jax.Array) -> dict[str, list[float]]:
        if not self.size:
            return {"loss": [float("nan")] * len(keys), "accuracy": [float("nan")] * len(keys)}
        out = jax.device_get(self.fn(states, self.x, self.y, self.mask, keys))
        return {k: [float(v) for v in values] for k, values in out.items()}
