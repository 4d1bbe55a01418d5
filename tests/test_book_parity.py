"""The chapter's orderings (Géron, Hands-On ML, ch. 11), reproduced over seeds on the embedded datasets.

Each claim is one multirun over seeds 0, 1, 2, read back from its summaries: `trainer.replicas=3` where the config
allows it (the three seeds in one compiled program; member i is the run of seed i, runner/cli/replicas.py), else
`trainer.seed=0,1,2`. An ordering
"A beats B" holds when the paired difference A − B over the seeds (runner.report.stats.paired_difference: the same seed
gives both configs the same data split and batch order) has a 95% Student-t interval whose low end is above a
margin (0 unless said). With 3 seeds t is 4.30, so the interval excludes the margin only when every seed agrees and
the spread is small against the gap: a noisy or reversed ordering fails. test_the_criterion_* pins that down on
hand-made numbers.

Sizes are the smallest that still show each claim by a wide interval, measured; the README's "Book parity" table
has these runs' numbers beside the book's. A claim that did not reproduce is a strict xfail: it states the
claim as the book makes it, and turns into a failure the day it starts to hold, so the table gets updated.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from runner.report.stats import COUNTED_STATUSES, paired_difference, override_key, override_value, seed_of
from tests.conftest import USER_XLA_FLAGS, Runner, read_summary

SEEDS = ("trainer.seed=0,1,2",)
# Seeds 0, 1, 2 as the members of one program (each writes its own run dir, seed_<s>/, with its summary.json and
# overrides ending in trainer.seed=<s>): a third of the programs to compile and start.
REPLICAS = ("trainer.replicas=3",)
NO_PLOTS = ("hydra.callbacks.report.plots=false",)  # the multirun's report table is enough; plots cost seconds


def multirun(cli: Runner, *overrides: str, seeds: tuple[str, ...] = SEEDS) -> list[Path]:
    result = cli("-m", *overrides, *seeds, *NO_PLOTS)
    assert result.returncode == 0, result.stderr[-3000:]
    return cli.run_dirs()


def by_config(run_dirs: list[Path], key: str) -> dict[str, dict[str, dict]]:
    """{the value each run gave `key`: {seed: its summary}}; every run finished and every config has 3 seeds."""
    table: dict[str, dict[str, dict]] = {}
    for run_dir in run_dirs:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        summary = read_summary(run_dir)
        assert summary["status"] in COUNTED_STATUSES, (run_dir, summary)
        value = next(override_value(o) for o in overrides if override_key(o) == key)
        table.setdefault(value, {})[seed_of(overrides, summary)] = summary
    assert all(len(seeds) == 3 for seeds in table.values()), {k: sorted(v) for k, v in table.items()}
    return table


def metric(runs: dict[str, dict], name: str, transform=float) -> dict[str, float]:
    return {seed: transform(summary[name]) for seed, summary in runs.items()}


def assert_beats(better: dict[str, float], worse: dict[str, float], what: str, margin: float = 0.0) -> None:
    """`better` − `worse`, paired by seed, has its whole 95% interval above `margin`."""
    seeds, diff = paired_difference(better, worse)
    assert len(seeds) >= 3, f"{what}: only seeds {seeds} in both"
    shown = {s: (round(better[s], 4), round(worse[s], 4)) for s in seeds}
    assert diff.low > margin, (f"{what}: paired difference {diff.mean:+.4f}, 95% interval [{diff.low:+.4f}, "
                               f"{diff.high:+.4f}] does not clear {margin}; per seed (better, worse): {shown}")


# ---- the criterion itself, on numbers worked by hand ----

def test_the_criterion_accepts_a_consistent_gap_and_rejects_a_reversed_or_noisy_one():
    better, worse = {"0": 0.45, "1": 0.43, "2": 0.39}, {"0": 0.14, "1": 0.13, "2": 0.11}
    # d = 0.31, 0.30, 0.28: mean 0.2967, sd 0.01528, half-width 4.303 * 0.01528 / sqrt(3) = 0.0379 -> low 0.2587
    assert_beats(better, worse, "consistent")
    assert_beats(better, worse, "consistent, margin", margin=0.25)
    with pytest.raises(AssertionError):
        assert_beats(better, worse, "margin above the interval's low end", margin=0.26)
    with pytest.raises(AssertionError):
        assert_beats(worse, better, "reversed")
    # d = 0.30, 0.25, -0.05: mean 0.1667, sd 0.1893, half-width 0.470: the interval holds 0
    with pytest.raises(AssertionError):
        assert_beats({"0": 0.45, "1": 0.38, "2": 0.06}, worse, "one seed disagrees")


# ---- (a) SELU with LeCun initialization trains a 100-layer net that ReLU with He does not ----

def test_a_100_layer_selu_lecun_net_beats_relu_he_after_5_epochs_of_sgd_at_1e3(cli):
    # The selu preset as it is: 100 x 100, no batch norm, no dropout, plain SGD at 1e-3, 5 epochs, digits. Width 100
    # is needed: at width 32 or 50 SELU's outputs drift off its fixed point over 100 layers and neither net learns
    # (measured: ~15% test accuracy for both). Measured at this size: SELU 42.5% ± 9.0, ReLU 12.7% ± 3.8 (n=3).
    # A multirun over seeds, not replicas: 100 layers amplify the members' float rounding (vmapped reductions) into
    # other runs than the seeds' own (measured, seed 2: SELU 19.7% as a member, 38.6% alone), so the members would
    # test runs that no seed gives. For the same reason it is compiled as a user's command is (XLA's defaults, where
    # the numbers above were measured), not as the other tests compile (tests/conftest.py, FAST_COMPILE: there, seed
    # 1's SELU run ends at 24.2%, not 43.1%). It costs no more: the 100 layers train faster, compiled optimized.
    cli.env["XLA_FLAGS"] = USER_XLA_FLAGS
    jobs = by_config(multirun(cli, "+experiment=selu"), "experiment/activations")
    assert_beats(metric(jobs["selu"], "test_accuracy"), metric(jobs["relu"], "test_accuracy"),
                 "SELU+LeCun minus ReLU+He, test accuracy", margin=0.1)


# ---- (b) a deep sigmoid net with N(0, 1) weights has vanishing gradients; He + ELU does not ----

# The preset's sweep over seeds 0, 1, 2 at 1 epoch (tests/conftest.py VANISHING_GRADIENTS_SWEEP), shared with
# tests/cli/test_experiments.py. Not replicas: a member cannot record per-layer diagnostics, whose first step is
# grad_norm_ratio.
@pytest.mark.xdist_group("vanishing_gradients_sweep")
def test_sigmoid_with_normal_init_vanishes_and_elu_with_he_does_not(vanishing_gradients_sweep):
    jobs = by_config(sorted(p.parent for p in vanishing_gradients_sweep.rglob("summary.json")),
                     "experiment/vanishing_gradients")
    sigmoid, elu = jobs["sigmoid_normal"], jobs["elu_he"]
    # grad_norm_ratio compares the first layer's gradient with the head's at step 0. Both nets have the same layer
    # shapes, so any per-layer normalization of that ratio (whole-tensor norms, or per-parameter RMS, which
    # multiplies it by sqrt(head size / first layer size)) scales both configs by the same factor: their quotient
    # is the definition-free measure. Asked: at least 10x on the log scale, with the interval; measured ~100x.
    assert_beats(metric(elu, "grad_norm_ratio", math.log10), metric(sigmoid, "grad_norm_ratio", math.log10),
                 "log10 grad_norm_ratio, ELU+He minus sigmoid+N(0,1)", margin=1.0)
    # And the consequence: the sigmoid net stays near chance (10%) while ELU learns. Measured after 1 epoch: 10.2%
    # ± 3.5 against 61.9% ± 2.5, the paired interval's low end +0.49 (after 2 epochs: 11.5% ± 6.2 against 73.8% ±
    # 1.6; the grad_norm_ratio of step 0 is the same at both).
    assert_beats(metric(elu, "test_accuracy"), metric(sigmoid, "test_accuracy"),
                 "test accuracy, ELU+He minus sigmoid+N(0,1)", margin=0.3)


# ---- (c) AdaGrad at 1e-3 is the worst of the chapter's optimizers ----

# The optimizers the chapter compares at 1e-3 (its notebook's build_and_train_model runs): momentum, Nesterov,
# RMSProp, Adam, AdaMax, Nadam, AdamW against AdaGrad, which "often stops too early" (Table 11-2). Plain SGD is kept
# apart (the claim does not hold for it, below); FTRL is not in the chapter's comparison.
ACCELERATED = ("momentum", "nesterov", "rmsprop", "adam", "adamax", "nadam", "adamw")


@pytest.fixture(scope="module")
def optimizers_at_1e3(tmp_path_factory, tfds_dir) -> dict[str, dict[str, dict]]:
    # The optimizers preset on its dataset (MNIST-1D, the default 3 x 100 net), every optimizer at 1e-3, 1 epoch
    # instead of 20: AdaGrad is last from the first epoch on (docs/experiments.md has 5 epochs' means). Measured at 1
    # epoch: AdaGrad 14.5% ± 2.6, momentum and Nesterov 21.0-21.1%, AdaMax, Adam, AdamW, Nadam and RMSProp
    # 23.1-24.1%; each paired interval's low end at +0.026 (RMSProp) to +0.039 (Nesterov), every seed agreeing. At 2
    # epochs the lows were +0.023 to +0.077: no clearer, for twice the training, which is most of this fixture's
    # time. The seeds as replicas: 9 programs instead of 27.
    cli = Runner(tmp_path_factory.mktemp("optimizers"), tfds_dir)
    run_dirs = multirun(cli, "+experiment=optimizers", f"optimizer={','.join(('adagrad', 'sgd') + ACCELERATED)}",
                        "optimizer.learning_rate=1e-3", "trainer.epochs=1", seeds=REPLICAS)
    return by_config(run_dirs, "optimizer")


# One worker runs every test of the fixture's sweep (make's --dist loadgroup): the fixture is the 9 x 3 runs.
@pytest.mark.xdist_group("optimizers_at_1e3")
@pytest.mark.parametrize("other", ACCELERATED)
def test_adagrad_at_1e3_is_below_every_accelerated_optimizer(optimizers_at_1e3, other):
    assert_beats(metric(optimizers_at_1e3[other], "test_accuracy"),
                 metric(optimizers_at_1e3["adagrad"], "test_accuracy"), f"{other} minus adagrad, test accuracy")


@pytest.mark.xdist_group("optimizers_at_1e3")
@pytest.mark.xfail(strict=True, reason="did not reproduce: plain SGD at 1e-3 ends below AdaGrad (1 epoch: 11.3% vs "
                                       "14.5%; 5 epochs: 18.0% vs 21.6%; 20 epochs: 25.6% vs 27.5%); the chapter's "
                                       "notebook never measured plain SGD at 1e-3 (its SGD curve repeats momentum's)")
def test_adagrad_at_1e3_is_below_plain_sgd(optimizers_at_1e3):
    assert_beats(metric(optimizers_at_1e3["sgd"], "test_accuracy"),
                 metric(optimizers_at_1e3["adagrad"], "test_accuracy"), "sgd minus adagrad, test accuracy")


# ---- (d) reusing task A's lower layers beats training task B from scratch, with few labels ----

@pytest.mark.xfail(strict=True, reason="did not reproduce on digits: reuse is level with scratch at 20 labels "
                                       "(and frozen-all-layers is worse); README, Book parity")
def test_reusing_task_a_lower_layers_frozen_beats_scratch_on_task_b_with_20_labels(cli):
    # Task A: digits 0-4 with every label (pretraining=supervised: 10 epochs, inside each job, with its seed).
    # Task B: 8 vs 9, the pair a net from scratch finds hardest, 20 labelled examples; the lowest 2 of the 3 hidden
    # layers reused and frozen, against the same net from scratch. Adam at 1e-2 for 30 epochs brings both to 100%
    # training accuracy, so the comparison is of what each generalizes from 20 labels, not of how far each got.
    jobs = by_config(multirun(cli, "pretraining=none,supervised", "dataset.classes=[8,9]",
                              "dataset.labeled_examples=20", "transfer.reuse_layers=2", "trainer.batch_size=10",
                              "trainer.epochs=30", "optimizer.learning_rate=1e-2"), "pretraining")
    assert_beats(metric(jobs["supervised"], "test_accuracy"), metric(jobs["none"], "test_accuracy"),
                 "reused minus scratch, task B test accuracy")
