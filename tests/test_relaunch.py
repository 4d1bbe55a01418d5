"""Sweeps that resume, piece by piece: a job's dir is named by what the job is; what a re-launched job does
follows from what its dir holds; a re-run takes away only the runner's own files; a run that early stopping
ended stays ended."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from runner.rundir.claim import (JOB_NAME_LIMIT, LOCK_NAME, RUN_OUTPUTS, RunDirClaim, clear_run_outputs, job_dir_name,
                                 register_job_dir_resolver)
from runner.rundir.relaunch import Plan, best_val_accuracy, plan
from runner.training.handlers import EarlyStopping, EpochEnd
from tests.conftest import compose_config, snapshot


def sweep_subdir(*overrides: str) -> str:
    """The job dir name Hydra gives a sweep job with these overrides (conf/config.yaml's hydra.sweep.subdir)."""
    register_job_dir_resolver()
    return str(OmegaConf.select(compose_config(*overrides, hydra=True), "hydra.sweep.subdir"))


# ---- a job's dir name ----

def test_a_job_dir_is_named_by_its_overrides_sorted_whatever_order_they_were_typed_in():
    overrides = ["trainer.seed=1", "activation=elu", "trainer.epochs=3"]
    assert sweep_subdir(*overrides) == ",".join(sorted(overrides)) == "activation=elu,trainer.epochs=3,trainer.seed=1"
    assert sweep_subdir(*reversed(overrides)) == sweep_subdir(*overrides)


def test_resume_and_checkpoint_settings_do_not_change_a_jobs_name():
    plain = sweep_subdir("activation=elu", "trainer.epochs=3")
    assert sweep_subdir("trainer.resume=true", "activation=elu", "trainer.checkpoint_every=1", "trainer.epochs=3",
                        "trainer.keep_checkpoints=5", "hydra.sweep.dir=outputs/s") == plain


def test_a_job_without_overrides_is_named_defaults():
    assert sweep_subdir() == "defaults"


@pytest.mark.parametrize("override_dirname, twin", [
    ("dataset.path=/tmp/a b.npz,dataset=npz", "dataset.path=_tmp_a_b.npz,dataset=npz"),
    ("activation=élu", "activation=_lu"),
])
def test_a_name_with_characters_unsafe_in_a_dir_name_is_made_safe_and_gets_a_hash(override_dirname, twin):
    name = job_dir_name(override_dirname)
    assert "/" not in name and " " not in name and name.isascii()
    stem, digest = name.rsplit("-", 1)
    assert stem == twin and len(digest) == 8 and int(digest, 16) >= 0
    assert job_dir_name(twin) == twin != name, "a job whose name is the safe spelling of another's keeps apart"


def test_a_long_name_is_cut_to_the_limit_and_two_that_differ_past_the_cut_stay_apart():
    base = f"model.widths=[{'100,' * 60}100]"
    a, b = job_dir_name(base + ",trainer.seed=0"), job_dir_name(base + ",trainer.seed=1")
    assert len(a) == len(b) == JOB_NAME_LIMIT
    assert a != b and a[:JOB_NAME_LIMIT - 9] == b[:JOB_NAME_LIMIT - 9]


def test_a_short_safe_name_is_the_overrides_unchanged():
    assert job_dir_name("activation=relu,regularizer=[l2,dropout]") == "activation=relu,regularizer=[l2,dropout]"


# ---- what a re-launched job does ----

def job_dir(tmp_path, summary=None, checkpoint=False, metrics=0):
    run_dir = tmp_path / "job"
    (run_dir / ".hydra").mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if checkpoint:  # an orbax-finalized checkpoint, as rundir.has_checkpoint recognizes one
        (run_dir / "checkpoints" / "2").mkdir(parents=True)
        (run_dir / "checkpoints" / "2" / "_CHECKPOINT_METADATA").write_text("{}")
    for epoch in range(1, metrics + 1):
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "val_accuracy": epoch / 10}) + "\n")
    return run_dir


@pytest.mark.parametrize("summary, checkpoint, epochs, action", [
    ({"status": "completed", "epochs": 3, "best_val_accuracy": 0.9}, True, 3, "skip"),
    ({"status": "early_stopped", "epochs": 2, "best_val_accuracy": 0.9}, True, 3, "skip"),
    ({"status": "early_stopped", "epochs": 2, "best_val_accuracy": 0.9}, True, 10, "skip"),  # more epochs: still ended
    ({"status": "diverged", "epochs": 1, "diverged_at_step": 7, "best_val_accuracy": None}, False, 3, "skip"),
    ({"status": "completed", "epochs": 3}, True, 5, "resume"),  # epochs raised: the run continues
    ({"status": "interrupted", "epochs": 2}, True, 3, "resume"),
    (None, True, 3, "resume"),  # killed before its summary: the checkpoint is what it left
    ({"status": "failed", "reason": "boom"}, True, 3, "rerun"),  # a failed job runs again from the start
    ({"status": "failed", "reason": "boom"}, False, 3, "rerun"),
])
def test_a_relaunched_job_skips_a_final_run_continues_an_interrupted_one_and_reruns_the_rest(
        tmp_path, summary, checkpoint, epochs, action):
    run_dir = job_dir(tmp_path, summary, checkpoint)
    decided = plan(run_dir, epochs)
    assert decided.action == action
    if action == "skip":
        assert decided.line.startswith(f"skipped ({summary['status']}): ") and "nothing to train" in decided.line
        assert decided.best_val_accuracy == summary["best_val_accuracy"]


def test_a_job_new_to_the_sweep_runs_without_a_line(tmp_path):
    assert plan(tmp_path / "never_ran", 3) == Plan("run", None)
    assert plan(job_dir(tmp_path), 3) == Plan("run", None)  # Hydra made its dir and saved its config: still new


def test_a_job_killed_before_its_first_checkpoint_runs_again_from_the_start(tmp_path):
    assert plan(job_dir(tmp_path, None, metrics=2), 3).action == "rerun"


def test_best_val_accuracy_of_a_run_without_summary_is_the_best_epochs(tmp_path):
    assert best_val_accuracy(job_dir(tmp_path, None, metrics=3)) == pytest.approx(0.3)


def test_a_failed_job_is_rerun_after_removing_what_it_wrote_or_without_that_record_what_runs_write(tmp_path):
    listed = job_dir(tmp_path / "a", {"status": "failed", "reason": "boom", "written": ["metrics.jsonl", "x.png"]})
    assert plan(listed, 3).clear == ("metrics.jsonl", "x.png", "summary.json")
    unlisted = job_dir(tmp_path / "b", {"status": "failed", "reason": "boom"})  # a summary from before `written`
    assert plan(unlisted, 3).clear == (*RUN_OUTPUTS, "summary.json")
    assert plan(job_dir(tmp_path / "c", None, metrics=1), 3).clear == RUN_OUTPUTS


def test_a_hand_edited_list_of_what_was_written_cannot_reach_outside_the_dir_or_hydras_files(tmp_path):
    run_dir = job_dir(tmp_path, metrics=1)
    (tmp_path / "outside.txt").write_text("keep\n")
    kept = snapshot(tmp_path)
    assert clear_run_outputs(run_dir, ["../outside.txt", "..", ".", ".hydra", "", LOCK_NAME, "missing"]) == []
    assert snapshot(tmp_path) == kept


def test_clearing_a_failed_run_removes_the_runners_files_and_keeps_everything_else(tmp_path):
    run_dir = job_dir(tmp_path, {"status": "failed"}, checkpoint=True, metrics=2)
    for name in RUN_OUTPUTS:
        target = run_dir / name
        if not target.exists():
            target.mkdir() if name in ("tensorboard",) else target.write_text("written by the run\n")
    (run_dir / "notes.txt").write_text("the user's\n")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "mine.png").write_bytes(b"png")
    (run_dir / ".hydra" / "config.yaml").write_text("saved: config\n")
    kept = {k: v for k, v in snapshot(run_dir).items() if k.split("/")[0] not in RUN_OUTPUTS}
    assert sorted(clear_run_outputs(run_dir)) == sorted(RUN_OUTPUTS)
    assert snapshot(run_dir) == kept


# ---- the lock a sweep job takes on its dir ----

def test_a_job_waits_for_a_job_with_the_same_overrides_to_finish_before_using_its_dir(tmp_path):
    first = RunDirClaim(tmp_path / "job", "hydra.sweep.subdir")
    first.lock()
    got_it = []
    second = RunDirClaim(tmp_path / "job", "hydra.sweep.subdir")
    waiter = threading.Thread(target=lambda: (second.lock(wait=True), got_it.append(time.monotonic())))
    waiter.start()
    time.sleep(0.5)
    assert not got_it, "the second job must wait"
    released = time.monotonic()
    first.release()  # removes the lock file: the waiter must take the new one, not the removed one
    waiter.join(timeout=10)
    assert got_it and got_it[0] >= released
    third = RunDirClaim(tmp_path / "job", "hydra.sweep.subdir")
    with pytest.raises(Exception, match="in use"):
        third.lock()
    second.release()
    assert not (tmp_path / "job" / LOCK_NAME).exists()


# ---- early stopping, resumed ----

def epoch_end(epoch, value):
    state = SimpleNamespace(params={"w": epoch}, batch_stats={})
    return EpochEnd(epoch, 0, state, {"val_loss": value}, {}, last=False)


def test_a_stopper_restored_at_the_epoch_it_stopped_says_the_run_has_ended():
    """The bug this prevents: the loop resumed at the epoch after the stop and trained it before asking."""
    stopper, stop_at = EarlyStopping(patience=2, monitor="val_loss"), None
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.85, 0.7], 1):
        end = epoch_end(epoch, value)
        stopper.on_epoch_end(end)
        assert stopper.stopped(epoch) == (end.stop == "early_stopped")
        if end.stop:
            stop_at = epoch
            break
    assert stop_at == 4 and stopper.best_epoch == 2
    restored = EarlyStopping(patience=2, monitor="val_loss")
    restored.restore(stopper.meta(), stopper.best_weights)  # what a checkpoint of epoch 4 holds
    assert restored.stopped(4)
    restored_before = EarlyStopping(patience=2, monitor="val_loss")
    restored_before.restore({"best": -0.8, "best_epoch": 2}, None)  # a checkpoint of epoch 3: one epoch to go
    assert not restored_before.stopped(3)


def test_a_stopper_with_patience_0_never_says_the_run_has_ended():
    stopper = EarlyStopping(patience=0, monitor="val_loss")
    stopper.restore({"best": -1.0, "best_epoch": 1}, None)
    assert not stopper.stopped(100)
