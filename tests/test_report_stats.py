"""Evidence over seeds (runner.report.stats, and runner.report.tables's groups, ablation and plots), against hand
computations."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from omegaconf import OmegaConf

from runner.cli.callbacks import MultirunReport
from runner.errors import UserError
from runner.report.stats import (INTERVAL_METHOD, BaselineError, bounds_of, difference_bounds, find_baseline,
                                 group_indices, isolation_axes, mean_interval, paired_difference, per_epoch, per_seed,
                                 prediction_interval, split_overrides, varying_keys)
from runner.report.tables import write_report
from tests.test_report import fake_run

# Student's t quantiles from a printed table (and R's qt(0.975, df)), not from the code under test
T_975_DF2 = 4.302652729749464
T_975_DF1 = 12.706204736174698


def rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


# ---- the definitions ----

def test_interval_is_mean_plus_minus_t_times_sd_over_root_n():
    interval = mean_interval([0.80, 0.82, 0.85])
    # mean = 2.47 / 3; deviations -0.02333, -0.00333, +0.02667; s² = (0.000544 + 0.0000111 + 0.000711) / 2 = 19/30000
    assert interval.n == 3
    assert interval.mean == pytest.approx(0.8233333333333333, abs=1e-12)
    assert interval.sd == pytest.approx(0.025166114784235832, abs=1e-12)  # √(19/30000)
    half = T_975_DF2 * 0.025166114784235832 / 3 ** 0.5  # = 0.06251609479...
    assert half == pytest.approx(0.0625160948, abs=1e-9)
    assert interval.half_width == pytest.approx(half, abs=1e-12)
    assert (interval.low, interval.high) == pytest.approx((0.7608172385, 0.8858494281), abs=1e-9)


def test_one_runs_prediction_interval_is_mean_plus_minus_t_times_sd_times_root_of_1_plus_1_over_n():
    interval = prediction_interval([0.80, 0.82, 0.85])  # the values above: mean 0.82333, s = √(19/30000)
    half = T_975_DF2 * 0.025166114784235832 * (1 + 1 / 3) ** 0.5  # = 0.12503218958...
    assert half == pytest.approx(0.1250321896, abs=1e-9)
    assert (interval.n, interval.mean, interval.sd) == (3, pytest.approx(0.8233333333333333, abs=1e-12),
                                                        pytest.approx(0.025166114784235832, abs=1e-12))
    assert interval.half_width == pytest.approx(half, abs=1e-12)
    assert (interval.low, interval.high) == pytest.approx((0.8233333333 - half, 0.8233333333 + half), abs=1e-9)
    # one run's spread on top of the mean's: sqrt(n + 1) times the mean's half-width (here exactly 2)
    assert interval.half_width == pytest.approx(2 * mean_interval([0.80, 0.82, 0.85]).half_width, abs=1e-12)
    assert prediction_interval([0.80, 0.82, 0.85], bounds=(0.0, 0.9)).high == 0.9  # clipped as the mean's is
    assert prediction_interval([0.9]).half_width is None and prediction_interval([]) is None


def test_two_values_use_t_with_one_degree_of_freedom():
    interval = mean_interval([0.5, 0.7])  # mean 0.6, s = √0.02, half = 12.706 · √0.02 / √2 = 12.706 · 0.1
    assert interval.half_width == pytest.approx(T_975_DF1 * 0.1, abs=1e-9)


def test_one_value_has_a_mean_but_no_sd_nor_interval_and_none_has_nothing():
    one = mean_interval([0.9])
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 0.9, None, None, None)
    assert not one.excludes_zero
    assert mean_interval([]) is None
    assert mean_interval([float("nan"), 0.5]).n == 1  # a non-finite value (a diverged loss) is not a number


def test_an_accuracy_interval_is_the_t_interval_clipped_to_0_1():
    # the numbers: two seeds at 0.7847 and 0.8681 gave [0.297, 1.356]
    interval = mean_interval([0.7847, 0.8681], bounds=bounds_of("best_val_accuracy"))
    half = T_975_DF1 * abs(0.8681 - 0.7847) / 2  # s = |a − b| / √2, so t · s / √2 = t · |a − b| / 2
    assert interval.half_width == pytest.approx(half, abs=1e-12)  # the t half-width itself is unchanged
    assert interval.low == pytest.approx(0.8264 - half, abs=1e-12) and interval.high == 1.0
    assert mean_interval([0.01, 0.03], bounds=bounds_of("val_loss")).low == 0.0  # a loss is >= 0
    assert mean_interval([0.01, 0.03]).low < 0  # without a range, the plain t-interval
    inside = mean_interval([0.80, 0.82, 0.85], bounds=bounds_of("test_accuracy"))
    assert (inside.low, inside.high) == pytest.approx((0.7608172385, 0.8858494281), abs=1e-9)  # far from a bound


def test_a_difference_of_accuracies_is_clipped_to_minus_1_1():
    assert difference_bounds("test_accuracy") == (-1.0, 1.0) and difference_bounds("val_loss") == (None, None)
    _, interval = paired_difference({"0": 1.0, "1": 0.2}, {"0": 0.0, "1": 0.0}, difference_bounds("test_accuracy"))
    assert interval.high == 1.0 and interval.low == -1.0  # t(1 df) makes this one wider than the range


def test_paired_difference_is_over_the_seeds_both_ran():
    baseline = {"0": 0.70, "1": 0.72, "2": 0.71}
    other = {"0": 0.75, "1": 0.74, "2": 0.78, "3": 0.99}  # seed 3 has no partner: left out
    seeds, interval = paired_difference(other, baseline)
    assert seeds == ["0", "1", "2"]
    # d = 0.05, 0.02, 0.07: mean 0.04667, s = √(19/30000) as above, half 0.062516 -> the interval holds 0
    assert interval.mean == pytest.approx(0.0466666667, abs=1e-9)
    assert (interval.low, interval.high) == pytest.approx((-0.0158494281, 0.1091827615), abs=1e-9)
    assert not interval.excludes_zero


def test_a_difference_whose_interval_excludes_zero_is_marked():
    seeds, interval = paired_difference({"1": 0.75, "2": 0.76, "3": 0.77}, {"1": 0.70, "2": 0.70, "3": 0.70})
    # d = 0.05, 0.06, 0.07: mean 0.06, s = 0.01, half = 4.3027 · 0.01 / √3 = 0.0248414
    assert (interval.low, interval.high) == pytest.approx((0.0351586229, 0.0848413771), abs=1e-9)
    assert interval.excludes_zero
    below = paired_difference({"1": 0.65, "2": 0.64, "3": 0.63}, {"1": 0.70, "2": 0.70, "3": 0.70})[1]
    assert below.high == pytest.approx(-0.0351586229, abs=1e-9) and below.excludes_zero  # wholly below 0 too
    # n = 2 takes t = 12.706: d = -0.1, -0.2 gives -0.15 ± 0.635, which holds 0
    assert not paired_difference({"1": 0.6, "2": 0.5}, {"1": 0.7, "2": 0.7})[1].excludes_zero


def test_a_seed_run_twice_is_one_pair_at_its_mean():
    assert per_seed([("0", 0.5), ("0", 0.7), ("1", 0.4), (None, 0.9), ("2", float("nan"))]) == \
        pytest.approx({"0": 0.6, "1": 0.4})


def test_the_band_at_each_epoch_is_over_the_runs_that_reached_it():
    bands = per_epoch([[(1, 0.2), (2, 0.4), (3, 0.6)], [(1, 0.4), (2, 0.6)], [(1, 0.3), (2, None)]])
    assert [(epoch, i.n) for epoch, i in bands] == [(1, 3), (2, 2), (3, 1)]
    assert bands[0][1].mean == pytest.approx(0.3) and bands[0][1].sd == pytest.approx(0.1)
    assert bands[1][1].half_width == pytest.approx(T_975_DF1 * 0.1414213562 / 2 ** 0.5, abs=1e-9)
    assert bands[2][1].low is None  # one run reached epoch 3: a mean, no band


def test_runs_that_differ_only_in_the_seed_are_one_group():
    configs = [("activation=relu",), ("activation=elu",), ("activation=relu",),
               ("activation=elu", "model.depth=3"), ("model.depth=3", "activation=elu")]  # order does not matter
    assert group_indices(configs) == [[0, 2], [1], [3, 4]]


def test_baseline_overrides_split_at_spaces_and_commas_outside_brackets():
    assert split_overrides("activation=relu optimizer=sgd") == ["activation=relu", "optimizer=sgd"]
    assert split_overrides("activation=relu,  regularizer=[l2,dropout]") == ["activation=relu",
                                                                             "regularizer=[l2,dropout]"]
    assert split_overrides("a='x,y',b=2") == ["a='x,y'", "b=2"]


CONFIGS = [("activation=relu", "optimizer.learning_rate=0.01"), ("activation=elu", "optimizer.learning_rate=0.01"),
           ("activation=relu", "optimizer.learning_rate=1e-3"), ("+experiment/vg=elu_he",)]
LABELS = ["relu 0.01", "elu 0.01", "relu 1e-3", "vg"]


def test_the_baseline_is_the_one_group_holding_every_override():
    assert find_baseline("activation=elu", CONFIGS, LABELS) == 1
    assert find_baseline("activation=relu,optimizer.learning_rate=0.001", CONFIGS, LABELS) == 2  # 1e-3 == 0.001
    assert find_baseline("vg=elu_he", CONFIGS, LABELS) == 3  # a group path by its last part, as labels show it


@pytest.mark.parametrize("text, says", [("activation=tanh", "matches no group"),
                                        ("activation=relu", "matches 2 groups (relu 0.01; relu 1e-3)"),
                                        ("relu", "not an override: relu"), ("", "empty")])
def test_a_baseline_naming_no_group_or_several_is_a_user_error_listing_the_groups(text, says):
    with pytest.raises(UserError) as raised:
        find_baseline(text, CONFIGS, LABELS)
    message = str(raised.value)
    assert says in message and "groups: relu 0.01; elu 0.01; relu 1e-3; vg" in message
    assert "\n" not in message


def test_the_x_axis_is_a_numeric_key_if_any_then_the_one_with_most_values():
    configs = [(f"activation={a}", f"optimizer.learning_rate={lr}", f"optimizer={o}")
               for a in ("relu", "elu", "selu") for lr in ("0.1", "0.01") for o in ("sgd", "adam")]
    varying = varying_keys(configs)
    assert isolation_axes(varying) == ("optimizer.learning_rate", ["activation", "optimizer"])
    no_numbers = varying_keys([c[:1] + c[2:] for c in configs])
    assert isolation_axes(no_numbers) == ("activation", ["optimizer"])  # 3 activations beat 2 optimizers
    assert isolation_axes(varying_keys([("activation=relu",), ()])) == ("activation", [])  # unset is "(default)"


# ---- the report ----

@pytest.fixture
def seeds_sweep(tmp_path) -> Path:
    """`-m trainer.seed=0,1,2 activation=relu,elu,tanh`: relu one seed failed, tanh only at seeds 0 and 5."""
    root = tmp_path / "multirun"
    best = {"relu": [0.70, 0.72, 0.71], "elu": [0.80, 0.82, 0.85], "tanh": [0.60, None, None]}
    job = 0
    for activation, values in best.items():
        for seed, value in enumerate(values):
            if value is not None:
                fake_run(root / f"{job}", ["+experiment=x", f"activation={activation}", f"trainer.seed={seed}"],
                         [value - 0.1, value], diagnosed=False)
                job += 1
    fake_run(root / f"{job}", ["+experiment=x", "activation=relu", "trainer.seed=3"], [0.1], status="failed",
             diagnosed=False)
    fake_run(root / f"{job + 1}", ["+experiment=x", "activation=tanh", "trainer.seed=5"], [0.5, 0.62],
             diagnosed=False)
    return root


def test_the_groups_table_has_n_mean_sd_and_interval_and_counts_a_failed_run(seeds_sweep):
    out = write_report([seeds_sweep], plots=False)
    rows = {row["config"]: row for row in rows_of(out / "report_groups.csv")}
    assert list(rows) == ["activation=elu", "activation=relu", "activation=tanh"]  # best mean first
    elu, relu = rows["activation=elu"], rows["activation=relu"]
    assert (elu["n"], elu["runs"], elu["left_out"], elu["seeds"]) == ("3", "3", "", "0 1 2")
    assert float(elu["best_val_accuracy_mean"]) == pytest.approx(0.8233333333, abs=1e-9)
    assert float(elu["best_val_accuracy_sd"]) == pytest.approx(0.0251661148, abs=1e-9)
    assert float(elu["best_val_accuracy_ci_low"]) == pytest.approx(0.7608172385, abs=1e-9)
    assert float(elu["test_accuracy_mean"]) == pytest.approx(0.8133333333, abs=1e-9)  # fake test = best - 0.01
    assert float(elu["train_loss_mean"]) == pytest.approx(1.0)  # fake final train loss: 2 / epoch 2
    assert (relu["n"], relu["runs"], relu["left_out"]) == ("3", "4", "1 failed")  # the failed run's 0.1 is out
    assert float(relu["best_val_accuracy_mean"]) == pytest.approx(0.71)
    markdown = (out / "report.md").read_text()
    assert "## Over seeds" in markdown and "| `activation=relu` | 3 of 4 (1 failed) | 0.71 |" in markdown


def test_the_report_names_its_interval_method_and_no_accuracy_bound_is_passed(tmp_path):
    for seed, value in enumerate((0.7847, 0.8681)):  # one config, the two seeds
        fake_run(tmp_path / f"{seed}", ["activation=elu", f"trainer.seed={seed}"], [value - 0.1, value],
                 diagnosed=False)
    out = write_report([tmp_path], plots=True)
    (row,) = rows_of(out / "report_groups.csv")
    assert float(row["best_val_accuracy_ci_high"]) == 1.0 and float(row["test_accuracy_ci_high"]) <= 1.0
    markdown = (out / "report.md").read_text()
    assert INTERVAL_METHOD in markdown and "clipped to the metric's range" in INTERVAL_METHOD
    assert "1 config;" in markdown and "1 configs" not in markdown  # one config is singular


def test_the_printed_groups_title_is_singular_for_one_config(tmp_path, capsys):
    from runner.console import Console

    for seed, value in enumerate((0.78, 0.86)):
        fake_run(tmp_path / f"{seed}", ["activation=elu", f"trainer.seed={seed}"], [value], diagnosed=False)
    write_report([tmp_path], plots=False, console=Console(live=False))
    printed = capsys.readouterr().out
    assert "1 config over seeds" in printed and "[0.3118, 1]" in printed  # 0.82 − 12.706 · 0.08 / 2


def test_without_repeated_seeds_there_is_no_groups_table(tmp_path):
    fake_run(tmp_path / "a", ["activation=relu", "trainer.seed=0"], [0.5], diagnosed=False)
    fake_run(tmp_path / "b", ["activation=elu", "trainer.seed=1"], [0.6], diagnosed=False)
    out = write_report([tmp_path], plots=False)
    assert not (out / "report_groups.csv").exists() and "Over seeds" not in (out / "report.md").read_text()


def test_the_ablation_pairs_by_seed_and_sorts_by_effect(seeds_sweep):
    out = write_report([seeds_sweep], plots=False, baseline="activation=relu")
    rows = rows_of(out / "report_ablation.csv")
    assert [row["config"] for row in rows] == ["activation=elu", "activation=tanh"]
    elu, tanh = rows
    # elu − relu at seeds 0, 1, 2: 0.10, 0.10, 0.14: mean 0.11333, s = 0.023094, s/√3 = 1/75, half = 4.3027 / 75
    assert elu["seeds"] == "0 1 2" and elu["best_val_accuracy_n"] == "3"
    assert float(elu["best_val_accuracy_diff"]) == pytest.approx(0.1133333333, abs=1e-9)
    assert float(elu["best_val_accuracy_ci_low"]) == pytest.approx(0.1133333333 - 0.0573687031, abs=1e-9)
    assert elu["best_val_accuracy_excludes_zero"] == "True"
    # tanh ran seeds 0 and 5; relu's seed 0 is the only partner: one difference, no interval
    assert tanh["seeds"] == "0" and float(tanh["best_val_accuracy_diff"]) == pytest.approx(0.60 - 0.70)
    assert tanh["best_val_accuracy_ci_low"] == "" and tanh["best_val_accuracy_excludes_zero"] == "False"
    markdown = (out / "report.md").read_text()
    assert "## Ablation" in markdown and "Baseline: `activation=relu`" in markdown
    assert "| `activation=elu` | 3 | +0.1133 * |" in markdown


def test_a_bad_baseline_writes_nothing(seeds_sweep):
    with pytest.raises(BaselineError, match="groups: activation=elu; activation=relu; activation=tanh"):
        write_report([seeds_sweep], baseline="activation=gelu")
    assert not (seeds_sweep / "report").exists()


def test_grouped_runs_get_mean_curves_and_an_isolation_plot(seeds_sweep):
    out = write_report([seeds_sweep], plots=True)
    for name in ("learning_curves.png", "isolation.png"):
        assert (out / name).stat().st_size > 10_000, name
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, name
        assert image[..., :3].std() > 0.05, name  # something is drawn, not a blank canvas
    markdown = (out / "report.md").read_text()
    assert "![isolation.png](isolation.png)" in markdown


def test_the_multirun_callback_reports_its_baseline_and_survives_a_bad_one(seeds_sweep, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(seeds_sweep)}}})
    MultirunReport(plots=False, baseline="activation=relu").on_multirun_end(config)
    assert (seeds_sweep / "report" / "report_ablation.csv").exists()
    MultirunReport(plots=False, baseline="activation=gelu").on_multirun_end(config)
    captured = capsys.readouterr()
    assert "no ablation: baseline 'activation=gelu' matches no group" in captured.err
    assert (seeds_sweep / "report" / "report_groups.csv").exists()
    assert not (seeds_sweep / "report" / "report_ablation.csv").exists()  # the new report has none


def test_the_cli_prints_the_groups_and_the_ablation(seeds_sweep):
    result = subprocess.run([sys.executable, "-m", "runner.report", "--baseline", "activation=relu",
                             "--no-plots", str(seeds_sweep)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("difference from the baseline activation=relu"))
    assert lines[title + 1].split()[:4] == ["config", "seeds", "Δ", "best_val_accuracy"]
    assert lines[title + 2].split()[:4] == ["activation=elu", "3", "+0.1133", "*"]
    assert lines[title + 3].split()[:3] == ["activation=tanh", "1", "-0.1"]
    assert any(line.split()[:5] == ["activation=relu", "3", "of", "4", "(1"] for line in lines)
    report = seeds_sweep / "report"
    assert {p.name for p in report.iterdir()} == {"report.md", "report.csv", "report_groups.csv",
                                                   "report_ablation.csv"}


def test_the_cli_refuses_a_baseline_that_matches_several_groups_in_one_line(seeds_sweep):
    result = subprocess.run([sys.executable, "-m", "runner.report", "--baseline", "+experiment=x",
                             str(seeds_sweep)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: baseline '+experiment=x' matches 3 groups (activation=elu; activation=relu; activation=tanh); "
        "it must match exactly one; groups: activation=elu; activation=relu; activation=tanh"]
    assert not (seeds_sweep / "report").exists()
