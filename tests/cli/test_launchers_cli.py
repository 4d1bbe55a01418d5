"""The launcher presets end to end (conf/hydra/launcher/): parallel processes with capped threads whose lines say
their job, submitit's local executor, and a job that submitit pre-empts being requeued to resume from its checkpoint
in its own dir."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import Runner, read_metrics, read_summary


def popen(cli, *args: str) -> subprocess.Popen:
    """`python -m runner ARGS` started in the background, as cli() runs it."""
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cli.cwd, env=cli.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for c in found for d in descendants(c)]


def xla_compute_threads(pid: int) -> int:
    """How many threads of XLA's CPU compute pool (named tf_XLAEigen) a process has."""
    names = collections.Counter()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:  # the thread ended
            continue
    return names["tf_XLAEigen"]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_unknown_launcher_is_one_line_naming_the_presets(cli):
    result = cli("-m", "hydra/launcher=nonexistent", "trainer.seed=0,1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    valid = result.stderr.split("valid: ")[1].strip().split(", ")
    assert {"parallel", "slurm", "slurm_local"} <= set(valid)
    assert not (cli.cwd / "outputs").exists()


# A small net on a few examples: these tests are of processes and signals, not of training.
TINY = ("model.depth=1", "model.width=8", "dataset.train_subset=64", "hydra.callbacks.report.plots=false")


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory, tfds_dir) -> tuple[subprocess.CompletedProcess, dict[int, int], list[Path]]:
    """A two-job hydra/launcher=parallel sweep (activation=relu,elu, two epochs each) started in the background,
    each worker process held (SIGSTOP) once seen computing until the other is seen too: the sweep as it ended, each
    worker's XLA compute threads by pid, and the run dirs. The labels' test and the threads' test read it."""
    cli = Runner(tmp_path_factory.mktemp("parallel"), tfds_dir)
    process = popen(cli, "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "activation=relu,elu",
                    "trainer.epochs=2", *TINY, "hydra.sweep.dir=outputs/sw")
    seen: dict[int, int] = {}

    def both_workers_computing():
        # A worker seen computing is held (SIGSTOP) until the other is seen too: the first cannot finish and take
        # the second job, and neither can end before it is counted, however the machine's load times them.
        for pid in descendants(process.pid):
            if pid not in seen and (threads := xla_compute_threads(pid)):
                seen[pid] = threads
                os.kill(pid, signal.SIGSTOP)
        return len(seen) == 2

    try:
        wait_for(both_workers_computing, 240, "two worker processes running XLA")
    finally:
        for pid in seen:
            os.kill(pid, signal.SIGCONT)
        out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), seen, cli.run_dirs()


@pytest.mark.xdist_group("parallel_sweep")
def test_parallel_runs_each_job_in_a_process_whose_xla_threads_are_capped(parallel_sweep):
    import joblib

    done, seen, run_dirs = parallel_sweep
    assert done.returncode == 0, done.stderr
    # Two processes, each with cores // 2 compute threads (XLA's default is one per core).
    assert sorted(seen.values()) == [max(joblib.cpu_count() // 2, 1)] * 2
    assert [read_summary(d)["status"] for d in run_dirs] == ["completed", "completed"]


@pytest.mark.xdist_group("parallel_sweep")
def test_each_parallel_jobs_lines_start_with_its_number_and_overrides(parallel_sweep):
    """The jobs of a parallel sweep share the terminal: each of their lines starts with its job's label
    (runner/console.py: job_label), so interleaved lines still say whose they are."""
    done, _, _ = parallel_sweep
    assert done.returncode == 0, done.stderr
    labelled = {}
    for line in done.stdout.splitlines():
        if match := re.match(r"\[#(\d) (activation=\w+),[^\]]*\] (.*)", line):  # the overrides cut to the label's width
            labelled.setdefault((match[1], match[2]), []).append(match[3])
    assert set(labelled) == {("0", "activation=relu"), ("1", "activation=elu")}, done.stdout
    for lines in labelled.values():  # each job's own epochs and results, under its own label
        assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
        assert any(line.startswith("results in ") for line in lines)
    assert not [line for line in done.stdout.splitlines() if line.startswith("epoch ")]  # none unlabelled


def test_submitit_local_runs_a_two_job_sweep_each_job_in_its_own_process(cli):
    result = cli("-m", "hydra/launcher=slurm_local", "trainer.seed=0,1", "trainer.epochs=1", *TINY)
    assert result.returncode == 0, result.stderr
    run_dirs = cli.run_dirs()
    assert [read_summary(d)["status"] for d in run_dirs] == ["completed"] * 2
    assert {read_summary(d)["seed"] for d in run_dirs} == {0, 1}
    [sweep_dir] = {d.parent for d in run_dirs}
    assert len([p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]) == 2  # one submitit job each
    assert (sweep_dir / "report" / "report.md").exists()


def signal_one_training_job(cli, signum: int, epochs: int) -> subprocess.CompletedProcess:
    """A one-job slurm_local sweep whose job gets `signum` once it has trained three epochs; as it ended."""
    process = popen(cli, "-m", "hydra/launcher=slurm_local", f"trainer.epochs={epochs}", *TINY)

    def training_job():
        metrics = list((cli.cwd / "outputs").rglob("metrics.jsonl"))
        if not metrics or len(metrics[0].read_text().splitlines()) < 3:
            return None
        [controller] = [p for p in metrics[0].parent.parent.glob(".submitit/*") if p.name.isdigit()]
        return children(int(controller.name))  # the job's process, started by submitit's controller

    try:
        [job] = wait_for(training_job, 240, "the job's third epoch")
        os.kill(job, signum)
    finally:
        out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_pre_empted_job_saves_its_checkpoint_and_is_requeued_to_resume_in_its_own_dir(cli):
    # SIGUSR2: what submitit's local controller sends before a timeout, and SLURM at a time limit or pre-emption
    # (submitit's LocalJob._interrupt sends it the same way). 600 epochs of 2 steps: seconds of training after the
    # third epoch, in which the signal arrives (measured ~15 ms an epoch at load 5), and ~2 s of CPU resumed.
    epochs = 600
    result = signal_one_training_job(cli, signal.SIGUSR2, epochs)
    assert result.returncode == 0, result.stderr
    [run_dir] = cli.run_dirs()  # the same dir, not a second one
    log = "".join(p.read_text() for p in run_dir.parent.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log
    stopped_at = int(log.split("resumed from the checkpoint of epoch ")[1].split()[0])
    assert 3 <= stopped_at < epochs
    assert "trainer.resume=true" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == epochs
    assert [m["epoch"] for m in read_metrics(run_dir)] == list(range(1, epochs + 1))  # each epoch once


def test_a_job_stopped_by_sigterm_saves_its_checkpoint_and_its_submission_resumes_it(cli):
    # SIGTERM (scancel, or a pre-emption on a cluster that sends no user signal) stops the job, which submitit
    # does not requeue; SLURM may (PreemptMode=REQUEUE): it reruns the job's submission, rewritten to resume.
    from submitit.core.utils import DelayedSubmission

    result = signal_one_training_job(cli, signal.SIGTERM, epochs=5000)  # stopped at the third: only its length
    assert result.returncode != 0  # the sweep's process reports the job that stopped
    [run_dir] = cli.run_dirs()
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and (run_dir / "checkpoints" / str(summary["epochs"])).is_dir()
    [submission] = run_dir.parent.glob(".submitit/*/*_submitted.pkl")
    overrides = DelayedSubmission.load(submission).args[0]
    assert "trainer.resume=true" in overrides
    assert f"hydra.sweep.subdir='{run_dir.name}'" in overrides
    assert f"hydra.sweep.dir='{run_dir.parent}'" in overrides
