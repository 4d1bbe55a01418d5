"""The learning-rate range test (Smith 2017; fast.ai's lr_find), run in the run's loop; `optimizer.learning_rate=auto`.

`python -m runner.lr_find` (runner/lr_find.py) is its command line.

Finder settings are flags, never config keys, so they cannot collide with a group: `--min-lr` (1e-7) and
`--max-lr` (10) bound the sweep, `--steps` (250) is its length, `--beta` (0.98) the smoothing, `--divergence-factor`
(4) the stop. `--out DIR` (default `outputs/lr_find/<date>_<time>`) must be new or empty: the finder never writes
among other files, and on failure removes only what it created.

The test. Step t (0-based) of `steps` trains one batch at lr_t = min_lr * (max_lr / min_lr)^(t / (steps - 1)), an
exact geometric sequence from min_lr to max_lr; batches are drawn from shuffled epochs in the run's order (the
same key and epoch numbering as the run's), cycling through as many epochs as `steps` needs. The loss of each step
(the training loss of its batch, before its update) is recorded and smoothed by a bias-corrected exponential
moving average, avg_t = beta avg_{t-1} + (1 - beta) loss_t, avg_{-1} = 0, smoothed_t = avg_t / (1 - beta^(t+1)).
The test stops at the first step whose loss is not finite or whose smoothed loss exceeds `divergence_factor` times
the lowest smoothed loss before it; that step is the last one recorded.

The run's loop (runner/training/loop.py) trains it: one stage of ceil(steps / steps per epoch) epochs, each one compiled
program of the run's train step; the rates are a table on the device, given to the optimizer as its learning-rate
schedule (`lr(count) = table[count]`), so the optimizer's own step count picks lr_t. That is the path every
schedule of the runner takes (runner/training/optim.py), so lr_t enters each optimizer exactly where its rate does: Adam's
final scale, AdamW's decay, FTRL's sigma and closed form. Scaling the updates by lr_t / lr0 instead would be exact
only where the rate is a last multiplier, not for FTRL; `inject_hyperparams` would be exact too, but needs the
chain assembled outside runner/training/optim.py. Each epoch's metrics hold the loss of each of its steps, read with the
epoch's chunks (no host round-trip per step); at each epoch's end a handler (`RangeStop`) smooths them and applies
the stop rule, and at the stop it ends the loop: the steps that epoch took after the stop (and those past the
test's last step) are dropped.

The suggestion: the rate of the lowest smoothed loss, divided by 10 (fast.ai's `lr_min`), to 3 significant digits.
The lowest point is the largest rate at which the loss still fell as far as it would; a run trains for many epochs
at one rate, in sharper regions than the test's few hundred steps see, so a decade below it is the margin. The
rate of a smoothed loss is that of its window, not of its last step: smoothed_t is a weighted mean of the losses
of steps t - k with weights proportional to beta^k, so it describes the weighted geometric mean of their rates,
which (log lr being linear in t) is exactly lr at step t - lag_t, lag_t = beta / (1 - beta) - (t + 1) beta^(t+1) /
(1 - beta^(t+1)), the window's centre of mass (`smoothed_rates`). At beta = 0.98 that lag is 49 steps, 1.6 decades
of a 250-step test from 1e-7 to 10: read at its own step's rate, the smoothed minimum sits where the raw loss has
long since turned up, and on digits a tenth of it trained worse than the default rate (README, "Finding a learning
rate"). The steepest descent of the smoothed loss, the other common rule, reads a derivative of a noisy curve:
on digits, with seeds 1-5 it fell on the first steps, where bias correction leaves the most noise.

Outputs: `lr_find.png` (the smoothed loss against the rate of its window, log x, the raw loss of each step faint
against its own rate, the suggestion a labelled vertical line) and `lr_find.json` (lrs: each step's rate, losses,
smoothed, smoothed_lrs: each smoothed value's rate, suggestion, lowest_loss_lr, stop_step, stop_reason, settings,
overrides, seed). The suggestion is printed in one line.

`python -m runner optimizer.learning_rate=auto` runs this test first with the default settings and the run's seed
(`resolve_auto_learning_rate`) and trains at the suggestion (for schedule=one_cycle, the peak rate).
"""


from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import math
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, open_dict, read_write

from runner.config.checks import check_value
from runner.config.compose import is_auto_rate
from runner.console import Console
from runner.errors import UserError
from runner.rundir.outputs import write_atomic, write_json
from runner.rundir.resumed import record_resolved
from runner.techniques.schedules import Schedule
from runner.training.build import build_model, build_regularizer, instantiate
from runner.training.handlers import EpochEnd
from runner.training.loop import Loop
from runner.training.optim import build_optimizer
from runner.training.stages import Stage
from runner.training.train import Parts, create_train_state

PNG, JSON = "lr_find.png", "lr_find.json"
SUGGESTION_RULE = "lowest smoothed loss / 10"


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """The range test's own settings (the flags of `python -m runner.lr_find`)."""

    min_lr: float = 1e-7
    max_lr: float = 10.0
    steps: int = 250
    beta: float = 0.98
    divergence_factor: float = 4.0

    def check(self) -> None:
        """UserError naming the flag of the first setting out of range."""
        check_value("--min-lr", self.min_lr, "> 0")
        check_value("--max-lr", self.max_lr, "> 0")
        if self.max_lr <= self.min_lr:
            raise UserError(f"--max-lr: must be above --min-lr ({self.min_lr:g}), got {self.max_lr:g}")
        check_value("--steps", self.steps, "int >= 2")
        check_value("--beta", self.beta, "[0, 1)")
        check_value("--divergence-factor", self.divergence_factor, "> 1")


def lr_sequence(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The rate of each step: min_lr * (max_lr / min_lr)^(t / (steps - 1)), t = 0 .. steps - 1 (float64)."""
    return min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))


def smoothed_rates(lrs: np.ndarray, beta: float) -> np.ndarray:
    """The rate each smoothed loss describes: lrs[t - lag_t], the weighted geometric mean of its window's rates
    (module doc), for a geometric `lrs`."""
    t = np.arange(len(lrs))
    lag = beta / (1 - beta) - (t + 1) * beta ** (t + 1) / (1 - beta ** (t + 1))
    ratio = lrs[-1] / lrs[0] if len(lrs) > 1 else 1.0
    return lrs * ratio ** (-lag / max(len(lrs) - 1, 1))


class Track(NamedTuple):
    """The smoothing and the stop rule, carried from step to step inside the compiled sweep."""

    avg: jax.Array  # the moving average before bias correction
    best: jax.Array  # the lowest smoothed loss so far (inf before the first step)
    seen: jax.Array  # steps taken
    stopped: jax.Array  # whether the test has stopped
    stop_step: jax.Array  # the step that stopped it; -1 while running


def start_track() -> Track:
    return Track(jnp.zeros(()), jnp.full((), jnp.inf), jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                 jnp.full((), -1, jnp.int32))


def track_step(track: Track, loss: jax.Array, beta: float, divergence_factor: float) -> tuple[Track, jax.Array]:
    """One step of the bias-corrected moving average and the stop rule: (track, smoothed loss; NaN once stopped)."""
    seen = track.seen + 1
    avg = beta * track.avg + (1.0 - beta) * loss
    smoothed = avg / (1.0 - beta ** seen.astype(avg.dtype))
    diverged = ~jnp.isfinite(loss) | (smoothed > divergence_factor * track.best)
    new = Track(avg, jnp.minimum(track.best, smoothed), seen, diverged, jnp.where(diverged, track.seen, -1))
    # Once stopped, nothing moves: later steps are skipped and their losses are not part of the test.
    kept = jax.tree_util.tree_map(lambda old, now: jnp.where(track.stopped, old, now), track, new)
    return kept, jnp.where(track.stopped, jnp.nan, smoothed)


def advance_track(track: Track, losses: jax.Array, beta: float,
                  divergence_factor: float) -> tuple[Track, jax.Array]:
    """`track_step` over a sequence of losses, from `track`: (track after them, their smoothed losses)."""
    def body(track, loss):
        return track_step(track, loss, beta, divergence_factor)

    return jax.lax.scan(body, track, jnp.asarray(losses, jnp.float32))


def track_losses(losses: jax.Array, beta: float, divergence_factor: float) -> tuple[jax.Array, jax.Array]:
    """(smoothed losses, stop step or -1) of a loss sequence: the test's own rule, on given losses."""
    track, smoothed = advance_track(start_track(), losses, beta, divergence_factor)
    return smoothed, track.stop_step


class RangeStop:
    """The range test's handler in the run's loop: at each epoch's end, the smoothing and the stop rule over the
    epoch's step losses (`track_step`, its track carried from epoch to epoch: the same float32 operations in the
    same order as step by step); at the stop, or at the test's last step, it ends the loop. The steps an epoch
    took past either are dropped: they are not part of the test."""

    def __init__(self, steps: int, beta: float, divergence_factor: float):
        self.steps, self.track, self.losses, self.smoothed = steps, start_track(), [], []
        self.advance = jax.jit(functools.partial(advance_track, beta=beta, divergence_factor=divergence_factor))

    def on_epoch_end(self, end: EpochEnd) -> None:
        losses = np.asarray(end.raw["step_losses"])[: self.steps - len(self.losses)]
        self.track, smoothed = self.advance(self.track, losses)
        self.losses.extend(losses)
        self.smoothed.extend(np.asarray(smoothed))
        if self.stop_step is not None or len(self.losses) == self.steps:
            end.stop = "early_stopped"

    @property
    def stop_step(self) -> int | None:
        """The step that stopped the test; None while it runs (or when it ran every step)."""
        stop = int(self.track.stop_step)
        return None if stop < 0 else stop

    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """(losses, smoothed losses) of every step up to and including the stop, float64."""
        kept = self.steps if self.stop_step is None else self.stop_step + 1
        return (np.asarray(self.losses[:kept], np.float64), np.asarray(self.smoothed[:kept], np.float64))


def suggest(rates: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(suggestion, rate of the lowest smoothed loss): that rate / 10, to 3 significant digits (module doc).

    `rates`: the rate each smoothed value describes (`smoothed_rates`)."""
    smoothed = np.asarray(smoothed, np.float64)
    if not np.isfinite(smoothed).any():
        raise UserError("lr_find: the loss was not finite at the first step, so no rate can be judged; "
                        "valid: a config whose first step trains (try python -m runner with it)")
    lowest = float(rates[int(np.nanargmin(np.where(np.isfinite(smoothed), smoothed, np.nan)))])
    return float(f"{lowest / 10:.3g}"), lowest


def finder_parts(cfg: DictConfig, num_classes: int, lrs: np.ndarray) -> Parts:
    """The run's model, regularizers and optimizer chain, its rate at step t being lrs[t] (the schedule is ours)."""
    regularizer = build_regularizer(cfg)
    table = jnp.asarray(lrs, jnp.float32)
    schedule = Schedule(lambda count: table[count])
    optimizer = build_optimizer(cfg.optimizer, schedule, instantiate(cfg.clip, "clip"), regularizer.transform)
    return Parts(build_model(cfg, num_classes, regularizer), optimizer, regularizer, schedule)


@dataclasses.dataclass(frozen=True)
class RangeTest:
    """A finished range test: every recorded step (up to and including the one that stopped it)."""

    lrs: np.ndarray  # the rate of each step
    losses: np.ndarray
    smoothed: np.ndarray
    smoothed_lrs: np.ndarray  # the rate each smoothed loss describes (`smoothed_rates`)
    stop_step: int | None  # None: it ran every step
    stop_reason: str | None  # "non-finite loss" or "diverged"
    suggestion: float
    lowest_loss_lr: float
    settings: FinderSettings

    def record(self, overrides: Sequence[str], seed: int) -> dict[str, Any]:
        """What lr_find.json holds."""
        return {"suggestion": self.suggestion, "rule": SUGGESTION_RULE, "lowest_loss_lr": self.lowest_loss_lr,
                "stop_step": self.stop_step, "stop_reason": self.stop_reason,
                "settings": dataclasses.asdict(self.settings), "overrides": list(overrides), "seed": seed,
                "lrs": self.lrs.tolist(), "losses": self.losses.tolist(), "smoothed": self.smoothed.tolist(),
                "smoothed_lrs": self.smoothed_lrs.tolist()}


def run_range_test(cfg: DictConfig, splits: Any, settings: FinderSettings = FinderSettings()) -> RangeTest:
    """The range test of this config on these splits (runner/data `Splits`), from the run's initial weights."""
    settings.check()
    lrs = lr_sequence(settings.min_lr, settings.max_lr, settings.steps)
    parts = finder_parts(cfg, splits.num_classes, lrs)
    batch_size = cfg.trainer.batch_size
    # The run's keys (runner/cli/run.py): the test starts from the run's initial weights and sees its first batches.
    init_key, data_key, _ = jax.random.split(jax.random.PRNGKey(cfg.trainer.seed), 3)
    x, y = jax.device_put(splits.x_train), jax.device_put(splits.y_train)
    state = create_train_state(init_key, parts, x[:batch_size])
    judge = RangeStop(settings.steps, settings.beta, settings.divergence_factor)
    # The run's loop, one stage of as many epochs as the steps need (epoch e shuffled by fold_in(data_key, e));
    # a non-finite loss is the test's to judge, not a divergence to replay.
    epochs = -(-settings.steps // (len(splits.x_train) // batch_size))
    Loop(parts, [Stage("lr_find", epochs)], batch_size, 0, x, y, data_key, [judge], None, step_losses=True,
         stop_when_nonfinite=False).run(state, 0, 1)
    (losses, smoothed), stop = judge.recorded(), judge.stop_step
    kept = len(losses)
    reason = None if stop is None else "non-finite loss" if not math.isfinite(losses[stop]) else "diverged"
    # The stopping step itself is shown, not judged: its smoothed loss is past the divergence line or not finite.
    judged = kept if stop is None else stop
    rates = smoothed_rates(lrs, settings.beta)[:kept]
    suggestion, lowest = suggest(rates[:judged], smoothed[:judged])
    return RangeTest(lrs[:kept], losses, smoothed, rates, stop, reason, suggestion, lowest, settings)


def describe_result(test: RangeTest) -> str:
    """The one line that reports a test."""
    ended = (f"stopped at step {test.stop_step} (lr {test.lrs[test.stop_step]:.3g}, {test.stop_reason})"
             if test.stop_step is not None else f"no divergence up to --max-lr {test.settings.max_lr:g}")
    return (f"suggested learning rate {test.suggestion:g} (lowest smoothed loss at lr {test.lowest_loss_lr:.3g}, "
            f"divided by 10; {ended})")


# ---- files ----

def write_results(test: RangeTest, out: Path, overrides: Sequence[str], seed: int) -> None:
    """lr_find.json and lr_find.png in `out` (an existing dir), each written whole or not at all."""
    write_json(out / JSON, test.record(overrides, seed))
    plot(test, out / PNG, " ".join(overrides) or "default config")


def plot(test: RangeTest, path: Path, subtitle: str) -> None:
    """Smoothed loss against the rate (log x), the raw loss faint, the suggestion a labelled vertical line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.4), constrained_layout=True)
    ax.plot(test.lrs, test.losses, color="C0", alpha=0.25, linewidth=0.8, label="loss of each step")
    ax.plot(test.smoothed_lrs, test.smoothed, color="C0", linewidth=2,
            label=f"smoothed (bias-corrected EMA, beta={test.settings.beta:g}), at its window's rate")
    lowest = int(np.nanargmin(np.where(np.isfinite(test.smoothed), test.smoothed, np.nan)))
    ax.plot(test.smoothed_lrs[lowest], test.smoothed[lowest], "o", color="C0",
            label=f"lowest smoothed loss, lr {test.lowest_loss_lr:.3g}")
    ax.axvline(test.suggestion, color="C3", linestyle="--", linewidth=1.5,
               label=f"suggestion {test.suggestion:g} ({SUGGESTION_RULE})")
    ax.text(test.suggestion, 0.97, f" suggestion {test.suggestion:g}", transform=ax.get_xaxis_transform(),
            color="C3", rotation=90, va="top", ha="right")
    shown = np.concatenate([test.losses, test.smoothed])
    shown = shown[np.isfinite(shown)]
    top = np.nanmax(np.where(np.isfinite(test.smoothed), test.smoothed, np.nan))
    if shown.size and math.isfinite(top):  # the raw blow-up at the end would otherwise flatten the curve
        ax.set_ylim(max(0.0, shown.min() - 0.05 * (top - shown.min())), top * 1.05)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss (cross-entropy, nats)",
           title=f"Learning-rate range test\n{subtitle}")
    ax.title.set_fontsize("medium")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")  # below: the curves fill the axes
    try:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        write_atomic(path, png.getvalue())
    finally:
        plt.close(fig)


# ---- optimizer.learning_rate=auto ----

def resolve_auto_learning_rate(cfg: DictConfig, splits: Any, run_dir: Path,
                               console: Console) -> tuple[DictConfig, dict[str, Any]]:
    """(config to train with, summary entries): with optimizer.learning_rate=auto, the range test's suggestion.

    Runs the test with the default settings and the run's seed, writes lr_find.png and lr_find.json into the run
    dir, and records the rate in the run's saved config (`record_found_rate`). Any other config comes back as it
    is, with no summary entries.
    """
    if not is_auto_rate(cfg):
        return cfg, {}
    earlier = run_dir / JSON
    if cfg.trainer.resume and earlier.exists():  # a resumed multirun job recomposes `auto`: its checkpoint
        found = json.loads(earlier.read_text())["suggestion"]  # was trained at the rate found then
        console.info(f"optimizer.learning_rate=auto: {found:g}, found when this run started ({earlier})")
    else:
        test = run_range_test(cfg, splits)
        write_results(test, run_dir, _hydra_task_overrides(), cfg.trainer.seed)
        found = test.suggestion
        console.info(f"optimizer.learning_rate=auto: {describe_result(test)}; {PNG} in {run_dir}")
    record_found_rate(run_dir, found)
    return with_learning_rate(cfg, found), {"learning_rate_found": found}


def with_learning_rate(cfg: DictConfig, value: float) -> DictConfig:
    """A copy of the config with optimizer.learning_rate set (the original, Hydra's, is left as it is)."""
    cfg = copy.deepcopy(cfg)
    with read_write(cfg), open_dict(cfg):
        cfg.optimizer.learning_rate = value
    return cfg


def record_found_rate(run_dir: Path, value: float) -> None:
    """Put the found rate where `auto` stood in the run dir's saved config and overrides (runner/rundir/resumed.py), so a
    resumed run continues at the found rate instead of running the test again."""
    record_resolved(run_dir, "optimizer.learning_rate", value)


def _hydra_task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
