"""`trainer.replicas=K`: K seeds of one config trained as one compiled program (`jax.vmap` over the train state).

Member i is the run `trainer.seed=<seed + i>` would be: its own validation split and input scaling (both drawn
from its seed), initialization, dropout draws and data order; the compiled epoch is the runner's own
(runner/training/train.py) mapped over the members. Small models leave a GPU (or a CPU's vector units) mostly idle, and
K members in one program fill them.

Each member writes its own run dir, `<run dir>/seed_<s>/` (.hydra/ with its config and overrides, metrics.jsonl,
summary.json, model.safetensors, and what the chosen loggers write: logger=[csv,tensorboard,mlflow] as for a
single run), which `python -m runner.report` reads like any other run, so seed groups and intervals come for free.
The run dir itself gets `replicas.json`, naming the members.

What a member cannot do alone inside one program is refused in one line: early stopping, performance
scheduling (plateau), stages and transfer, per-layer diagnostics, checkpoints and resume. A member whose loss
goes non-finite keeps its last finite epoch's weights and is `diverged`; the others go on. The program runs on
JAX's default device (`trainer.devices` is not split over the members). The epochs run in the
run's own loop (runner/training/loop.py) with the members stacked; Ctrl-C drops the current epoch's steps, as in a single
run, and the members' summaries say `interrupted`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from runner.cli.relations import plateau_schedule, staged
from runner.config.compose import is_auto_rate
from runner.console import Console
from runner.data import Splits, load_data
from runner.errors import UserError
from runner.net import weights
from runner.reuse.pretraining.methods import pretraining_method
from runner.reuse.transfer import save_scaling
from runner.rundir.outputs import write_atomic, write_json
from runner.rundir.records import best_val_accuracy, read_metrics, read_overrides
from runner.training.build import build_parts
from runner.training.evaluate import MemberEvaluator
from runner.training.handlers import EachMember, Interrupt, Progress, Validation, member_state
from runner.training.interrupts import Interrupted, deferred_signals
from runner.training.loggers import build_loggers, close_loggers
from runner.training.loop import Loop, Outcome
from runner.training.stages import Stage
from runner.training.train import Parts, create_train_state

MEMBER_DIR = "seed_{seed}"


def check_replicas(cfg: DictConfig) -> None:
    """Refuse, in one line, what a member of a vmapped program cannot do on its own (asked of the built parts)."""
    tc = cfg.trainer
    _refuse_unless_alone(cfg, [
        (tc.early_stopping.patience > 0, "trainer.early_stopping.patience", "0"),
        (plateau_schedule(cfg), "schedule=plateau", "another schedule"),
        (staged(cfg), "stages", "stages=single"),
        (cfg.transfer.source is not None, "transfer.source", "null"),
        (pretraining_method(cfg) is not None, "pretraining", "pretraining=none"),
        (tc.diagnostics_every > 0, "trainer.diagnostics_every", "0"),
        (tc.mc_dropout_samples > 0, "trainer.mc_dropout_samples", "0 (python -m runner.predict RUN --mc-samples N "
                                                                  "on each member's dir)"),
        (tc.checkpoint_every > 0, "trainer.checkpoint_every", "0"),
        (tc.resume, "trainer.resume", "false"),
        (is_auto_rate(cfg), "optimizer.learning_rate=auto", "a number"),
        (str(tc.devices) not in ("auto", "1"), "trainer.devices", "auto"),  # the members share JAX's default device
    ])


def _refuse_unless_alone(cfg: DictConfig, unsupported: list[tuple[bool, str, str]]) -> None:
    replicas = cfg.trainer.replicas
    for bad, key, valid in unsupported:
        if bad:
            raise UserError(f"trainer.replicas={replicas}: {key} acts on each run alone, which one program of "
                            f"{replicas} members cannot; valid: {key.split('=')[0]}={valid} with replicas, "
                            "or a multirun over trainer.seed")


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    member = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    member.trainer.seed, member.trainer.replicas = seed, 1
    return member


@dataclasses.dataclass
class Members:
    """The K runs of one replicas run: each one's seed, config, splits, run dir, loggers and how it stands."""

    seeds: list[int]
    configs: list[DictConfig]
    splits: list[Splits]
    dirs: list[Path]
    loggers: list[list]
    status: list[str]
    diverged_at: list[int | None]

    @classmethod
    def of(cls, cfg: DictConfig, run_dir: Path) -> "Members":
        seeds = [cfg.trainer.seed + i for i in range(cfg.trainer.replicas)]
        configs = [member_config(cfg, s) for s in seeds]
        typed = run_dir / ".hydra" / "overrides.yaml"  # what Hydra saved of the command line
        overrides = read_overrides(typed) if typed.is_file() else []
        dirs = [_member_dir(run_dir, cfg, overrides, s) for s in seeds]
        # Each member's loggers, as its run alone would have them (metrics.jsonl first); open side by side.
        loggers = [build_loggers(m, d, alongside=i > 0) for i, (m, d) in enumerate(zip(configs, dirs))]
        return cls(seeds, configs, [load_data(m) for m in configs], dirs, loggers, ["completed"] * len(seeds),
                   [None] * len(seeds))


def train_replicas(cfg: DictConfig, run_dir: Path, console: Console) -> dict[str, Any]:
    """Train the members, write their run dirs; returns the run's summary (means over the members, their paths)."""
    check_replicas(cfg)
    start, tc = time.perf_counter(), cfg.trainer
    members = Members.of(cfg, run_dir)
    first = members.splits[0]
    steps_per_epoch = len(first.x_train) // tc.batch_size
    parts = build_parts(cfg, first.num_classes, steps_per_epoch)
    seeds = members.seeds
    console.info(f"dataset {first.name}: {len(first.x_train)} train / {len(first.x_val)} val / {len(first.x_test)} "
                 f"test; {len(seeds)} replicas (seeds {seeds[0]}..{seeds[-1]}) in one program")
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(s), 3) for s in seeds])  # init, data, eval per member
    x, y = jnp.stack([s.x_train for s in members.splits]), jnp.stack([s.y_train for s in members.splits])
    states = jax.vmap(lambda k, xs: create_train_state(k, parts, xs[: tc.batch_size]))(keys[:, 0], x)
    with deferred_signals() as interrupt, console.training(tc.epochs, steps_per_epoch) as view:
        outcome = _train(members, parts, states, (x, y), keys, view, interrupt)
        if outcome.status == "interrupted":
            view.discard()
            members.status[:] = ["interrupted" if s == "completed" else s for s in members.status]
        result = _finish(members, outcome.state, keys[:, 2], run_dir, start, steps_per_epoch * tc.batch_size,
                         interrupted=interrupt.is_set())
        if interrupt.is_set():
            console.warn(f"interrupted: {len(seeds)} members' metrics and summaries written in {run_dir}; replicas "
                         "do not checkpoint, so a new run starts over")
            raise Interrupted(interrupt.signum)
    return result


def _train(members: Members, parts: Parts, states: Any, data: tuple[jax.Array, jax.Array], keys: jax.Array,
           view: Any, interrupt: Any) -> Outcome:
    """The epochs: the run's loop (runner/training/loop.py) over the stacked members, each member's record to its own
    loggers."""
    tc = members.configs[0].trainer
    val = MemberEvaluator([(s.x_val, s.y_val) for s in members.splits], tc.eval_batch_size)
    # The member's own state only for loggers beyond metrics.jsonl, which reads the record alone.
    each = EachMember(members.loggers, [len(loggers) > 1 for loggers in members.loggers])
    handlers = [Validation(lambda s: val(s, keys[:, 2])), each, Progress(view.epoch), Interrupt(interrupt)]
    loop = Loop(parts, [Stage("train", tc.epochs)], tc.batch_size, 0, *data, keys[:, 1], handlers, None,
                on_compiling=view.compiling, on_steps=lambda epoch, done, _, metrics: view.steps(epoch, done, {}),
                interrupt=interrupt, members=True)
    outcome = loop.run(states, 0, 1)
    members.status[:], members.diverged_at[:] = each.status, each.diverged_at
    return outcome


def _finish(members: Members, states: Any, eval_keys: jax.Array, run_dir: Path, start: float,
            examples_per_epoch: int, interrupted: bool) -> dict[str, Any]:
    """Each member's test evaluation, weights and summary; the run's replicas.json (means over the members)."""
    tc = members.configs[0].trainer
    test = MemberEvaluator([(s.x_test, s.y_test) for s in members.splits], tc.eval_batch_size)(states, eval_keys)
    summaries = []
    for i, (d, s) in enumerate(zip(members.dirs, members.seeds)):
        member = member_state(states, i)
        weights.save(d / "model.safetensors", member.params, member.batch_stats)
        save_scaling(d, members.splits[i].scaling)  # what predict, export and transfer scale raw inputs by
        metrics = read_metrics(d / "metrics.jsonl")
        summary = {"status": members.status[i], "epochs": len(metrics), "steps": int(states.step[i]),
                   "best_val_accuracy": best_val_accuracy(metrics),
                   "test_loss": test["loss"][i], "test_accuracy": test["accuracy"][i], "seed": s,
                   "replica": i, "replicas": len(members.seeds), "wall_time_s": time.perf_counter() - start,
                   "input_shape": list(members.splits[0].x_train.shape[1:]),
                   **({"diverged_at_step": members.diverged_at[i]} if members.diverged_at[i] is not None else {})}
        write_json(d / "summary.json", summary)
        close_loggers(d, summary)
        summaries.append(summary)
    trained = sum(s["epochs"] for s in summaries) * examples_per_epoch
    result = {"status": "interrupted" if interrupted else "completed", "replicas": len(members.seeds),
              "members": [str(d.relative_to(run_dir)) for d in members.dirs], "member_status": members.status,
              "epochs": max(s["epochs"] for s in summaries),
              # means over the members; each member's own numbers are in its summary.json
              "best_val_accuracy": float(np.mean([s["best_val_accuracy"] or 0.0 for s in summaries])),
              "test_accuracy": float(np.mean([s["test_accuracy"] for s in summaries])),
              "test_loss": float(np.mean([s["test_loss"] for s in summaries])),
              "train_examples_per_s": trained / (time.perf_counter() - start),
              "wall_time_s": time.perf_counter() - start}
    write_json(run_dir / "replicas.json", result)
    return result


def _member_dir(run_dir: Path, cfg: DictConfig, overrides: list[str], seed: int) -> Path:
    """`<run dir>/seed_<s>/` with the .hydra/ files a run of that seed would have (the report reads them)."""
    d = run_dir / MEMBER_DIR.format(seed=seed)
    own = [o for o in overrides if not o.lstrip("+~").split("=")[0] in ("trainer.seed", "trainer.replicas")]
    write_atomic(d / ".hydra" / "config.yaml", OmegaConf.to_yaml(member_config(cfg, seed)))
    write_atomic(d / ".hydra" / "overrides.yaml", yaml.safe_dump([*own, f"trainer.seed={seed}"]))
    return d
