"""What the runner's launchers add (runner/scale/launchers.py), without launching: the parallel launcher's thread budget
and the environment its workers start with; the overrides a requeued submitit job resumes with."""

from __future__ import annotations

import os

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from runner.errors import UserError
from runner.scale.launchers import RESUME, THREAD_VARS, ThreadCapped, environ, quoted, resumed_overrides, thread_budget


@pytest.mark.parametrize("n_jobs, threads_per_job, cores, jobs, expected", [
    (-1, None, 2, 4, (2, 1)),     # one process per core, one thread each
    (-1, None, 16, 100, (16, 1)),
    (-1, None, 16, 4, (4, 4)),    # no more processes than jobs: the cores shared among those that run
    (2, None, 16, 4, (2, 8)),     # the cores shared evenly
    (3, None, 16, 4, (3, 5)),     # rounded down: 3 x 5 <= 16
    (-2, None, 16, 100, (15, 1)), # joblib's -2: all cores but one
    (-2, None, 1, 4, (1, 1)),     # never fewer than one process
    (4, None, 2, 4, (4, 1)),      # more processes than cores: one thread each, at least
    (2, 3, 16, 4, (2, 3)),        # asked for: taken as given
])
def test_the_thread_budget_shares_the_cores(n_jobs, threads_per_job, cores, jobs, expected):
    processes, threads = thread_budget(n_jobs, threads_per_job, cores, jobs)
    assert (processes, threads) == expected
    if threads_per_job is None and processes <= cores:
        assert processes * threads <= cores


@pytest.mark.parametrize("n_jobs, threads_per_job, key", [
    (0, None, "hydra.launcher.n_jobs"), ("2", None, "hydra.launcher.n_jobs"),
    (2, 0, "hydra.launcher.threads_per_job"), (2, 1.5, "hydra.launcher.threads_per_job"),
])
def test_a_budget_without_meaning_is_one_line_naming_the_key(n_jobs, threads_per_job, key):
    with pytest.raises(UserError) as refused:
        thread_budget(n_jobs, threads_per_job, 8, jobs=4)
    assert str(refused.value).startswith(f"{key}: ") and "\n" not in str(refused.value)


def test_environ_sets_values_and_restores_what_was_there(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("PJRT_NPROC", raising=False)
    with environ({"OMP_NUM_THREADS": "1", "PJRT_NPROC": "1"}):
        assert os.environ["OMP_NUM_THREADS"] == os.environ["PJRT_NPROC"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "7" and "PJRT_NPROC" not in os.environ


class _RecordingJoblib:
    """Stands in for hydra-joblib-launcher's JoblibLauncher: records what joblib would start its workers with."""

    def __init__(self, **kwargs):
        self.joblib = kwargs

    def launch(self, job_overrides, initial_job_idx):
        return dict(self.joblib), {var: os.environ.get(var) for var in THREAD_VARS}


class _Parallel(ThreadCapped, _RecordingJoblib):
    pass


def test_workers_start_with_every_thread_variable_at_the_budget_and_the_sweep_keeps_its_own(monkeypatch):
    import joblib

    monkeypatch.delenv("PJRT_NPROC", raising=False)
    cores = joblib.cpu_count()
    kwargs, env = _Parallel(n_jobs=2, threads_per_job=None, prefer="processes").launch([["a=1"], ["a=2"]], 0)
    assert kwargs == {"n_jobs": 2, "prefer": "processes"}  # threads_per_job is not joblib's
    assert env == {var: str(max(cores // 2, 1)) for var in THREAD_VARS}
    assert "PJRT_NPROC" not in os.environ


@pytest.mark.parametrize("subdir", ["0_trainer.seed=1", "3_activation=relu,optimizer.learning_rate=0.01",
                                    "1_name='quoted',path=C:\\dir", "2_a\\'b,end\\"])
def test_a_requeued_job_keeps_its_dir_exactly(subdir):
    overrides = resumed_overrides(["activation=relu", "trainer.seed=1"], "/runs/sweep", subdir, resume=True)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["hydra.sweep.subdir"] == subdir and parsed["hydra.sweep.dir"] == "/runs/sweep"
    assert parsed["activation"] == "relu" and parsed["trainer.seed"] == 1 and parsed["trainer.resume"] is True


def test_a_job_without_a_checkpoint_is_requeued_to_start_again_and_a_second_requeue_adds_nothing():
    first = resumed_overrides(["trainer.seed=1"], "/runs/sweep", "0_trainer.seed=1", resume=False)
    assert RESUME not in first
    again = resumed_overrides(resumed_overrides(first, "/runs/sweep", "0_trainer.seed=1", resume=True),
                              "/runs/sweep", "0_trainer.seed=1", resume=True)
    assert sorted(again) == sorted(["trainer.seed=1", f"hydra.sweep.dir={quoted('/runs/sweep')}",
                                    f"hydra.sweep.subdir={quoted('0_trainer.seed=1')}", RESUME])
