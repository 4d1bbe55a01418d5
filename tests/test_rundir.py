"""The run dir claim: what existed before an invocation is never removed or left changed, and one
process at a time holds a dir."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from runner.errors import UserError
from runner.rundir.claim import LOCK_NAME, RunDirClaim, holds_run, note_created, written_names
from runner.rundir.outputs import append_jsonl, write_atomic
from tests.conftest import snapshot


def write_run_files(run_dir) -> tuple:
    """What a run writes, through the runner's own writers (which note what they create); returns what Hydra
    wrote for the job, as `undo` is told it."""
    (run_dir / ".hydra").mkdir(exist_ok=True)  # Hydra's own write
    (run_dir / ".hydra" / "config.yaml").write_text("new: config\n")
    append_jsonl(run_dir / "metrics.jsonl", {"epoch": 1})
    write_atomic(run_dir / "members" / "seed_1" / "summary.json", "{}")
    note_created(run_dir / "checkpoints" / "1")
    (run_dir / "checkpoints" / "1").mkdir(parents=True)
    return (run_dir / ".hydra",)


def test_undo_of_a_new_dir_removes_it_and_the_parents_it_created(tmp_path):
    (tmp_path / "other").mkdir()
    before = snapshot(tmp_path)
    claim = RunDirClaim(tmp_path / "outputs" / "day" / "run", "hydra.run.dir")
    claim.lock()
    claim.undo(write_run_files(claim.path))
    assert snapshot(tmp_path) == before


def test_undo_keeps_a_parent_that_another_run_wrote_into_meanwhile(tmp_path):
    claim = RunDirClaim(tmp_path / "outputs" / "day" / "run", "hydra.run.dir")
    claim.lock()
    (tmp_path / "outputs" / "day" / "other_run").mkdir()
    claim.undo()
    assert sorted(p.name for p in (tmp_path / "outputs" / "day").iterdir()) == ["other_run"]


def test_undo_of_an_existing_dir_leaves_it_byte_identical(tmp_path):
    keep = tmp_path / "keep"
    (keep / ".hydra").mkdir(parents=True)
    (keep / "notes.txt").write_text("notes\n")
    (keep / ".hydra" / "config.yaml").write_text("old: config\n")
    before = snapshot(tmp_path)
    claim = RunDirClaim(keep, "hydra.run.dir")
    claim.lock()
    made = write_run_files(keep)
    (keep / ".hydra" / "hydra.yaml").write_text("hydra: new\n")
    claim.undo(made)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("existed", [True, False])
def test_undo_keeps_a_file_the_user_saved_in_the_dir_while_the_run_went_on(tmp_path, existed):
    run_dir = tmp_path / "run"
    if existed:
        run_dir.mkdir()
    claim = RunDirClaim(run_dir, "hydra.run.dir")
    claim.lock()
    made = write_run_files(run_dir)
    (run_dir / "notes.txt").write_text("the user's\n")  # not through the runner: not in its manifest
    (run_dir / "members" / "mine.txt").write_text("the user's too\n")
    claim.undo(made)
    assert snapshot(run_dir) == {"notes.txt": b"the user's\n"}


def test_what_a_job_wrote_is_what_the_runner_created_not_what_the_dir_gained(tmp_path):
    claim = RunDirClaim(tmp_path, "hydra.sweep.subdir")
    (tmp_path / "metrics.jsonl").write_text("")  # from an earlier attempt: appended to, not created
    write_run_files(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's\n")
    assert written_names(claim.path) == ["checkpoints", "members"]


def test_a_second_claim_on_a_locked_dir_is_refused_naming_the_holder(tmp_path):
    first = RunDirClaim(tmp_path / "run", "hydra.run.dir")
    first.lock()
    second = RunDirClaim(tmp_path / "run", "hydra.run.dir")
    with pytest.raises(UserError, match="in use by another runner process"):
        second.lock()
    first.release()
    second.lock()
    second.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_killed_holder_leaves_the_dir_unlocked(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from runner.rundir.claim import RunDirClaim; "
        f"c = RunDirClaim({str(run_dir)!r}, 'hydra.run.dir'); c.lock(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError):
        RunDirClaim(run_dir, "hydra.run.dir").lock()
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    claim = RunDirClaim(run_dir, "hydra.run.dir")
    claim.lock()  # the kernel dropped the dead process's lock, though its lock file is still there
    claim.release()


@pytest.mark.parametrize("make", ["file", "file_parent"])
def test_a_dir_that_cannot_be_made_is_one_user_error(tmp_path, make):
    (tmp_path / "f").write_text("x")
    path = tmp_path / "f" if make == "file" else tmp_path / "f" / "run"
    with pytest.raises(UserError, match="is a file"):
        RunDirClaim(path, "hydra.run.dir")


def test_holds_run_names_the_file_that_shows_an_earlier_run(tmp_path):
    assert holds_run(tmp_path) is None
    (tmp_path / "notes.txt").write_text("mine")
    assert holds_run(tmp_path) is None
    (tmp_path / "summary.json").write_text("{}")
    assert holds_run(tmp_path) == "summary.json"
