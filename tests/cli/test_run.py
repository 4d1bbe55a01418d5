"""`python -m runner` end to end through the real command line."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import read_metrics, read_summary

METRIC_KEYS = {"epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_time_s"}
SUMMARY_KEYS = {"status", "test_loss", "test_accuracy", "best_val_accuracy", "epochs", "steps", "wall_time_s",
                "train_examples_per_s", "compile_time_s", "devices", "seed"}


def test_default_config_reaches_95_percent_on_digits(cli):
    result = cli()
    assert result.returncode == 0, result.stderr
    [run_dir] = cli.run_dirs()
    summary = read_summary(run_dir)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] >= 0.95
    assert summary["epochs"] == 20 and summary["compile_time_s"] > 0
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(1, 21))
    assert all(METRIC_KEYS <= m.keys() for m in metrics)
    assert metrics[-1]["step"] == summary["steps"] and summary["steps"] % 20 == 0
    assert str(run_dir) in result.stdout
    resolved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert resolved["activation"]["_target_"] == "jax.nn.elu"
    assert resolved["initializer"]["_target_"] == "jax.nn.initializers.he_normal"
    assert resolved["normalization"]["layer"]["_target_"] == "flax.linen.BatchNorm"
    assert list(resolved["regularizer"]) == ["dropout"]
    assert resolved["optimizer"]["_target_"] == "optax.adam"
    assert resolved["schedule"]["_target_"].endswith("schedules.constant")


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(cli):
    for _ in range(2):
        assert cli("trainer.epochs=3", "dataset=mnist1d").returncode == 0
    first, second = (read_metrics(d) for d in cli.run_dirs())
    strip = lambda ms: [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in ms]  # noqa: E731
    assert strip(first) == strip(second)


@pytest.mark.slow
def test_different_seeds_give_different_metrics(cli):
    for seed in (0, 1):
        assert cli("trainer.epochs=1", f"trainer.seed={seed}").returncode == 0
    first, second = (read_metrics(d) for d in cli.run_dirs())
    assert first[0]["train_loss"] != second[0]["train_loss"]


@pytest.mark.slow
def test_multirun_sweep_runs_every_combination_in_its_own_dir(cli):
    result = cli("-m", "optimizer=sgd,adam", "activation=relu,elu", "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    run_dirs = cli.run_dirs()
    assert len(run_dirs) == 4
    assert all("multirun" in str(d) for d in run_dirs)
    choices = {(yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["optimizer"]["_target_"],
                yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["activation"]["_target_"])
               for d in run_dirs}
    assert choices == {(o, a) for o in ("optax.sgd", "optax.adam") for a in ("jax.nn.relu", "jax.nn.elu")}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("model=cnn", "trainer.epochs=1"),
    ("model=cnn", "dataset=mnist1d", "trainer.epochs=1"),
])
def test_cnn_trains_on_images_and_signals(cli, overrides):
    result = cli(*overrides)
    assert result.returncode == 0, result.stderr
    [run_dir] = cli.run_dirs()
    assert read_summary(run_dir)["test_accuracy"] > 0.3
