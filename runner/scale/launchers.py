"""What the runner's launchers add to Hydra's joblib and submitit launchers (conf/hydra/launcher/).

`ThreadCapped` (hydra/launcher=parallel) runs a sweep's jobs in parallel processes with each job's threads capped,
so that jobs x threads <= cores: XLA's CPU client sizes its compute thread pool from PJRT_NPROC (else the cores
it may run on), and OpenMP/BLAS libraries from their own variables. XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
and OMP_NUM_THREADS leave XLA's pool as it is. The variables are set in the sweep's process while joblib starts its
workers, which inherit them.

`ResumeOnRequeue` (hydra/launcher=slurm, slurm_local) makes a job that SLURM pre-empts or times out continue from
its checkpoint when submitit requeues it, in the same job dir, instead of starting over. submitit signals the job
with SIGUSR2 (SUBMITIT_PREEMPT_SIGNAL) and its handler calls the launcher's `checkpoint` at once, mid-epoch. Here
the signal is first handed to the runner's own SIGTERM handling (runner/training/interrupts.py): the run stops at the end
of the running chunk and saves its checkpoint; only then does submitit's handler requeue the job, with the
submission `checkpoint` returns: the same job, `trainer.resume=true`, its dir pinned. A job stopped by SIGTERM
(a pre-emption on a cluster without preempt_send_user_signal, or scancel) saves its checkpoint the same way, and
its submission is rewritten to resume, so a requeue by SLURM itself continues it too.

The plugin classes the conf files name are in hydra_plugins/runner_plugins: Hydra instantiates launchers and
sweepers only from classes defined in the hydra_plugins package.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from runner.errors import UserError
from runner.rundir.claim import has_checkpoint

# XLA's CPU client (PJRT_NPROC; NPROC in older jaxlibs), then the OpenMP and BLAS libraries numpy and scipy use.
THREAD_VARS = ("PJRT_NPROC", "NPROC", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RESUME = "trainer.resume=true"


def thread_budget(n_jobs: int, threads_per_job: int | None, cores: int, jobs: int) -> tuple[int, int]:
    """(processes, threads for each) of `jobs` jobs run in parallel on `cores` cores.

    n_jobs has joblib's meaning: a count, or -1 for one per core, -2 for all cores but one, ...; no more processes
    than jobs start. threads_per_job None shares the cores evenly among the processes (at least one thread each),
    so processes x threads <= cores.
    """
    if not isinstance(n_jobs, int) or n_jobs == 0:
        raise UserError(f"hydra.launcher.n_jobs: must be an integer other than 0 (-1: one job per core), got {n_jobs!r}")
    if threads_per_job is not None and (not isinstance(threads_per_job, int) or threads_per_job < 1):
        raise UserError(f"hydra.launcher.threads_per_job: must be null or an integer >= 1, got {threads_per_job!r}")
    processes = min(n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1), max(jobs, 1))
    return processes, threads_per_job or max(cores // processes, 1)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ThreadCapped:
    """Mixin for hydra-joblib-launcher's JoblibLauncher: n_jobs processes, each with `threads_per_job` threads."""

    joblib: dict[str, Any]  # the launcher's keyword arguments for joblib.Parallel

    def __init__(self, threads_per_job: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads_per_job = threads_per_job

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        import joblib  # counts the cores this process may use (affinity, cgroup quota)

        processes, threads = thread_budget(self.joblib.get("n_jobs", -1), self.threads_per_job, joblib.cpu_count(),
                                           jobs=len(job_overrides))
        self.joblib["n_jobs"] = processes
        with environ({var: str(threads) for var in THREAD_VARS}):
            return super().launch(job_overrides, initial_job_idx)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (a job dir name holds `=` and `,`). Hydra reads a backslash as an
    escape only before a quote or the closing quote, so only those backslashes are doubled."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + escaped.replace("'", "\\'") + "'"


def resumed_overrides(overrides: Sequence[str], sweep_dir: str, subdir: str, resume: bool) -> list[str]:
    """A requeued job's overrides: its own, with its dir pinned, and `trainer.resume=true` when it has a
    checkpoint to continue from (without one it starts again, in the same dir)."""
    pinned = ("hydra.sweep.dir", "hydra.sweep.subdir", "trainer.resume")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in pinned]
    return [*kept, f"hydra.sweep.dir={quoted(sweep_dir)}", f"hydra.sweep.subdir={quoted(subdir)}",
            *([RESUME] if resume else [])]


class ResumeOnRequeue:
    """Mixin for hydra-submitit-launcher's launchers: a pre-empted or timed-out job saves its checkpoint and is
    requeued to continue from it, in its own job dir."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> Any:
        # Runs in the job's process, after submitit has set its signal handlers.
        import submitit

        usr_signal = submitit.JobEnvironment._usr_sig()  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        requeue = signal.getsignal(usr_signal)  # submitit's: calls self.checkpoint, requeues, exits
        outside_training = signal.getsignal(signal.SIGTERM)  # submitit's (it logs and ignores SIGTERM)
        preempted = []

        def on_preemption(signum: int, frame: Any) -> None:
            preempted.append(signum)
            runner_handler = signal.getsignal(signal.SIGTERM)
            if callable(runner_handler) and runner_handler is not outside_training:
                runner_handler(signal.SIGTERM, frame)  # training: save at the chunk's end, then stop (Interrupted)
            elif callable(requeue):
                requeue(signum, frame)  # not training: nothing to save, requeue now

        signal.signal(usr_signal, on_preemption)
        args = (sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        try:
            return super().__call__(*args)
        except SystemExit:  # the runner stopped on the signal, its checkpoint saved (runner/__main__.py exits)
            if preempted and callable(requeue):
                requeue(preempted[0], None)  # exits: submitit requeues the job with self.checkpoint(*args)
            try:
                self._resume_on_requeue(args)
            except Exception as e:  # the job has stopped either way; say why a requeue would start it again
                print(f"warning: the job's submission still starts afresh if requeued: {type(e).__name__}: {e}",
                      file=sys.stderr)
            raise
        finally:
            signal.signal(usr_signal, requeue)

    def checkpoint(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                   singleton_state: dict) -> Any:
        """The submission a requeued job runs: resumes from the job dir's checkpoint (called by submitit)."""
        import submitit

        sweep_dir, subdir = self._job_dir(sweep_overrides, job_num, singleton_state)
        overrides = resumed_overrides(sweep_overrides, sweep_dir, subdir,
                                      resume=has_checkpoint(Path(sweep_dir) / subdir))
        return submitit.helpers.DelayedSubmission(self, overrides, job_dir_key, job_num, job_id, singleton_state)

    def _job_dir(self, sweep_overrides: list[str], job_num: int, singleton_state: dict) -> tuple[str, str]:
        """(sweep dir, job subdir) of this job, resolved as the launcher's __call__ and Hydra's run_job do."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.singleton import Singleton
        from omegaconf import OmegaConf, open_dict

        Singleton.set_state(singleton_state)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = job_num
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            return (str(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()),
                    str(OmegaConf.select(config, "hydra.sweep.subdir")))
        finally:
            HydraConfig.instance().cfg = previous

    def _resume_on_requeue(self, args: tuple) -> None:
        """Rewrite this job's submission to resume, so that a requeue by SLURM itself continues the run."""
        import submitit
        from submitit.core import utils

        paths = submitit.JobEnvironment().paths
        current = utils.DelayedSubmission.load(paths.submitted_pickle)
        resumed = self.checkpoint(*args)
        resumed.set_timeout(current._timeout_min, current._timeout_countdown)
        with utils.temporary_save_path(paths.submitted_pickle) as tmp:
            resumed.dump(tmp)
