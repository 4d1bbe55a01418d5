"""`python -m runner [overrides]`: the Hydra entry point.

Before Hydra creates anything, every job's config (each combination of a `-m` sweep) is composed and
checked without importing jax, and the output dir is claimed (runner/rundir/claim.py); a user error prints one
line on stderr and exits with code 2. Inside Hydra, a job that fails ends as status `failed` with its reason
in summary.json and the sweep goes on; a single run that fails on the user's mistake takes back what it
wrote and exits 2. A sweep job first looks at what its dir holds from an earlier launch of the same sweep
(runner/rundir/relaunch.py): a job that ended for good is skipped, an interrupted one continues, a failed one
runs again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.cli.preflight import Invocation, preflight
from runner.cli.relations import validate
from runner.config.compose import CONF_DIR, capped, register_schemas
from runner.config.safety import check_interpolations, check_override
from runner.console import Console, error
from runner.errors import UserError, first_line
from runner.rundir.claim import RunDirClaim, clear_run_outputs, register_job_dir_resolver, track, written_names
from runner.rundir import relaunch
from runner.rundir.outputs import write_json
from runner.rundir.records import read_summary
from runner.scale.distributed import process_index_from_env
from runner.training.interrupts import Interrupted
from runner.training.loggers import check_logger_packages
from runner.training.process import exit_promptly, prepare_training_process

register_schemas()
register_job_dir_resolver()  # hydra.sweep.subdir: a job's dir is named by its overrides
_invocation = Invocation([])  # what cli() checked and claimed; main() takes back a failed run's files


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; the return value (best validation accuracy, None if the job failed) is what
    Hydra sweepers optimize: Optuna records a trial that returns None as failed."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console()
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return train_job(cfg, run_dir, console, multirun=False)
    claim = RunDirClaim(run_dir, "hydra.sweep.subdir")
    claim.lock(wait=True)  # two jobs of a sweep with the same overrides share a dir: one after the other
    try:
        return sweep_job(cfg, run_dir, console)
    finally:
        claim.release()


def sweep_job(cfg: DictConfig, run_dir: Path, console: Console) -> float | None:
    """One job of a sweep, after what its dir holds from an earlier launch (runner/rundir/relaunch.py): skip a job
    that ended for good, continue one from its checkpoint, run any other afresh."""
    plan = relaunch.plan(run_dir, cfg.trainer.epochs)
    if plan.line:
        console.info(plan.line)
    if plan.action == "skip":
        return plan.best_val_accuracy
    if plan.action == "rerun":
        clear_run_outputs(run_dir, plan.clear)  # the failed attempt's files would be appended to; the user's stay
    cfg.trainer.resume = plan.action == "resume"
    track(run_dir)  # a failed job's summary lists what it wrote (what a re-run removes)
    return train_job(cfg, run_dir, console, multirun=True)


def train_job(cfg: DictConfig, run_dir: Path, console: Console, multirun: bool) -> float | None:
    """Train and evaluate; a failure ends the job as `failed` (a sweep goes on) or, in a single run that
    failed on the user's mistake, takes back what it wrote and exits 2."""
    try:
        check_job(cfg)  # again inside the job: a sweeper may sample values the pre-run check never saw
        cfg = capped(cfg)  # RUNNER_MAX_EPOCHS, a test aid (runner/config/compose.py)
        prepare_training_process()  # jax and tfds load only once the config is known good
        if cfg.trainer.replicas > 1:  # K seeds as one vmapped program, each member its own run dir
            from runner.cli.replicas import train_replicas as train
        else:
            from runner.cli.run import train_and_evaluate as train
        summary = train(cfg, run_dir, console)
    except relaunch.NothingToTrain as e:  # resumed from the checkpoint of a run that had ended
        console.info(str(e))
        return relaunch.best_val_accuracy(run_dir)
    except UserError as e:
        if not multirun:
            _take_back()
            error(str(e))
            sys.exit(2)
        return _failed(run_dir, str(e), console)
    except Interrupted as e:
        sys.exit(e.exit_code)  # in a sweep too: the user asked everything to stop
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing worth keeping was written
        if not multirun:
            _take_back()
        error("interrupted before training started; nothing was kept")
        sys.exit(130)
    except Exception as e:  # a bug, not the user's mistake: keep what was written, say where it broke
        if (cause := unwritable(e)) is not None and not multirun:  # the disk, not the runner: one line, and
            _record_failure(run_dir, cause, console)                 # what was written before stays
            error(f"{cause}; what the run wrote before is kept in {run_dir}")
            sys.exit(2)
        if cause is not None:
            return _failed(run_dir, cause, console)
        _failed(run_dir, f"{type(e).__name__}: {first_line(e)}", console)
        if not multirun:
            raise
        traceback.print_exc()
        return None
    console.results(summary)
    console.info(f"results in {run_dir}")
    return summary["best_val_accuracy"]


def check_job(cfg: DictConfig) -> None:
    """The checks preflight made, on the job Hydra composed: a sweeper's sampled values get them too."""
    task = list(HydraConfig.get().overrides.task)
    for override in task:
        check_override(override)
    check_interpolations(cfg, task)
    validate(cfg, sweep=HydraConfig.get().mode == RunMode.MULTIRUN)
    check_logger_packages(cfg)  # a sampled logger's tool, not installed: one line before the data loads


def _take_back() -> None:
    """A single run that failed on the user's mistake: remove what this invocation created (runner/rundir/claim.py)."""
    if _invocation.claim is None:
        return
    hydra = HydraConfig.get()
    made = [Path(hydra.runtime.output_dir) / hydra.output_subdir] if hydra.output_subdir else []
    made += [Path(h.filename) for h in hydra.job_logging.get("handlers", {}).values() if h.get("filename")]
    _invocation.claim.undo(tuple(made))


def unwritable(e: BaseException) -> str | None:
    """`cannot write PATH: No space left on device` when an OSError of the disk (full, read-only, not
    permitted, too large) caused `e`, however deep a library wrapped it; else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            return f"cannot write {e.filename or 'a file of the run'}: {e.strerror or os.strerror(e.errno)}"
        # C++ writers (orbax's tensorstore, tfds' array_record) raise their own types, the OS's words in the text
        text = str(e)
        if reason := next((os.strerror(code) for code in DISK_ERRORS if os.strerror(code) in text), None):
            path = _PATH_IN_TEXT.search(text)
            return f"cannot write {path[1] if path else 'a file of the run'}: {reason}"
        e = e.__cause__ or e.__context__
    return None


# what the file system says when a path cannot be written: full, read-only, not permitted, too large, or in the way
DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EEXIST,
               errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG)
_PATH_IN_TEXT = re.compile(r'(?:local file "|writing )(/[^";]+)')


def _failed(run_dir: Path, reason: str, console: Console) -> None:
    """Record a failed job in its summary.json and say so in one line."""
    _record_failure(run_dir, reason, console)
    console.warn(f"job failed: {reason} ({run_dir})")


def _record_failure(run_dir: Path, reason: str, console: Console) -> None:
    """A failed job's summary.json: anything it measured, the reason, and the entries it wrote (`written`);
    on a disk that takes no more, a warning instead."""
    summary_path = run_dir / "summary.json"
    try:
        summary = read_summary(summary_path) if summary_path.exists() else {}
    except UserError:  # a torn or hand-edited one: the failure is what it says now
        summary = {}
    summary.update(status="failed", reason=reason, written=written_names(run_dir))
    try:
        if process_index_from_env() == 0:  # of several processes, process 0 writes
            write_json(summary_path, summary)
    except OSError as e:
        console.warn(f"could not record the failure in {summary_path}: {e.strerror}")


def failed_jobs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep whose summary.json says `failed`."""
    failed = []
    for summary in sorted(sweep_dir.rglob("summary.json")):
        try:
            if read_summary(summary).get("status") == "failed":
                failed.append(summary.parent)
        except UserError:
            continue
    return failed


def cli() -> None:
    """`python -m runner` and the `runner` command: the run, then a prompt exit (runner/training/process.py)."""
    try:
        run_command_line()
    except SystemExit as e:
        exit_promptly(e.code)
    exit_promptly(0)


def run_command_line() -> None:
    """Check the whole command line and claim its output dir, then hand it to Hydra."""
    global _invocation
    try:
        _invocation = preflight(sys.argv[1:])
        if _invocation.finished is not None:  # trainer.resume=true on a run that ended for good: nothing to do
            Console().info(_invocation.finished)
            return
        if _invocation.claim is not None:
            _invocation.claim.lock()
        if _invocation.restart is not None:
            line, earlier = _invocation.restart
            Console().info(line)
            clear_run_outputs(_invocation.claim.path, earlier)
    except UserError as e:
        error(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        error("interrupted before anything was written")
        sys.exit(130)
    sys.argv = [sys.argv[0], *_invocation.argv]
    try:
        with known_hydra_mode(_invocation.hydra_mode):
            main()
    finally:
        if _invocation.claim is not None:
            _invocation.claim.release()
    if _invocation.multirun and _invocation.claim is not None:
        failed = failed_jobs(_invocation.claim.path)
        if failed:
            error(f"{len(failed)} job(s) failed, each with its reason in summary.json and the report: "
                  + ", ".join(p.name for p in failed))
            sys.exit(1)


@contextlib.contextmanager
def known_hydra_mode(mode: tuple) -> Iterator[None]:
    """Hydra's `get_mode` with its answer `mode` (a 1-tuple) given: Hydra composes the whole config once more only
    to read hydra.mode (0.12 s of each command), which preflight's composition has read already. `()`: Hydra's own."""
    from hydra._internal.hydra import Hydra

    if not mode:
        yield
        return
    composing = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: mode[0]
    try:
        yield
    finally:
        Hydra.get_mode = composing


if __name__ == "__main__":
    cli()
