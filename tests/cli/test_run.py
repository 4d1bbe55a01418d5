"""`python -m runner` end to end through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import Runner, read_metrics, read_summary

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


# One multirun of two optimizers by two seeds, and adam's seed 0 again in a process of its own, started afresh (not
# forked from the tests' server: its own imports and hash seed): 2 processes for the claims below.
SEEDS_RUN = ("dataset=mnist1d", "dataset.train_subset=256", "model.depth=1", "model.width=16", "trainer.epochs=2")


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory, tfds_dir) -> tuple[list[Path], Path]:
    """The run dirs of `-m optimizer=sgd,adam trainer.seed=0,1` (its four jobs), and of adam's seed 0 run alone."""
    cli = Runner(tmp_path_factory.mktemp("seeds"), tfds_dir)
    swept = cli("-m", *SEEDS_RUN, "optimizer=sgd,adam", "trainer.seed=0,1", "hydra.callbacks.report.plots=false")
    assert swept.returncode == 0, swept.stderr
    jobs = cli.run_dirs()
    alone = cli(*SEEDS_RUN, "optimizer=adam", "trainer.seed=0", "hydra.run.dir=outputs/alone", fork=False)
    assert alone.returncode == 0, alone.stderr
    return jobs, cli.cwd / "outputs" / "alone"


def _config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


def _job(seeded_runs, optimizer: str, seed: int) -> list[dict]:
    """The metrics of the multirun's job of this optimizer's _target_ and seed."""
    [run_dir] = [d for d in seeded_runs[0] if (_config(d)["optimizer"]["_target_"], _config(d)["trainer"]["seed"])
                 == (optimizer, seed)]
    return read_metrics(run_dir)


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in records]


@pytest.mark.xdist_group("seeded_runs")
def test_same_config_and_seed_give_identical_metrics(seeded_runs):
    # Another process, and a lone run against a multirun's job: the same numbers to the last bit.
    alone = read_metrics(seeded_runs[1])
    assert len(alone) == 2
    assert _without_times(_job(seeded_runs, "optax.adam", 0)) == _without_times(alone)


@pytest.mark.xdist_group("seeded_runs")
def test_different_seeds_give_different_metrics(seeded_runs):
    assert _job(seeded_runs, "optax.adam", 0)[0]["train_loss"] != _job(seeded_runs, "optax.adam", 1)[0]["train_loss"]


@pytest.mark.xdist_group("seeded_runs")
def test_multirun_sweep_runs_every_combination_in_its_own_dir(seeded_runs):
    jobs, _ = seeded_runs
    assert len(jobs) == 4 and len(set(jobs)) == 4
    assert all("multirun" in str(d) for d in jobs)
    combinations = {(_config(d)["optimizer"]["_target_"], _config(d)["trainer"]["seed"]) for d in jobs}
    assert combinations == {(o, s) for o in ("optax.sgd", "optax.adam") for s in (0, 1)}


@pytest.fixture(scope="module")
def cnn_runs(tmp_path_factory, tfds_dir) -> dict[str, dict]:
    """One multirun of the CNN, one epoch on each dataset: each job's summary by dataset."""
    cli = Runner(tmp_path_factory.mktemp("cnn"), tfds_dir)
    result = cli("-m", "model=cnn", "dataset=digits,mnist1d", "trainer.epochs=1", "hydra.callbacks.report.plots=false")
    assert result.returncode == 0, result.stderr
    return {yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["dataset"]["name"]: read_summary(d)
            for d in cli.run_dirs()}


@pytest.mark.xdist_group("cnn_runs")
@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])  # images (8 x 8) and signals (40 x 1)
def test_cnn_trains_on_images_and_signals(cnn_runs, dataset):
    assert cnn_runs[dataset]["test_accuracy"] > 0.3
