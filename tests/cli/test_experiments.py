"""The chapter's experiments (conf/experiment/): every job of every preset's sweep builds, and short runs show
what each preset is for."""

from __future__ import annotations

import csv
import itertools

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runner.cli.relations import validate
from runner.config.compose import CONF_DIR
from runner.training.build import build_parts
from tests.conftest import read_summary

NO_PLOTS = ("hydra.callbacks.report.plots=false",)  # report.csv is what these read; plots cost seconds a sweep

# The presets that sweep (`-m +experiment=NAME`); sparse and fast are single runs.
SWEEPS = ["vanishing_gradients", "activations", "selu", "batch_norm", "gradient_clipping", "optimizers", "schedules",
          "regularization", "practical_defaults", "transfer", "pretraining"]


def sweep_jobs(name: str) -> list[list[str]]:
    """The override lists of the jobs `python -m runner -m +experiment=NAME` launches."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    choices = []
    for key, values in cfg.hydra.sweeper.params.items():
        if values == "glob(*)":  # every choice of the group
            values = ",".join(sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml")))
        choices.append([f"{key}={value}" for value in values.split(",")])
    # Hydra puts the sweep's own overrides before the command line's: a variant must win from there.
    return [[*job, f"+experiment={name}"] for job in itertools.product(*choices)]


def jobs_by_override(run_dirs, key: str) -> dict:
    """Each job's run dir by the value it gave `key`."""
    jobs = {}
    for run_dir in run_dirs:
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        jobs[next(o.split("=", 1)[1] for o in overrides if o.startswith(key + "="))] = run_dir
    return jobs


@pytest.mark.parametrize("name", SWEEPS)
def test_every_job_of_the_presets_sweep_composes_validates_and_builds(name):
    jobs, configs = sweep_jobs(name), set()
    assert len(jobs) >= 2
    for job in jobs:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=job)
        validate(cfg)
        build_parts(cfg, num_classes=10, steps_per_epoch=10)
        configs.add(OmegaConf.to_yaml(cfg))
    assert len(configs) == len(jobs)  # every job trains something different


def test_optimizers_and_schedules_sweep_every_file_of_their_group():
    assert len(sweep_jobs("optimizers")) == len(list((CONF_DIR / "optimizer").glob("*.yaml")))
    assert len(sweep_jobs("schedules")) == len(list((CONF_DIR / "schedule").glob("*.yaml")))


# The preset's sweep over seeds 0, 1, 2 (tests/conftest.py), which tests/test_book_parity.py reads too.
@pytest.mark.xdist_group("vanishing_gradients_sweep")
def test_vanishing_gradients_sigmoid_with_normal_init_has_a_gradient_ratio_10x_below_he_with_elu(
        vanishing_gradients_sweep):
    run_dirs = sorted(p.parent for p in vanishing_gradients_sweep.rglob("summary.json"))
    assert len(run_dirs) == 6
    for seed in (0, 1, 2):  # each seed's pair: the same data split and batch order
        jobs = jobs_by_override([d for d in run_dirs if read_summary(d)["seed"] == seed],
                                "experiment/vanishing_gradients")
        sigmoid, elu = (read_summary(jobs[v]) for v in ("sigmoid_normal", "elu_he"))
        assert sigmoid["grad_norm_ratio"] * 10 <= elu["grad_norm_ratio"], (seed, sigmoid, elu)
        assert (jobs["elu_he"] / "diagnostics.jsonl").exists()
    # The multirun ended with its report (runner.cli.callbacks.MultirunReport): every job, by best validation accuracy.
    report = vanishing_gradients_sweep / "report"
    rows = list(csv.DictReader((report / "report.csv").open()))
    assert sorted(row["run_dir"] for row in rows) == sorted(d.name for d in run_dirs)
    best = [float(row["best_val_accuracy"]) for row in rows]
    assert best == sorted(best, reverse=True)
    assert (report / "report.md").exists() and (report / "grad_norms.png").exists()


def test_gradient_clipping_the_unclipped_job_diverges_at_a_named_step_and_the_clipped_one_trains(cli):
    result = cli("-m", "+experiment=gradient_clipping", "trainer.epochs=2", *NO_PLOTS)
    assert result.returncode == 0, result.stderr  # a diverged job ends normally; the sweep goes on
    jobs = jobs_by_override(cli.run_dirs(), "clip")
    unclipped, clipped = read_summary(jobs["none"]), read_summary(jobs["global_norm"])
    assert unclipped["status"] == "diverged"
    assert isinstance(unclipped["diverged_at_step"], int) and unclipped["diverged_at_step"] > 0
    assert unclipped["diverged_layer"].startswith(("dense_", "head"))
    assert f"at step {unclipped['diverged_at_step']}" in result.stderr
    assert unclipped["test_accuracy"] is not None  # evaluated on the last finite weights
    assert clipped["status"] == "completed" and clipped["test_accuracy"] > 0.5


def _preset_report_rows(cli, name: str, *overrides: str) -> list[dict]:
    result = cli("-m", f"+experiment={name}", *overrides, *NO_PLOTS, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = (cli.cwd / "outputs" / "multirun").rglob("report.csv")
    import csv

    return list(csv.DictReader(report.open()))


def test_the_transfer_preset_runs_its_four_variants_side_by_side(cli):
    rows = _preset_report_rows(cli, "transfer", "trainer.epochs=6", "model.depth=2",  # unfrozen after 5
                               "model.width=16")
    assert sorted(r["overrides"].split("experiment/transfer=")[1].split()[0] for r in rows) == [
        "cached", "frozen", "scratch", "unfrozen"]
    assert {r["status"] for r in rows} == {"completed"}


def test_the_pretraining_preset_runs_every_method(cli):
    rows = _preset_report_rows(cli, "pretraining", "trainer.epochs=2", "model.depth=2",
                               "model.width=16")
    assert sorted(r["overrides"].split("experiment/pretraining=")[1].split()[0] for r in rows) == [
        "autoencoder", "auxiliary", "none", "rbm", "supervised"]
    assert {r["status"] for r in rows} == {"completed"}
