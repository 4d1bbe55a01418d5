"""Sweeps that resume: re-launching a sweep into its sweep dir skips what ended, continues what was
interrupted, re-runs what failed and runs what is new; job dirs are named by the jobs, not their order;
a resumed run that early stopping ended trains no further."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

from omegaconf import OmegaConf

from tests.conftest import compose_config, read_metrics, read_summary, snapshot

# A small net on a few examples (4 steps an epoch).
BASE = ("trainer.epochs=12", "trainer.batch_size=16", "model.depth=1", "model.width=8", "dataset.train_subset=64",
        "trainer.diagnostics_every=4")
# The first launch's epochs each end with a checkpoint (~0.1 s of CPU; 0.1-0.4 s wall, quiet to load 5): a job lasts
# seconds after its second epoch, for SIGTERM to land in. The re-launch leaves it out (a key free on resume): the
# jobs it trains checkpoint at their end only.
SLOWED = ("trainer.checkpoint_every=1",)
EXCLUDED_FROM_NAMES = SLOWED  # conf/config.yaml: what does not make a job another job
NO_PLOTS = ("hydra.callbacks.report.plots=false",)  # the report's table is read here, not its plots


def job_name(*overrides: str) -> str:
    """A job's dir, by definition: its overrides, sorted, joined by ',' (Hydra's override_dirname)."""
    return ",".join(sorted(o for o in overrides if o not in EXCLUDED_FROM_NAMES))


def without_times(records):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]


def test_a_relaunched_sweep_skips_the_finished_resumes_the_interrupted_reruns_the_failed_and_runs_the_new(cli):
    sweep = cli.cwd / "outputs" / "sweep"
    # Four jobs that differ by their seed only: the later ones read the first's compiled programs from the cache.
    dirs = {seed: sweep / job_name(*BASE, f"trainer.seed={seed}") for seed in range(4)}
    completed, failing, interrupted, new = dirs.values()
    # One job fails at its first epoch's end, after writing that epoch's metrics: where its diagnostics go, the
    # user left a dir. Their notes sit beside it.
    (failing / "diagnostics.jsonl").mkdir(parents=True)
    (failing / "notes.txt").write_text("mine\n")

    # Launch 1, in Hydra's order: seed 0 completes, seed 1 fails, seed 2 is stopped by SIGTERM (SLURM pre-emption),
    # which ends the sweep: seed 3 never starts.
    first = subprocess.Popen([sys.executable, "-m", "runner", "-m", "trainer.seed=0,1,2,3", *BASE, *SLOWED,
                              f"hydra.sweep.dir={sweep}"], cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    metrics = interrupted / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert read_summary(completed)["status"] == "completed"
    failed = read_summary(failing)
    # a disk error is one line naming the path (runner/__main__.py): the reason says what could not be written
    assert failed["status"] == "failed" and failed["reason"].startswith("cannot write ")
    assert failed["reason"].endswith("diagnostics.jsonl: Is a directory"), failed["reason"]
    assert [m["epoch"] for m in read_metrics(failing)] == [1]
    assert "metrics.jsonl" in failed["written"] and not {"diagnostics.jsonl", "notes.txt"} & set(failed["written"])
    stopped = read_summary(interrupted)
    assert stopped["status"] == "interrupted" and 1 <= stopped["epochs"] < 12, "SIGTERM should land mid-job"
    assert not new.exists()
    finished_bytes = {p.name: p.read_bytes() for p in completed.iterdir() if p.is_file()}
    finished_mtime = (completed / "metrics.jsonl").stat().st_mtime_ns

    reference = cli(*BASE, "trainer.seed=2", "hydra.run.dir=outputs/reference")
    assert reference.returncode == 0, reference.stderr
    (failing / "diagnostics.jsonl").rmdir()  # the user fixes what made the job fail

    # Launch 2: the same sweep, overrides and seeds typed in another order (so Hydra runs the jobs in another order).
    relaunch = ("-m", *reversed(BASE), "trainer.seed=3,2,1,0", "trainer.resume=true", f"hydra.sweep.dir={sweep}",
                *NO_PLOTS)
    second = cli(*relaunch)
    assert second.returncode == 0, second.stderr
    assert sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "report") == sorted(dirs.values())
    assert f"skipped (completed): all 12 epochs trained; nothing to train in {completed}" in second.stdout
    assert {p.name: p.read_bytes() for p in completed.iterdir() if p.is_file()} == finished_bytes
    assert (completed / "metrics.jsonl").stat().st_mtime_ns == finished_mtime
    assert f"resumed from the checkpoint of epoch {stopped['epochs']}" in second.stdout
    assert without_times(read_metrics(interrupted)) == without_times(read_metrics(cli.cwd / "outputs/reference"))
    for key in ("status", "test_loss", "test_accuracy", "best_val_accuracy", "steps", "epochs"):
        assert read_summary(interrupted)[key] == read_summary(cli.cwd / "outputs/reference")[key], key
    assert "re-running afresh (failed: cannot write " in second.stdout
    assert [m["epoch"] for m in read_metrics(failing)] == list(range(1, 13)), "the failed attempt's line is gone"
    assert (failing / "notes.txt").read_text() == "mine\n"
    for job in dirs.values():
        assert read_summary(job)["status"] == "completed", job.name
    with (sweep / "report" / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}

    # Launch 3: nothing is left to do; no job trains, no metrics change.
    before = {job: (job / "metrics.jsonl").read_bytes() for job in dirs.values()}
    third = cli(*relaunch)
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("skipped (completed)") == 4
    assert "dataset digits" not in third.stdout, "a skipped job loads no data"
    assert {job: (job / "metrics.jsonl").read_bytes() for job in dirs.values()} == before


def test_a_resumed_run_that_early_stopping_ended_trains_no_further(cli):
    run = ("trainer.epochs=30", "trainer.early_stopping.patience=1", "trainer.early_stopping.monitor=val_accuracy",
           "model.depth=1", "model.width=8", "dataset.train_subset=64", "hydra.run.dir=outputs/es")
    assert cli(*run).returncode == 0
    run_dir = cli.cwd / "outputs" / "es"
    summary = read_summary(run_dir)
    assert summary["status"] == "early_stopped" and summary["epochs"] < 30
    stopped_at = summary["epochs"]

    before = snapshot(run_dir)
    resumed = cli("trainer.resume=true", "hydra.run.dir=outputs/es")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == (f"skipped (early_stopped): early stopping ended the run at epoch {stopped_at}; "
                                      f"nothing to train in {run_dir}")
    assert snapshot(run_dir) == before, "nothing to do, nothing touched"

    # The same run as a signal in its last epoch leaves it (Interrupt replaces the status): summary.json says
    # interrupted, the checkpoint is of the epoch early stopping ended the run at. Resuming restores it, sees
    # that, and stops: before the fix it trained one more epoch.
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    resumed = cli("trainer.resume=true", "hydra.run.dir=outputs/es")
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped (early_stopped): early stopping ended the run at epoch {stopped_at}" in resumed.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == stopped_at


# ---- what a re-launch checks before anything runs ----

def _saved_job(job_dir, overrides, **changes):
    """A job dir as an earlier launch left it: Hydra's saved config (with `changes`) and one epoch of metrics."""
    cfg = compose_config(*overrides)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
    (job_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "val_loss": 1.0,
                                                       "val_accuracy": 0.5}) + "\n")


def test_a_relaunched_sweep_whose_jobs_ended_trains_nothing_touches_nothing_and_reports_every_job(cli):
    sweep = cli.cwd / "outputs" / "sweep"
    ended = {"relu": {"status": "completed", "epochs": 3}, "elu": {"status": "early_stopped", "epochs": 2}}
    for activation, summary in ended.items():
        job = sweep / job_name(f"activation={activation}", "trainer.epochs=3")
        _saved_job(job, [f"activation={activation}", "trainer.epochs=3"])
        (job / "summary.json").write_text(json.dumps({**summary, "best_val_accuracy": 0.5, "test_accuracy": 0.5,
                                                      "test_loss": 1.0, "wall_time_s": 1.0}))
    results = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep.rglob("*")
               if p.is_file() and ".hydra" not in p.parts}
    result = cli("-m", "trainer.epochs=3", "activation=elu,relu", "trainer.resume=true", f"hydra.sweep.dir={sweep}",
                 "hydra.callbacks.report.plots=false")
    assert result.returncode == 0, result.stderr
    relu, elu = (sweep / job_name(f"activation={a}", "trainer.epochs=3") for a in ("relu", "elu"))
    assert f"skipped (completed): all 3 epochs trained; nothing to train in {relu}" in result.stdout
    assert f"skipped (early_stopped): early stopping ended the run at epoch 2; nothing to train in {elu}" \
        in result.stdout
    assert "dataset digits" not in result.stdout, "a skipped job loads no data"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results} == results
    with (sweep / "report" / "report.csv").open() as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["completed", "early_stopped"]


def test_a_relaunched_sweep_needs_the_sweep_dir_of_an_earlier_sweep(cli):
    for args, words in ((["trainer.resume=true"], ["hydra.sweep.dir="]),
                        (["trainer.resume=true", "hydra.sweep.dir=outputs/none"], ["outputs/none", "no sweep"])):
        result = cli("-m", "activation=relu,elu", *args)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert all(w in line for w in words), line
    assert not (cli.cwd / "outputs").exists()


def test_a_job_dir_trained_with_another_config_is_refused_and_left_as_it_was(cli):
    sweep = cli.cwd / "outputs" / "sweep"
    _saved_job(sweep / "activation=relu", ["activation=relu"], **{"optimizer.learning_rate": 0.002})
    before = snapshot(cli.cwd)
    result = cli("-m", "activation=relu,elu", "trainer.resume=true", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "activation=relu" in line and "optimizer.learning_rate (0.002 -> 0.001)" in line
    assert snapshot(cli.cwd) == before


def test_a_fresh_sweep_into_a_sweep_dir_whose_job_left_only_metrics_is_refused(cli):
    sweep = cli.cwd / "outputs" / "sweep"
    _saved_job(sweep / "activation=relu", ["activation=relu"])  # killed before its summary or first checkpoint
    before = snapshot(cli.cwd)
    result = cli("-m", "activation=relu,elu", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "already holds a run (activation=relu/metrics.jsonl)" in line and "trainer.resume=true" in line
    assert snapshot(cli.cwd) == before


def test_a_run_writes_nothing_in_its_dir_that_a_rerun_would_not_take_away(cli):
    """rundir.RUN_OUTPUTS is what a failed job's re-run removes: every file a run can write must be in it."""
    from runner.rundir.claim import RUN_OUTPUTS

    result = cli("trainer.epochs=1", "model.depth=1", "model.width=8", "dataset.train_subset=64",
                 "trainer.diagnostics_every=1",
                 "optimizer.learning_rate=auto", "logger=[jsonl,csv,tensorboard]", "hydra.run.dir=outputs/all")
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (cli.cwd / "outputs" / "all").iterdir()} - {".hydra"}
    assert {"metrics.jsonl", "summary.json", "checkpoints", "diagnostics.jsonl", "metrics.csv", "tensorboard",
            "lr_find.json"} <= written
    assert written <= set(RUN_OUTPUTS), written - set(RUN_OUTPUTS)
