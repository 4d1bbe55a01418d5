"""What a stopped run says to type next: a single run resumes its dir; a sweep's job names the whole sweep, and
following what it says finishes every job of the sweep (runner/cli/run.py: continue_with; runner/cli/callbacks.py keeps
the sweep's command line). Also the test aid RUNNER_MAX_EPOCHS (runner/config/compose.py: capped)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from runner.cli.callbacks import SWEEP_ARGV, MultirunReport
from runner.cli.run import continue_with
from runner.config.compose import MAX_EPOCHS_VARIABLE, capped
from tests.conftest import compose_config, read_summary


@pytest.fixture
def hydra_job(monkeypatch):
    """Sets this process's HydraConfig to a job of a multirun into outputs/sw whose own overrides are given."""
    before = HydraConfig.instance().cfg
    monkeypatch.delenv(SWEEP_ARGV, raising=False)

    def job(task: list[str], mode: RunMode = RunMode.MULTIRUN, sweep_dir: str = "outputs/sw",
            run_dir: str = "outputs/long") -> None:
        cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        cfg.hydra.mode, cfg.hydra.sweep.dir, cfg.hydra.overrides.task = mode, sweep_dir, task
        cfg.hydra.run.dir = run_dir
        cfg.hydra.launcher = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
        HydraConfig.instance().set_config(cfg)

    yield job
    HydraConfig.instance().cfg = before


def test_a_single_run_resumes_its_own_dir_as_it_was_typed(hydra_job):
    hydra_job(["optimizer=sgd"], mode=RunMode.RUN)
    assert continue_with(Path("/abs/outputs/long")) == ("continue with: python -m runner trainer.resume=true "
                                                        "hydra.run.dir=outputs/long")
    hydra_job(["optimizer=sgd"], mode=RunMode.RUN, run_dir="my runs/a")
    assert continue_with(Path("/abs/my runs/a")) == ("continue with: python -m runner trainer.resume=true "
                                                     "hydra.run.dir='my runs/a'")  # as a shell takes it


def test_a_sweeps_job_names_the_sweeps_command_line_kept_at_its_start(hydra_job, monkeypatch):
    hydra_job(["trainer.seed=1", "activation=elu"])
    argv = ["-m", "trainer.seed=range(0,2)", "activation=relu,elu", "regularizer=[l2,dropout]",
            "hydra/launcher=parallel", "trainer.resume=true", "hydra.sweep.dir=outputs/sw"]
    monkeypatch.setattr(sys, "argv", ["runner", *argv])
    MultirunReport().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": "outputs/sw"}}}))
    assert json.loads(__import__("os").environ[SWEEP_ARGV]) == {"sweep_dir": "outputs/sw", "argv": argv}
    hint = continue_with(Path("outputs/sw/activation=elu,trainer.seed=1"))
    assert hint == ("continue the sweep with: python -m runner -m 'trainer.seed=range(0,2)' activation=relu,elu "
                    "'regularizer=[l2,dropout]' hydra/launcher=parallel trainer.resume=true hydra.sweep.dir=outputs/sw")
    assert shlex.split(hint.split(": ", 1)[1])[4:] == [*argv[1:5], "trainer.resume=true", "hydra.sweep.dir=outputs/sw"]


def test_without_the_kept_line_the_sweeps_multirun_yaml_says_it(hydra_job, tmp_path):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    OmegaConf.save({"hydra": {"overrides": {"hydra": ["hydra.sweep.dir=x", "hydra.mode=MULTIRUN"],
                                            "task": ["trainer.seed=0,1", "activation=relu,elu"]}}},
                   sweep / "multirun.yaml")
    hydra_job(["trainer.seed=0", "activation=relu"], sweep_dir=str(sweep))
    assert continue_with(sweep / "job") == ("continue the sweep with: python -m runner -m trainer.seed=0,1 "
                                            f"activation=relu,elu trainer.resume=true hydra.sweep.dir={sweep}")


def test_a_line_kept_for_another_sweep_is_not_used(hydra_job, tmp_path, monkeypatch):
    monkeypatch.setenv(SWEEP_ARGV, json.dumps({"sweep_dir": "outputs/other", "argv": ["-m", "activation=tanh,relu"]}))
    hydra_job(["activation=elu"], sweep_dir=str(tmp_path))  # no multirun.yaml either: the job's own overrides
    assert continue_with(tmp_path) == ("continue the sweep with: python -m runner -m activation=elu "
                                       f"trainer.resume=true hydra.sweep.dir={tmp_path}")


def test_the_epoch_cap_lowers_trainer_epochs_only(monkeypatch):
    cfg = compose_config("trainer.epochs=20")
    assert capped(cfg) is cfg  # not set: the config as it is
    monkeypatch.setenv(MAX_EPOCHS_VARIABLE, "3")
    assert capped(cfg).trainer.epochs == 3 and cfg.trainer.epochs == 20  # a copy: the saved config keeps 20
    assert capped(compose_config("trainer.epochs=2")).trainer.epochs == 2  # below the cap: as typed


# A small net on a few examples: ~3 ms of CPU an epoch, so 400 epochs leave seconds for the Ctrl-C to land in, and
# the hint's run, capped at 100 epochs, ends job 1 wherever the Ctrl-C stopped it (within its first 100 epochs). The
# two jobs differ by their seed only, so the second reads the first's compiled programs from the cache. Both commands
# are processes of their own (one is signalled, one has the cap in its environment).
TINY = ("model.depth=1", "model.width=8", "dataset.train_subset=64")
CAP = 100


def test_ctrl_c_in_a_sweep_prints_the_sweeps_command_and_following_it_finishes_every_job(cli):
    """Job 1 of 2 is stopped by Ctrl-C mid-run; the hint, run as printed (epochs capped to keep it short),
    finishes job 1 from its checkpoint and runs job 2: the whole sweep, not the one job."""
    sweep = cli.cwd / "outputs" / "sw"
    first = subprocess.Popen([sys.executable, "-m", "runner", "-m", "trainer.seed=0,1", "trainer.epochs=400", *TINY,
                              "hydra.callbacks.report.plots=false", f"hydra.sweep.dir={sweep}"], cwd=cli.cwd,
                             env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = {s: ",".join(sorted([f"trainer.seed={s}", "trainer.epochs=400", *TINY])) for s in (0, 1)}
    metrics = sweep / job[0] / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    stopped_at = read_summary(sweep / job[0])["epochs"]
    assert 1 <= stopped_at < CAP, "the Ctrl-C should land early in job 1"
    (hint,) = [line for line in stderr.splitlines() if "continue the sweep with: " in line]
    command = hint.split("continue the sweep with: ", 1)[1]
    assert command == (f"python -m runner -m trainer.seed=0,1 trainer.epochs=400 {' '.join(TINY)} "
                       f"hydra.callbacks.report.plots=false trainer.resume=true hydra.sweep.dir={sweep}")
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "runner"]
    done = subprocess.run([sys.executable, *words[1:]], cwd=cli.cwd,
                          env={**cli.env, MAX_EPOCHS_VARIABLE: str(CAP)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summaries = {p.parent.name: read_summary(p.parent) for p in sweep.glob("*/summary.json")}
    assert sorted(summaries) == sorted(job.values())
    assert all(s["status"] == "completed" and s["epochs"] == CAP for s in summaries.values()), summaries
    assert f"resumed from the checkpoint of epoch {stopped_at}" in done.stdout
