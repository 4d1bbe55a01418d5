"""Interrupted runs: SIGTERM saves and exits; resume continues bit for bit; bad checkpoints fall back."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import read_metrics, read_summary, snapshot, trained_run

# A small net on a few examples (2 steps an epoch): these tests are of checkpoints, not of training.
TINY = ("model.depth=1", "model.width=8", "dataset.train_subset=64")
# Long enough to be caught mid-training, cheap enough for the suite: 12 epochs, each checkpointed (~0.4 s an
# epoch at load 5, 50 ms unloaded: 9 epochs after the third for the signal to land), with early stopping's state
# to carry.
SLOW_RUN = (*TINY, "trainer.epochs=12", "trainer.checkpoint_every=1", "trainer.early_stopping.patience=50")
# One finished run, each of its 3 epochs checkpointed and kept, which the tests of a resume that falls back or is
# refused each copy: one training for the three of them.
FINISHED = (*TINY, "trainer.epochs=3", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=3")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir):
    return trained_run(tmp_path_factory, tfds_dir, "finished", *FINISHED)


def _copy_run(run_dir, cli):
    """The finished run, as the test's own outputs/r."""
    return shutil.copytree(run_dir, cli.cwd / "outputs" / "r", ignore=shutil.ignore_patterns(".runner.lock"))


def _without_times(records):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]


def test_sigterm_then_resume_with_only_the_run_dir_equals_an_uninterrupted_run(cli):
    # checkpointed only at its end: where a run saves does not change what it trains (hydra.job's exclude_keys)
    reference = cli(*SLOW_RUN, "trainer.checkpoint_every=0", "hydra.run.dir=outputs/reference")
    assert reference.returncode == 0, reference.stderr

    run_dir = cli.cwd / "outputs" / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "runner", *SLOW_RUN, f"hydra.run.dir={run_dir}"],
                               cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted"
    stopped_at = summary["epochs"]
    assert 3 <= stopped_at < 12, "the signal should land mid-training"
    assert (run_dir / "checkpoints" / str(stopped_at)).is_dir()

    # As the interrupt message says: the run's own saved config is the source, no overrides repeated.
    assert f"trainer.resume=true hydra.run.dir={run_dir}" in stderr
    resumed = cli("trainer.resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of epoch {stopped_at}" in resumed.stdout
    assert _without_times(read_metrics(run_dir)) == _without_times(read_metrics(cli.cwd / "outputs/reference"))
    final, expected = read_summary(run_dir), read_summary(cli.cwd / "outputs/reference")
    assert final["status"] == "completed"
    for key in ("test_loss", "test_accuracy", "best_val_accuracy", "steps", "epochs"):
        assert final[key] == expected[key], key


@pytest.mark.xdist_group("resume_finished")  # one worker trains the module's finished run once
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(cli, finished):
    checkpoints = _copy_run(finished, cli) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["1", "2", "3"]
    for f in (checkpoints / "3" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    result = cli("trainer.epochs=4", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=3",
                 "hydra.run.dir=outputs/r", "trainer.resume=true")
    assert result.returncode == 0, result.stderr
    assert "checkpoint of epoch 3 is unusable" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "unusable" in line]) == 1
    assert "resumed from the checkpoint of epoch 2" in result.stdout
    assert [m["epoch"] for m in read_metrics(cli.cwd / "outputs" / "r")] == [1, 2, 3, 4]


@pytest.mark.xdist_group("resume_finished")
def test_no_usable_checkpoint_is_one_line_and_exit_2(cli, finished):
    checkpoints = _copy_run(finished, cli) / "checkpoints"
    for f in checkpoints.rglob("*"):
        if f.is_file() and f.parent.name == "state":
            f.write_bytes(b"garbage")
    before = sorted(str(p) for p in (cli.cwd / "outputs").rglob("*"))
    result = cli("trainer.epochs=4", "hydra.run.dir=outputs/r", "trainer.resume=true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: trainer.resume: no usable checkpoint")
    assert "Traceback" not in result.stderr
    assert (cli.cwd / "outputs" / "r" / "metrics.jsonl").exists(), "earlier results must survive"
    assert sorted(str(p) for p in (cli.cwd / "outputs").rglob("*") if ".hydra" not in str(p)) == \
        [p for p in before if ".hydra" not in p]


@pytest.mark.xdist_group("resume_finished")
def test_resume_with_a_mismatched_model_is_rejected(cli, finished):
    _copy_run(finished, cli)  # model.width=8
    before = snapshot(cli.cwd / "outputs" / "r")
    result = cli("trainer.epochs=4", "model.width=64", "hydra.run.dir=outputs/r", "trainer.resume=true")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "trainer.resume" in line and "model.width (8 -> 64)" in line
    assert snapshot(cli.cwd / "outputs" / "r") == before, "a refused resume changes nothing in the run dir"


def test_resume_source_that_does_not_exist_is_rejected_before_any_output(cli):
    for args in (["trainer.resume=true"], ["trainer.resume=true", "hydra.run.dir=outputs/missing"]):
        result = cli(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert "hydra.run.dir" in result.stderr or "no checkpoint" in result.stderr
        assert not (cli.cwd / "outputs").exists()
    shutil.rmtree(cli.cwd / "outputs", ignore_errors=True)
