"""`python -m runner.book`: the numbers chapter 11's notebook prints, rerun on Fashion-MNIST over seeds.

Each experiment is a preset, `conf/experiment/book/NAME.yaml`, that is one cell of the notebook (ageron/handson-ml3,
11_training_deep_neural_networks.ipynb) with the cell's net, optimizer, schedule, batch size and epochs;
`python -m runner +experiment=book/NAME dataset.path=DIR` runs it once. This driver runs every one over
`--seeds` seeds (`trainer.replicas` where a preset allows it, else one process per seed), each into
`OUT/NAME/` (members `seed_<s>/`, the runs' output in `OUT/logs/NAME.log`), `--jobs` experiments side by side (a
run keeps about one core busy), the longest first, skipping those whose summaries say completed, so a second run
after Ctrl-C goes on where the first stopped. Then it writes `docs/book.md`: one row per number the notebook
prints, the book's value against ours (mean ± 95% t-interval over the seeds, the difference, whether the book's
value lies within our seeds' range and within our 95% prediction interval for one run, runner/report/stats.py), the
chapter's orderings as paired differences (same seed), and the measured causes of the rows that miss by more than
1.5 points. README's section between the book markers gets the same table.

    python -m runner.book --data DIR             # everything: make book
    python -m runner.book --data DIR --quick     # one seed, 1-2 epochs, 2,000 training images: a smoke test
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runner.console import error
from runner.errors import ArgumentParser, UserError
from runner.report.stats import mean_interval, paired_difference, prediction_interval
from runner.rundir.outputs import write_atomic

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.5  # points: a row's mean within this of the book's printed value
README_MARKERS = ("<!-- book:start -->", "<!-- book:end -->")


@dataclass(frozen=True)
class Experiment:
    """One preset, run over the seeds; `replicas` False where the runner refuses them (plateau, transfer)."""

    name: str
    replicas: bool = True
    overrides: tuple[str, ...] = ()  # beyond the preset's: a cause's changed setting
    explains: str = ""  # a cause: what it measures, for the table
    label: str = ""  # a cause's dir name under OUT (default NAME+overrides)
    what: str = ""  # a cause's setting in words, for the table (default its overrides)
    quick: tuple[str, ...] = ()  # --quick's overrides beyond the common ones
    # A replicas program's overrides beyond the preset's: what one vmapped program of all seeds cannot do, left to the
    # driver where the table reads it elsewhere (dropout's MC passes: runner.predict on each member, cells 178-182)
    with_replicas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """One printed number: `metric` of experiment `name` (accuracies and probabilities in %)."""

    name: str
    cell: str
    what: str
    metric: str
    book: float
    note: str = ""


# Transfer's stages need an epoch count the quick run can keep: 2 epochs, frozen for 1.
QUICK_TRANSFER = ("trainer.epochs=2", "transfer.unfreeze_after=1")

# The longest first, so that experiments side by side (`--jobs`) end together: their CPU seconds on 2026-12-06, with
# the causes of each (run right after it): 100-layer nets 150-180 each, dropout 180 (100 MC passes over the test set
# per seed), alpha_dropout 150, plateau 85 (a process per seed), the 25-epoch schedules 60-80, the rest 10-50.
EXPERIMENTS = (
    Experiment("selu_lecun"), Experiment("relu_he"),
    Experiment("dropout", with_replicas=("trainer.mc_dropout_samples=0",)), Experiment("alpha_dropout"),
    Experiment("plateau", replicas=False),
    Experiment("piecewise_epoch"), Experiment("exponential_step"), Experiment("exponential_epoch"),
    Experiment("transfer_a"), Experiment("one_cycle"), Experiment("adam"), Experiment("adagrad"), Experiment("nadam"),
    Experiment("adamw"), Experiment("adamax"), Experiment("rmsprop"), Experiment("momentum"), Experiment("nesterov"),
    Experiment("max_norm"), Experiment("sgd"), Experiment("exponential"), Experiment("piecewise"), Experiment("power"),
    Experiment("bn_after"), Experiment("bn_before"), Experiment("transfer_b_on_a", replicas=False, quick=QUICK_TRANSFER),
    Experiment("l2"), Experiment("transfer_b"),
)

# Second runs of a preset with one suspected setting changed: each measures a cause of a row's gap.
PIXELS = "{inputs}/pixel_standardized.npz"  # cell 36: each pixel standardized by X_train's own mean and sd
PIXELS_WHAT = "each pixel standardized by its own mean and sd, as cell 36 does (`dataset=npz`, inputs written so)"
CAUSES = (
    Experiment("selu_lecun", overrides=("dataset=npz", f"dataset.path={PIXELS}"), explains="selu_lecun",
               label="selu_lecun+per_pixel_standardization", what=PIXELS_WHAT),
    Experiment("relu_he", overrides=("dataset=npz", f"dataset.path={PIXELS}"), explains="relu_he",
               label="relu_he+per_pixel_standardization", what=PIXELS_WHAT),
    # optax puts RMSProp's eps inside the square root: 1e-14 there is Keras's 1e-7 outside it
    Experiment("rmsprop", overrides=("optimizer.eps=1.0e-14",), explains="rmsprop"),
    Experiment("bn_after", overrides=("dataset.scaling=standardize",), explains="bn_after"),
    # The printed number is tfa.optimizers.AdamW's (the notebook's code until 2023, outputs not rerun since): its
    # decay is 1e-5 of each weight per step, not times the rate as Keras's AdamW and optax.adamw: 1e-5 / 1e-3 here
    Experiment("adamw", overrides=("optimizer.weight_decay=0.01",), explains="adamw",
               what="`optimizer.weight_decay=0.01`: TF-Addons' AdamW, which printed the number (decay 1e-5 a step, "
                    "not times the rate)"),
    # 200 images in batches of 32: Keras makes 7 updates an epoch (the last of 8 images), the runner 6; 28 gives 7
    Experiment("transfer_b", overrides=("trainer.batch_size=28",), explains="transfer_b"),
    Experiment("transfer_b_on_a", replicas=False, overrides=("trainer.batch_size=28",), explains="transfer_b_on_a"),
)

# Causes measured by another preset of the book: (row, the preset that is that row with the setting changed, what).
SAME_AS = (
    ("sgd", "momentum", "`optimizer.momentum=0.9`: the `momentum` preset (the notebook's SGD output is momentum's)"),
)

ROWS = (
    Row("selu_lecun", "37", "100-layer SELU + LeCun normal, SGD 1e-3, 5 epochs", "val_accuracy", 80.46),
    Row("relu_he", "42", "100-layer ReLU + He normal, SGD 1e-3, 5 epochs", "val_accuracy", 70.54),
    Row("bn_after", "51", "300-100 ReLU, batch norm after each activation (and on the inputs), SGD 0.01, 2 epochs",
        "val_accuracy", 86.50),
    Row("bn_before", "55", "300-100, batch norm before each ReLU, SGD 0.01, 2 epochs", "val_accuracy", 86.46),
    Row("transfer_a", "63", "model A: 8 classes, 3 x 100 ReLU, SGD 1e-3, 20 epochs", "val_accuracy", 90.27),
    Row("transfer_b", "64", "model B from scratch: T-shirt vs pullover, 200 images, 20 epochs", "val_accuracy",
        93.67),
    Row("transfer_b", "64", "model B from scratch, test set", "test_accuracy", 91.85),
    Row("transfer_b_on_a", "72", "B on A: A's 3 layers frozen 4 epochs, then all 16", "val_accuracy", 93.77),
    Row("transfer_b_on_a", "74", "B on A, test set", "test_accuracy", 93.85),
    Row("sgd", "80", "SGD 1e-3, 10 epochs", "val_accuracy", 86.72,
        "the notebook's output is its momentum cell's, digit for digit"),
    Row("momentum", "83", "momentum 0.9, lr 1e-3, 10 epochs", "val_accuracy", 86.72),
    Row("nesterov", "86", "Nesterov 0.9, lr 1e-3, 10 epochs", "val_accuracy", 87.08),
    Row("adagrad", "89", "AdaGrad 1e-3, 10 epochs", "val_accuracy", 84.24),
    Row("rmsprop", "92", "RMSProp 1e-3, rho 0.9, 10 epochs", "val_accuracy", 86.36),
    Row("adam", "95", "Adam 1e-3, 10 epochs", "val_accuracy", 86.96),
    Row("adamax", "98", "AdaMax 1e-3, 10 epochs", "val_accuracy", 87.80),
    Row("nadam", "101", "Nadam 1e-3, 10 epochs", "val_accuracy", 87.40),
    Row("adamw", "105", "AdamW 1e-3, weight decay 1e-5, 10 epochs", "val_accuracy", 87.02),
    Row("power", "113", "power scheduling (InverseTimeDecay), SGD, 10 epochs", "val_accuracy", 87.14),
    Row("exponential", "118", "exponential scheduling (ExponentialDecay), SGD, 10 epochs", "val_accuracy", 86.62),
    Row("piecewise", "133", "PiecewiseConstantDecay (boundaries past the run: 0.01 throughout), 10 epochs",
        "val_accuracy", 87.16),
    Row("exponential_epoch", "124", "exponential, set per epoch by a callback, SGD, 25 epochs", "val_accuracy",
        88.12),
    Row("exponential_step", "130", "exponential, set per step by a callback, SGD, 25 epochs", "val_accuracy",
        88.02),
    Row("piecewise_epoch", "138", "piecewise constant per epoch (0.01, 0.005, 0.001), Nadam, 25 epochs",
        "val_accuracy", 87.70),
    Row("plateau", "143", "performance scheduling (ReduceLROnPlateau 0.5, patience 5), SGD, 25 epochs",
        "val_accuracy", 88.68),
    Row("one_cycle", "160", "1cycle, max 0.1, batch 128, SGD, 25 epochs", "val_accuracy", 89.20),
    Row("l2", "167", "l2(0.01), 2 x 100 ReLU, SGD 0.02, 2 epochs", "val_accuracy", 81.82),
    Row("dropout", "171", "dropout 0.2 (inputs and 2 x 100 ReLU), momentum 0.01, 10 epochs", "val_accuracy", 87.32),
    Row("dropout", "173", "dropout: evaluate on the training set (dropout off)", "train_accuracy", 88.49),
    Row("dropout", "174", "dropout: evaluate on the test set", "test_accuracy", 87.00),
    Row("dropout", "182", "MC dropout, 100 passes: test accuracy", "mc_test_accuracy", 87.17),
    Row("dropout", "179", "first test image, one pass: P(ankle boot)", "proba_9", 84.4),
    Row("dropout", "179", "first test image, one pass: P(sneaker)", "proba_7", 13.2),
    Row("dropout", "179", "first test image, one pass: P(sandal)", "proba_5", 2.4),
    Row("dropout", "180", "first test image, MC mean: P(ankle boot)", "mc_proba_9", 72.3),
    Row("dropout", "180", "first test image, MC mean: P(sneaker)", "mc_proba_7", 20.9),
    Row("dropout", "180", "first test image, MC mean: P(sandal)", "mc_proba_5", 6.7),
    Row("dropout", "181", "first test image, MC sd: ankle boot", "mc_std_9", 18.3),
    Row("dropout", "181", "first test image, MC sd: sneaker", "mc_std_7", 16.2),
    Row("dropout", "181", "first test image, MC sd: sandal", "mc_std_5", 9.6),
    Row("max_norm", "190", "max-norm 1, 2 x 100 ReLU, momentum 0.01, 10 epochs", "val_accuracy", 85.78),
    Row("alpha_dropout", "220", "20 x 100 SELU, alpha dropout 0.1, Nadam 5e-4, 10 epochs (CIFAR-10 in the notebook)",
        "val_accuracy", math.nan, "no Fashion-MNIST number in the notebook"),
)

# The chapter's orderings: (a, b, metric, what the chapter says), compared as a − b per seed.
ORDERINGS = (
    ("selu_lecun", "relu_he", "val_accuracy", "a 100-layer SELU net trains where ReLU + He barely does"),
    ("bn_after", "bn_before", "val_accuracy", "batch norm after or before the activation: about the same"),
    ("momentum", "sgd", "val_accuracy", "momentum beats plain SGD"),
    ("nesterov", "momentum", "val_accuracy", "Nesterov is generally faster than momentum"),
    ("adam", "adagrad", "val_accuracy", "AdaGrad stops too early on deep nets"),
    ("rmsprop", "adagrad", "val_accuracy", "RMSProp fixes AdaGrad"),
    ("nadam", "adam", "val_accuracy", "Nadam often converges slightly faster than Adam"),
    ("adamax", "adam", "val_accuracy", "AdaMax is sometimes more stable than Adam"),
    ("adamw", "adam", "val_accuracy", "AdamW: Adam with decoupled weight decay"),
    ("one_cycle", "plateau", "val_accuracy", "1cycle: the best of the schedules tried"),
    ("plateau", "exponential_epoch", "val_accuracy", "performance scheduling vs exponential, 25 epochs"),
    ("transfer_b_on_a", "transfer_b", "test_accuracy", "reusing model A's layers beats B from scratch"),
    ("dropout", "dropout", ("mc_test_accuracy", "test_accuracy"), "MC dropout beats plain dropout"),
)


# What the presets cannot say as the notebook's Keras does: the causes to suspect first when a row misses.
DIFFERENCES = """## Where we differ from the notebook's Keras

- **Code changed after its output was printed.** The notebook's outputs date from its TensorFlow 2.8 run (2022);
  three cells' code changed since without a rerun (ageron/handson-ml3's history): the SGD cell lost its momentum
  (2025: its output is the momentum cell's), AdamW moved from TF-Addons to Keras (2023: Addons' decay is 1e-5 of
  each weight a step, not times the rate, the `adamw` cause), and l2's head gained `glorot_normal` (2025: the
  printed run's head was He normal, as its hidden layers). The presets follow the code as it reads; the causes
  measure the code that printed.
- **Head initializer.** Keras's output layer is Glorot-uniform where a cell names no initializer; the presets say
  so (`model.head_init`, conf/experiment/book/base.yaml; l2 names Glorot normal). Before, the runner's head took
  the hidden layers' initializer (He or LeCun normal). Glorot's head against that one, measured once (seeds 0-2,
  paired, validation accuracy): `selu_lecun` −0.81 ± 0.32 (82.77 to 81.95), `relu_he` +1.27 ± 8.55, `adam`
  −0.37 ± 0.82, `adamw` −0.23 ± 1.15 points.
- **The last partial batch.** Keras trains on it (1,719 batches of 55,000 images), the runner drops it (1,718);
  for model B's 200 images that is 6 updates an epoch instead of 7 (`transfer_b` with `trainer.batch_size=28`,
  7 full batches, measures it).
- **Input standardization** (cell 36, the 100-layer nets): per pixel in the notebook, one mean and sd for all
  pixels here (`dataset.scaling=standardize`); the runner would need a per-feature scaling.
- **Batch norm on the inputs** (cell 48): Keras normalizes the flattened inputs too; the runner has no such layer
  (`bn_after` with `dataset.scaling=standardize`, a fixed standardization, is the nearest measurable stand-in).
- **Model B's head**: one sigmoid unit with binary cross-entropy in Keras, two softmax units here (the same family
  of functions, a different initialization).
- **RMSProp's epsilon** is inside the square root in optax (sqrt(1e-7) ≈ 3e-4 in effect), outside in Keras (1e-7).
- **Nadam**: Keras decays its momentum coefficient by Dozat's schedule; optax.nadam keeps beta1 fixed.
- **Max-norm**: Keras constrains the hidden kernels only; the runner's regularizer every kernel, the head's too.
- **Alpha dropout**: the notebook's exercise puts one AlphaDropout before the head and runs on CIFAR-10; the runner
  puts it after every hidden layer, here on Fashion-MNIST, so that row has no book value.
- **Transfer's gain is one draw.** The book says its B-on-A setup was found after trying many configurations (the
  author "cheated"): its +2.00 points (an error rate 24.5% lower, cell 76) is a best of many, our seeds are not.
- **Plateau**: Keras's min_delta is absolute (1e-4), optax's reduce_on_plateau tolerance relative (rtol 1e-4).
- **Not rerun**: cell 155's learning-rate finder prints a loss of an exponentially growing rate, not a result
  (`python -m runner.lr_find` is the runner's); cells 196-235 are the CIFAR-10 exercises (100 epochs with early
  stopping each: over the time budget, and not Fashion-MNIST). The SGD cell's printed output (80) is the momentum
  cell's (83), digit for digit: the book's SGD number is momentum's, which the `sgd` row's gap and the `momentum`
  row measure."""


def run_dir(out: Path, experiment: Experiment) -> Path:
    """OUT/NAME/, or OUT/LABEL (default NAME+key-value: an '=' in hydra.run.dir is an override) for a cause's."""
    default = experiment.name + "".join(f"+{o}".replace("=", "-").replace("/", "_") for o in experiment.overrides)
    return out / (experiment.label or default)


def member_dirs(out: Path, experiment: Experiment, seeds: Sequence[int]) -> list[Path]:
    return [run_dir(out, experiment) / f"seed_{s}" for s in seeds]


def completed(path: Path) -> bool:
    """Whether the run dir's summary says it finished (a diverged member is finished too)."""
    try:
        status = json.loads((path / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status in ("completed", "diverged")


def command(experiment: Experiment, data: Path, where: Path, seeds: Sequence[int], quick: bool,
            out: Path) -> list[str]:
    """`python -m runner +experiment=book/NAME ...` for all seeds (replicas) or for the one seed in `seeds`."""
    args = [sys.executable, "-m", "runner", f"+experiment=book/{experiment.name}", f"dataset.path={data}",
            f"hydra.run.dir={where}", f"trainer.seed={seeds[0]}",
            *(o.format(inputs=out / "_inputs") for o in experiment.overrides)]
    if len(seeds) > 1:
        args += [f"trainer.replicas={len(seeds)}", *experiment.with_replicas]
    if experiment.name == "transfer_b_on_a":  # model A of the same seed
        args.append(f"transfer.source={run_dir(out, Experiment('transfer_a')) / f'seed_{seeds[0]}'}")
    if quick:
        args += ["trainer.epochs=1", *experiment.quick]
        if experiment.name not in ("transfer_b", "transfer_b_on_a"):  # those keep their 200 images
            args.append("dataset.train_subset=2000")
    return args


def run_experiment(experiment: Experiment, data: Path, out: Path, seeds: Sequence[int],
                   quick: bool) -> tuple[float, float] | None:
    """Runs what is missing of one experiment, its output into OUT/logs/LABEL.log; returns the seconds it took, of
    the clock and of CPU, or None where every seed had finished before."""
    todo = [s for s, d in zip(seeds, member_dirs(out, experiment, seeds)) if not completed(d)]
    log = log_path(out, experiment)
    if not todo:
        if experiment.name == "dropout" and not experiment.overrides:  # its predictions, where one is missing
            predict_dropout(data, out, member_dirs(out, experiment, seeds), log)
        return None
    start, cpu = time.monotonic(), 0.0
    if experiment.replicas and len(seeds) > 1:
        batches = [(list(seeds), run_dir(out, experiment))]  # one program: all seeds again
    else:
        batches = [([s], run_dir(out, experiment) / f"seed_{s}") for s in todo]
    for batch_seeds, where in batches:
        if where.exists():  # a run cut short: start it again from nothing
            shutil.rmtree(where)
        args = command(experiment, data, where, batch_seeds, quick, out)
        status, used = run_logged(args, log)
        cpu += used
        if status != 0:
            raise UserError(f"{experiment.name}: `{' '.join(args[1:])}` exited {status}; its output is in {log}")
        if len(batch_seeds) == 1 and not (where / "summary.json").exists():
            raise UserError(f"{experiment.name}: no summary.json in {where}")
    if experiment.name == "dropout" and not experiment.overrides:
        cpu += predict_dropout(data, out, member_dirs(out, experiment, seeds), log)
    return time.monotonic() - start, cpu


def log_path(out: Path, experiment: Experiment) -> Path:
    """OUT/logs/LABEL.log: one experiment's runs' output (experiments run side by side, `--jobs`)."""
    return out / "logs" / f"{run_dir(out, experiment).name}.log"


RUNNING: set[subprocess.Popen] = set()  # the runs under way, ended by an interrupt of the driver


def run_logged(args: Sequence[str], log: Path) -> tuple[int, float]:
    """Runs one command, its output appended to `log`; (its exit status, the CPU seconds it used: its own,
    whatever else the machine runs)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream:
        child = subprocess.Popen(args, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
        RUNNING.add(child)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            RUNNING.discard(child)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime


def write_pixel_standardized(data: Path, path: Path) -> None:
    """Cell 36's inputs as an .npz: every pixel standardized by its mean and sd over cell 34's X_train (pixels / 255,
    the first 55,000 images). Run with dataset.scaling=standardize, whose one mean and sd of these are 0 and 1."""
    from runner.data.idx import read_idx_set

    if path.exists():
        return
    sets = read_idx_set(str(data))
    train = sets.x_train[:-5000].astype(np.float64) / 255
    mean, std = train.mean(axis=0), train.std(axis=0)
    scale = lambda x: ((x / 255 - mean) / std).astype(np.float32)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=scale(sets.x_train), y_train=sets.y_train, x_test=scale(sets.x_test), y_test=sets.y_test)


def predict_dropout(data: Path, out: Path, members: Sequence[Path], log: Path) -> float:
    """Cells 173 and 178-182 from each seed's net (runner.predict): the training-set accuracy with dropout off, the
    first test image's probabilities from one pass, and 100 passes over the test set with dropout on: their mean's
    accuracy and, as cells 180-181 read them from the same passes, the first image's mean and sd."""
    from runner.data.idx import read_idx_set  # only here: the rest of the driver reads run dirs

    inputs = out / "_inputs"
    names = ("first_test_image", "train_without_validation", "test")
    if not all((inputs / f"{n}{s}.npz").exists() for n in names for s in ("", "_unit")):
        sets = read_idx_set(str(data))
        inputs.mkdir(parents=True, exist_ok=True)
        for suffix, scale in (("", lambda x: x), ("_unit", lambda x: (x / 255).astype(np.float32))):
            np.savez(inputs / f"first_test_image{suffix}.npz", x=scale(sets.x_test[:1]))
            np.savez(inputs / f"train_without_validation{suffix}.npz", x=scale(sets.x_train[:-5000]),
                     y=sets.y_train[:-5000])  # cell 34's X_train
            np.savez(inputs / f"test{suffix}.npz", x=scale(sets.x_test), y=sets.y_test)
    cpu = 0.0
    for member in members:
        # A replica member has no input_scaling.json (runner/cli/replicas.py writes none), and runner.predict then feeds
        # the inputs as they are: give it the preset's scaling (dataset.scaling=unit) already applied.
        suffix = "" if (member / "input_scaling.json").exists() else "_unit"
        first, train, test = (inputs / f"{n}{suffix}.npz" for n in names)
        for name, src, extra in (("book_first.npz", first, []), ("book_train.npz", train, []),
                                 ("book_test_mc.npz", test, ["--mc-samples", "100"])):
            if not (member / name).exists():
                args = [sys.executable, "-m", "runner.predict", str(member), str(src), "--out", str(member / name),
                        *extra]
                status, used = run_logged(args, log)
                cpu += used
                if status != 0:
                    raise UserError(f"dropout: `{' '.join(args[1:])}` exited {status}; its output is in {log}")
    return cpu


def metric(member: Path, key: str) -> float | None:
    """One seed's number, in %: the last epoch's validation accuracy, a summary's accuracy, or a prediction's."""
    try:
        if key == "val_accuracy":
            lines = (member / "metrics.jsonl").read_text().splitlines()
            return 100 * json.loads(lines[-1])["val_accuracy"]
        if key in ("train_accuracy", "mc_test_accuracy"):  # predictions against the labels
            name, labels = {"train_accuracy": ("book_train.npz", "train_without_validation.npz"),
                            "mc_test_accuracy": ("book_test_mc.npz", "test.npz")}[key]
            with np.load(member / name) as p, np.load(member.parent.parent / "_inputs" / labels) as t:
                return 100 * float(np.mean(p["labels"] == t["y"]))
        if key.startswith(("proba_", "mc_proba_", "mc_std_")):
            kind, k = key.rsplit("_", 1)
            name, array = {"proba": ("book_first.npz", "probabilities"), "mc_proba": ("book_test_mc.npz",
                           "probabilities"), "mc_std": ("book_test_mc.npz", "probabilities_std")}[kind]
            with np.load(member / name) as p:
                return 100 * float(p[array][0, int(k)])
        value = json.loads((member / "summary.json").read_text()).get(key)
        return None if value is None else 100 * float(value)
    except (OSError, ValueError, KeyError, IndexError):
        return None


def values(out: Path, experiment: Experiment, key: str, seeds: Sequence[int]) -> dict[str, float]:
    found = {}
    for s, member in zip(seeds, member_dirs(out, experiment, seeds)):
        if completed(member) and (v := metric(member, key)) is not None and math.isfinite(v):
            found[str(s)] = v
    return found


def fmt(x: float | None, digits: int = 2, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def interval_text(vals: dict[str, float]) -> str:
    iv = mean_interval(vals.values())
    if iv is None:
        return "—"
    return fmt(iv.mean) if iv.half_width is None else f"{fmt(iv.mean)} ± {fmt(iv.half_width)}"


def table(out: Path, seeds: Sequence[int]) -> tuple[str, dict[str, str]]:
    """The rows' markdown table, and the rows that miss the target, each with what explains its gap ("" if nothing).

    The book's number is one run, so beside the mean's interval each row has our one-run 95% prediction interval
    (runner/report/stats.py): a gap with the book's value inside it, smaller than its half-width, is explained by seed
    variance. A gap is explained by a measured cause where a second run with the suspected setting changed lands
    within TARGET of the book (`causes`)."""
    lines = ["| cell | what | book | ours (mean ± 95% CI) | ours − book | seeds' range | book in range | "
             f"within {TARGET} | one run (95% PI) | gap explained by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    misses = {}
    for row in ROWS:
        vals = values(out, Experiment(row.name), row.metric, seeds)
        iv = mean_interval(vals.values())
        diff = None if iv is None or math.isnan(row.book) else iv.mean - row.book
        spread = f"{fmt(min(vals.values()))}–{fmt(max(vals.values()))}" if vals else "—"
        inside = "—" if diff is None else ("yes" if min(vals.values()) <= row.book <= max(vals.values()) else "no")
        within = "—" if diff is None else ("yes" if abs(diff) <= TARGET else "**no**")
        one_run = prediction_interval(vals.values(), bounds=(0.0, 100.0))
        band = "—" if one_run is None or one_run.half_width is None else f"{fmt(one_run.low)}–{fmt(one_run.high)}"
        explained = "—"
        if diff is not None and abs(diff) > TARGET:
            reasons = (["seed variance"] if one_run is not None and one_run.half_width is not None
                       and abs(diff) < one_run.half_width else [])
            reasons += [f"measured cause: {text}" for text in explaining_causes(out, row, seeds)]
            explained = "; ".join(reasons) or "**unexplained**"
            misses[f"{row.name}:{row.metric}"] = "; ".join(reasons)
        notes = [row.note] if row.note else []
        if diff is not None and iv.half_width is not None and iv.half_width > abs(diff):
            notes.append("interval wider than the gap")
        what = row.what + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {row.cell} | `{row.name}`: {what} | {fmt(row.book)} | {interval_text(vals)} | "
                     f"{fmt(diff, sign=True)} | {spread} | {inside} | {within} | {band} | {explained} |")
    return "\n".join(lines), misses


def cause_runs() -> list[tuple[str, Experiment, str]]:
    """(the row's experiment, the run with the setting changed, the setting in words) of every measured cause."""
    runs = [(cause.explains, cause, cause.what or f"`{' '.join(cause.overrides)}`") for cause in CAUSES]
    return runs + [(name, Experiment(other), text) for name, other, text in SAME_AS]


def explaining_causes(out: Path, row: Row, seeds: Sequence[int]) -> list[str]:
    """The settings whose changed run lands within TARGET of the book on this row (short: the overrides)."""
    found = []
    for explains, cause, text in cause_runs():
        changed = mean_interval(values(out, cause, row.metric, seeds).values()) if explains == row.name else None
        if changed is not None and abs(changed.mean - row.book) <= TARGET:
            found.append(f"`{' '.join(cause.overrides)}`" if cause.overrides else f"the `{cause.name}` preset")
    return found


def orderings(out: Path, seeds: Sequence[int]) -> str:
    lines = ["| a − b | the chapter | book (one run) | ours: paired mean ± 95% CI | holds here |",
             "|---|---|---|---|---|"]
    for a, b, key, claim in ORDERINGS:
        ka, kb = key if isinstance(key, tuple) else (key, key)
        book_a = next((r.book for r in ROWS if r.name == a and r.metric == ka), math.nan)
        book_b = next((r.book for r in ROWS if r.name == b and r.metric == kb), math.nan)
        _, iv = paired_difference(values(out, Experiment(a), ka, seeds), values(out, Experiment(b), kb, seeds))
        label = f"`{a}` − `{b}`" if a != b else f"`{a}`: {ka} − {kb}"
        ours = "—" if iv is None else (fmt(iv.mean, sign=True) if iv.half_width is None
                                        else f"{fmt(iv.mean, sign=True)} ± {fmt(iv.half_width)}")
        holds = ("—" if iv is None or iv.low is None else "yes" if iv.low > 0 else "no: below 0" if iv.high < 0
                 else "level (interval spans 0)")
        lines.append(f"| {label} | {claim} | {fmt(book_a - book_b, sign=True)} | {ours} | {holds} |")
    return "\n".join(lines)


def causes(out: Path, seeds: Sequence[int]) -> str:
    lines = ["| row | setting changed | book | preset as is | changed | changed − as is (paired) | changed − book | "
             f"changed within {TARGET} |", "|---|---|---|---|---|---|---|---|"]
    for explains, cause, text in cause_runs():
        for row in (r for r in ROWS if r.name == explains):
            base = values(out, Experiment(explains), row.metric, seeds)
            changed = values(out, cause, row.metric, seeds)
            _, iv = paired_difference(changed, base)
            delta = "—" if iv is None or iv.half_width is None else f"{fmt(iv.mean, sign=True)} ± {fmt(iv.half_width)}"
            mean = mean_interval(changed.values())
            gap = None if mean is None else mean.mean - row.book
            within = "—" if gap is None else "yes" if abs(gap) <= TARGET else "no"
            lines.append(f"| `{row.name}` {row.metric} | {text} | {fmt(row.book)} | "
                         f"{interval_text(base)} | {interval_text(changed)} | {delta} | {fmt(gap, sign=True)} | "
                         f"{within} |")
    return "\n".join(lines)


def summary(misses: dict[str, str]) -> str:
    """The rows outside the target, by what explains their gaps."""
    if not misses:
        return f"Rows outside {TARGET} points: none."
    by_variance = [m for m, why in misses.items() if "seed variance" in why]
    by_cause = [m for m, why in misses.items() if "measured cause" in why]
    unexplained = [m for m, why in misses.items() if not why]
    return (f"Rows outside {TARGET} points: {', '.join(misses)}. Explained by seed variance: "
            f"{', '.join(by_variance) or 'none'}; by a measured cause: {', '.join(by_cause) or 'none'}; "
            f"unexplained: {', '.join(unexplained) or 'none'}.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_docs(out: Path, seeds: Sequence[int], doc: Path, readme: Path | None, quick: bool) -> None:
    rows, misses = table(out, seeds)
    runs = _read_json(out / "book_time.json").get("invocations", [])
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs) if runs else 0
    took = "" if not runs else (
        f"Training took {sum(r['elapsed_s'] for r in runs) / 60:.1f} min of invocations in all ({span / 60:.1f} min "
        f"from the first start to the last end), on {runs[-1]['cpus']} CPUs shared with other work: " + "; ".join(
            f"{r['elapsed_s'] / 60:.1f} min finished {r['finished']} ({r['experiments']} experiments, "
            f"{r.get('jobs', 1)} side by side, 1-minute load average {r['load_mean']:.1f} on the mean, "
            f"{r['load_max']:.1f} at most)" for r in runs) + ". ")
    cpu = {label: t["cpu_s"] for r in runs for label, t in r.get("times", {}).items()}  # the latest run of each
    if cpu:
        longest = sorted(cpu, key=cpu.get, reverse=True)[:6]
        took += (f"CPU time, {sum(cpu.values()) / 60:.1f} min in all, the longest: "
                 + ", ".join(f"`{label}` {cpu[label]:.0f} s" for label in longest) + ". ")
    text = "\n\n".join([
        "# Chapter 11's notebook on Fashion-MNIST, over seeds",
        f"Generated by `python -m runner.book` (`make book`){' --quick: one seed, 1-2 epochs, a subset' if quick else ''}"
        f" from the run dirs under `{out.name}/`; seeds {', '.join(map(str, seeds))}. {took}"
        "Each row is `python -m runner +experiment=book/NAME`. "
        "Accuracies and probabilities are in %; the book's are the notebook's printed outputs (one run each, "
        "validation accuracy at the last epoch unless the row says test or training set). "
        f"Target: the mean within {TARGET} points of the book, or the gap explained. The book's number is one run: "
        "`one run (95% PI)` is where one more run of ours would land with 95% probability, mean ± t(0.975, n−1) · sd "
        "· √(1 + 1/n) over the seeds (runner/report/stats.py, `prediction_interval`); a gap whose book value lies inside it "
        "is explained by seed variance. A gap is explained by a measured cause where the preset rerun with the "
        "suspected setting changed lands within the target (the causes table below).",
        rows,
        summary(misses),
        "## The chapter's orderings, as paired differences (same seed)",
        orderings(out, seeds),
        "## Measured causes: each a second run of a preset with one setting changed",
        causes(out, seeds),
        DIFFERENCES,
    ]) + "\n"
    write_atomic(doc, text)
    if readme is not None and readme.exists():
        body = readme.read_text()
        start, end = README_MARKERS
        if start in body and end in body:
            head, rest = body.split(start, 1)
            _, tail = rest.split(end, 1)
            write_atomic(readme, f"{head}{start}\n{rows}\n{end}{tail}")


PRINTING = threading.Lock()


def say(line: str) -> None:
    """One progress line, whole: experiments run side by side print from their own threads."""
    with PRINTING:
        print(line, flush=True)


def run_all(todo: Sequence[Experiment], data: Path, out: Path, seeds: Sequence[int], quick: bool,
            jobs: int) -> tuple[list[str], list[float], dict[str, dict]]:
    """Runs the experiments, `jobs` side by side in list order (transfer_b_on_a's once model A has finished), with a
    progress line as each starts and ends; returns the labels of those that failed, the 1-minute load average as
    each that ran ended, and the seconds each took ({label: {wall_s, cpu_s}})."""
    start = time.monotonic()
    failed, loads, times = [], [], {}
    model_a = next((e for e in todo if e.name == "transfer_a" and not e.overrides), None)

    def run(i: int, experiment: Experiment) -> tuple[float, float] | None:
        say(f"[{i}/{len(todo)}] {run_dir(out, experiment).name}: running")
        return run_experiment(experiment, data, out, seeds, quick)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, tuple[int, Experiment]] = {}
        waiting = []  # transfer_b_on_a's runs, until model A of their seeds has finished
        for i, experiment in enumerate(todo, 1):
            if experiment.name == "transfer_b_on_a" and model_a is not None:
                waiting.append((i, experiment))
            else:
                running[pool.submit(run, i, experiment)] = (i, experiment)
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i, experiment = running.pop(future)
                    label = run_dir(out, experiment).name
                    try:
                        took = future.result()
                    except (UserError, subprocess.CalledProcessError) as e:  # the others still run; the table: "—"
                        failed.append(label)
                        took, outcome = None, f"FAILED: {e}"
                    else:
                        outcome = ("done before, skipped" if took is None
                                   else f"ran in {took[0]:.0f} s, {took[1]:.0f} s of CPU")
                    if took is not None or label in failed:
                        loads.append(os.getloadavg()[0])
                    if took is not None:
                        times[label] = {"wall_s": round(took[0], 1), "cpu_s": round(took[1], 1)}
                    say(f"[{i}/{len(todo)}] {label}: {outcome} ({(time.monotonic() - start) / 60:.1f} min so far)")
                    if experiment == model_a:
                        running.update({pool.submit(run, *w): w for w in waiting})
                        waiting = []
        except KeyboardInterrupt:
            for f in running:
                f.cancel()
            for child in list(RUNNING):  # those the terminal's Ctrl-C did not reach (kill -INT of the driver)
                child.terminate()
            raise
    return failed, loads, times


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m runner.book", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("FASHION_MNIST_DIR"),
                        help="the dir of Fashion-MNIST's four IDX files (default: $FASHION_MNIST_DIR)")
    parser.add_argument("--out", type=Path, help="where the run dirs go (default outputs/book, quick: outputs/book-quick)")
    parser.add_argument("--doc", type=Path, help="the table (default docs/book.md; quick: OUT/book.md)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--quick", action="store_true", help="one seed, 1-2 epochs, 2,000 training images")
    parser.add_argument("--only", nargs="*", metavar="NAME", help="run only these (the names of their dirs under OUT); the table reads all")
    parser.add_argument("--no-causes", action="store_true", help="skip the second runs that measure causes")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="experiments run side by side (default: 2, or 1 on one core; a run keeps about one core "
                             "busy: the nets are too small for XLA to spread an operation over threads)")
    try:
        args = parser.parse_args(argv)
        if args.data is None or not Path(args.data).is_dir():
            raise UserError(f"--data: {args.data} is not a dir; valid: the dir of Fashion-MNIST's IDX files "
                            "(/work/shared/data/get-fashion-mnist DIR, or apt-get install dataset-fashion-mnist: "
                            "/usr/share/datasets/fashion-mnist), or FASHION_MNIST_DIR=DIR")
        if args.jobs < 1:
            raise UserError(f"--jobs: must be an integer >= 1, got {args.jobs}")
        seeds = [0] if args.quick else list(range(args.seeds))
        out = (args.out or REPO / ("outputs/book-quick" if args.quick else "outputs/book")).resolve()
        doc = args.doc or (out / "book.md" if args.quick else REPO / "docs" / "book.md")
        readme = None if args.quick or args.doc else REPO / "README.md"
        out.mkdir(parents=True, exist_ok=True)
        causes = () if args.no_causes or args.quick else CAUSES
        # each experiment, then its causes: the longest (the 100-layer nets and theirs) start first
        todo = [e for base in EXPERIMENTS for e in (base, *(c for c in causes if c.name == base.name))
                if not args.only or run_dir(out, e).name in args.only]
        data = Path(args.data).resolve()
        if any(PIXELS in o for e in todo for o in e.overrides):
            write_pixel_standardized(data, out / "_inputs" / "pixel_standardized.npz")
        start, wall_start = time.monotonic(), time.time()
        failed, loads, times = run_all(todo, data, out, seeds, args.quick, args.jobs)
        if loads:  # something trained: this invocation's time adds to the book's
            runs = _read_json(out / "book_time.json").get("invocations", [])
            runs.append({"elapsed_s": time.monotonic() - start, "experiments": len(loads), "start": wall_start,
                         "end": time.time(), "jobs": args.jobs, "times": times,
                         "load_mean": sum(loads) / len(loads), "load_max": max(loads), "cpus": os.cpu_count(),
                         "finished": time.strftime("%Y-%m-%d %H:%M")})
            write_atomic(out / "book_time.json", json.dumps({"invocations": runs}, indent=1))
        write_docs(out, seeds, Path(doc), readme, args.quick)
        print(f"wrote {doc}", flush=True)
        if failed:
            error(f"{len(failed)} experiment(s) failed: {', '.join(failed)}; see their logs in {out / 'logs'}")
            return 1
    except UserError as e:
        error(str(e))
        return 2
    except KeyboardInterrupt:
        print("interrupted: a second run skips what finished", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
