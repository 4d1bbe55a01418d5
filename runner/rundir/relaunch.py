"""What a re-launched run does with what its dir already holds.

`trainer.resume=true` continues one run (`hydra.run.dir=DIR`) or re-launches a whole sweep into its sweep dir
(`-m ... hydra.sweep.dir=DIR`). Each job's dir says what is left to do (`plan`):

- summary.json says the run ended for good (`completed` with all its epochs, `early_stopped`, `diverged`):
  nothing; the job is skipped with one line and reports its result as it stands;
- a checkpoint of a run that did not end (interrupted, killed): continue from it;
- a failed job, or one stopped before its first checkpoint: run again from the start, after taking away what
  the earlier attempt wrote there (the failed summary's `written`, else the names a run writes,
  runner/rundir/claim.py RUN_OUTPUTS); whatever else is there stays;
- a job new to the sweep: run.

A checkpoint can also be of a run early stopping had already ended (the signal that interrupted it came in the
epoch that stopped it): restoring it raises `NothingToTrain`. Nothing here imports jax.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.rundir.claim import RUN_OUTPUTS, has_checkpoint, holds_run
from runner.rundir.records import METRICS_FILE, SUMMARY_FILE, leave_out, read_metrics
from runner.rundir.records import best_val_accuracy as best_of
from runner.rundir.records import read_summary as read_summary_file

FINAL = ("completed", "early_stopped", "diverged")  # statuses after which training on would change nothing


class NothingToTrain(Exception):
    """A resumed run's checkpoint is of a run that had already ended: `skipped (STATUS): why`, one line."""

    def __init__(self, status: str, why: str):
        super().__init__(f"skipped ({status}): {why}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a job does with its dir: `skip`, `resume` (from its checkpoint), `rerun` (afresh, once the runner's
    files of the earlier attempt are taken away) or `run` (a new job)."""

    action: str
    line: str | None  # what to tell the user; None for a job that simply runs for the first time
    best_val_accuracy: float | None = None  # a skipped job's result, as its summary.json has it
    clear: tuple[str, ...] = ()  # what a re-run removes first: the entries the earlier attempt wrote


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of a run dir; {} when there is none, or none the runner wrote (runner/rundir/records.py says what is
    wrong with it): the job then goes as a job whose run stopped before writing one."""
    try:
        return read_summary_file(Path(run_dir) / SUMMARY_FILE)
    except UserError:
        return {}


def finished(summary: dict[str, Any], epochs: int) -> bool:
    """Whether a run with this summary has nothing left to train when it is configured for `epochs` epochs
    (a completed run continues when `epochs` was raised)."""
    status = summary.get("status")
    return status in FINAL and not (status == "completed" and (summary.get("epochs") or 0) < epochs)


def plan(run_dir: Path, epochs: int) -> Plan:
    """What the job whose dir is `run_dir`, configured for `epochs` epochs, does now."""
    summary = read_summary(run_dir)
    status = summary.get("status")
    if finished(summary, epochs):
        return Plan("skip", f"skipped ({status}): {_ended(summary)}; nothing to train in {run_dir}",
                    summary.get("best_val_accuracy"))
    if status != "failed" and has_checkpoint(run_dir):
        return Plan("resume", f"resuming ({status or 'no summary'}): {run_dir}")
    if status == "failed":
        written = summary.get("written")
        return Plan("rerun", f"re-running afresh (failed: {summary.get('reason', 'no reason recorded')}): {run_dir}",
                    clear=(*(written if isinstance(written, list) else RUN_OUTPUTS), "summary.json"))
    if holds_run(run_dir):
        return Plan("rerun", f"re-running afresh (stopped before its first checkpoint): {run_dir}", clear=RUN_OUTPUTS)
    return Plan("run", None)


def _ended(summary: dict[str, Any]) -> str:
    status, epochs = summary.get("status"), summary.get("epochs")
    if status == "early_stopped":
        return f"early stopping ended the run at epoch {epochs}"
    if status == "diverged":
        return f"the run diverged at step {summary.get('diverged_at_step')}, so training on would diverge again"
    return f"all {epochs} epochs trained"


def best_val_accuracy(run_dir: Path) -> float | None:
    """The run's best validation accuracy so far: its summary's, else the best of metrics.jsonl."""
    summary = read_summary(run_dir)
    if summary.get("best_val_accuracy") is not None:
        return summary["best_val_accuracy"]
    return best_of(read_metrics(Path(run_dir) / METRICS_FILE, on_bad_line=leave_out))
