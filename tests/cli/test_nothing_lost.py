"""Nothing lost, nothing silent: a refused or failed run changes nothing that existed before it, says why in
one line and exits 2; a failing sweep job fails alone; one process at a time holds a run dir."""

from __future__ import annotations

import csv
import io
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import yaml

from tests.conftest import read_summary, snapshot, trained_run


def _npz(path, **changes):
    arrays = {"x_train": np.zeros((20, 4, 4), np.uint8), "y_train": np.arange(20) % 3,
              "x_test": np.zeros((5, 4, 4), np.uint8), "y_test": np.arange(5) % 3}
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


def _npz_with_huge_header(path):
    _npz(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**9, 10**6)})
    members["x_train.npy"] = header.getvalue() + bytes(320)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


class _EmptiesPrecious:
    """A pickle that, once loaded, empties precious.txt: what `--experimental-rerun FILE` would run."""

    def __reduce__(self):
        return open, ("precious.txt", "w")


def _user_files(cwd):
    (cwd / "keep").mkdir()
    (cwd / "keep" / "notes.txt").write_text("notes\n")
    (cwd / "precious.txt").write_text("do not empty me\n")


# (arguments, words the one line must contain). `{cwd}` is the test's working dir, which holds the user's
# files `keep/notes.txt` and `precious.txt`; each case must leave the whole tree byte-identical.
CASES = [
    # Found at run time (after the data loads): the claimed dir gives back only what this run added.
    (["hydra.run.dir=keep", "trainer.batch_size=5000"], ["trainer.batch_size", "5000"]),
    (["hydra.run.dir=.", "trainer.batch_size=5000"], ["trainer.batch_size"]),
    (["trainer.batch_size=5000"], ["trainer.batch_size"]),
    # Found before anything runs.
    (["hydra.run.dir="], ["hydra.run.dir", "empty"]),
    (["hydra.run.dir=precious.txt"], ["hydra.run.dir", "is a file"]),
    (["hydra.run.dir=precious.txt/run"], ["hydra.run.dir", "is a file"]),
    (["hydra.run.dir=/proc/no/such/run"], ["hydra.run.dir", "cannot write"]),
    (["optimizer.learning_rate=fast"], ["optimizer.learning_rate", "> 0", "fast"]),
    (["optimizer.learning_rate=null"], ["optimizer.learning_rate", "null"]),
    (["optimizer.learning_rate=inf"], ["optimizer.learning_rate", "inf"]),
    (["activation.alpha=abc"], ["activation.alpha", "abc"]),
    (["schedule=power", "schedule.power=abc"], ["schedule.power", "abc"]),
    (["schedule=piecewise_constant", "schedule.values=[0.1,-0.01,0.001]"], ["schedule.values", "> 0"]),
    (["schedule=cosine", "schedule.final_fraction=-0.5"], ["schedule.final_fraction", "[0, 1]"]),
    (["trainer.seed=-1"], ["trainer.seed", "integer"]),
    (["+trainer_epochs=3"], ["trainer_epochs", "unknown top-level key", "trainer"]),
    (["~optimizer"], ["optimizer", "cannot be removed"]),
    (["-cn", "nosuch"], ["nosuch", "config"]),
    (["regularizer=[none]", "regularizer.none._target_=builtins.open", "+regularizer.none._args_=[precious.txt,w]"],
     ["_target_", "command line"]),
    (["+optimizer._partial_=true"], ["_partial_", "command line"]),
    # Config is data (runner/config/safety.py): nothing the command line says runs code or writes outside the run dir.
    (["+initializer.dtype={_target_: builtins.open, _args_: [precious.txt, w]}"], ["initializer.dtype", "_target_"]),
    (["+hydra.callbacks.e={_target_: builtins.open, _args_: [precious.txt, w]}"], ["hydra.callbacks.e", "_target_"]),
    (["+hydra.callbacks.e.x=1"], ["hydra.callbacks.e.x", "callbacks"]),
    (["~hydra.callbacks.report"], ["hydra.callbacks.report", "callbacks"]),
    (["hydra.callbacks.report={plots: false}"], ["hydra.callbacks.report", "valid: a new value for"]),
    (["+initializer.dtype=${regularizer}"], ["initializer.dtype", "config node"]),
    (["--experimental-rerun", "precious.pickle"], ["--experimental-rerun", "pickle"]),
    (["hydra.run.dir=outputs/r", "hydra.output_subdir=../../keep"], ["hydra.output_subdir", "outside"]),
    (["-m", "optimizer=sgd,adam", "hydra.sweep.dir=outputs/s", "hydra.sweep.subdir=../../keep"],
     ["hydra.sweep.subdir", "outside"]),
    (["hydra/job_logging=default", "hydra.job_logging.handlers.file.filename=precious.txt"],
     ["hydra.job_logging.handlers.file.filename", "outside"]),
    (["+trainer.epoch=1"], ["trainer.epoch", "did you mean epochs"]),
    (["dataset.name=${oc.env:RUNNER_NO_SUCH_VARIABLE}"], ["dataset.name", "RUNNER_NO_SUCH_VARIABLE", "valid"]),
    (["trainer.epochs=${trainer.epochs}"], ["trainer.epochs", "Recursive"]),
    (["hydra.run.dir=${now:}"], ["hydra.run.dir", "valid"]),
    (["dataset.name=" + "a" * 5000], ["dataset.name", "5,000 characters", "4,096"]),
    (["--cfg", "job", "optimizer=nosuch"], ["optimizer=nosuch", "unknown choice"]),
    (["--help", "trainer.epochs=abc"], ["trainer.epochs", "integer"]),
    (["trainer.resume=true", "hydra.run.dir=outputs/never_ran"], ["hydra.run.dir", "does not exist"]),
    (["-m", "optimizer.learning_rate=fast,0.001"], ["optimizer.learning_rate", "fast"]),
    (["dataset=npz", "dataset.path=huge_header.npz"], ["huge_header.npz", "header claims"]),
    (["dataset=npz", "dataset.path=huge_label.npz"], ["huge_label.npz", "2147483643", "classes"]),
    (["dataset=npz", "dataset.path=one_class.npz"], ["one_class.npz", "two"]),
]


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_line_exit_2_and_leaves_every_file_as_it_was(cli, args, words):
    _user_files(cli.cwd)
    _npz_with_huge_header(cli.cwd / "huge_header.npz")
    _npz(cli.cwd / "huge_label.npz", y_train=np.r_[2**31 - 5, np.arange(19) % 3])
    _npz(cli.cwd / "one_class.npz", y_train=np.zeros(20, int), y_test=np.zeros(5, int))
    (cli.cwd / "precious.pickle").write_bytes(pickle.dumps(_EmptiesPrecious()))
    before = snapshot(cli.cwd)
    result = cli(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    noise = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("error:")]
    assert not noise or args[-1].startswith("trainer.batch_size"), noise  # only data-loading chatter may precede
    for word in words:
        assert word in line, (word, line)
    assert snapshot(cli.cwd) == before


# A small net on a few examples (2 steps an epoch): these tests are of run dirs and processes, not of training.
TINY = ("model.depth=1", "model.width=8", "dataset.train_subset=64")
# One finished run (checkpointed each epoch, 3 epochs, its own seed to find again on resume) that the tests of what a
# run dir's later commands do each copy: one training for the three of them, of the programs TINY's other runs
# compile (the worker's compile cache has them).
FINISHED = ("trainer.seed=3", "trainer.epochs=3", "trainer.checkpoint_every=1", *TINY)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tfds_dir):
    return trained_run(tmp_path_factory, tfds_dir, "finished", *FINISHED)


def _copy_run(run_dir, cli):
    """The finished run, as the test's own outputs/r."""
    return shutil.copytree(run_dir, cli.cwd / "outputs" / "r", ignore=shutil.ignore_patterns(".runner.lock"))


def test_a_job_failing_at_run_time_fails_alone_and_the_report_lists_it(cli):
    result = cli("-m", "trainer.batch_size=5000,32", "trainer.epochs=1", *TINY, "hydra.callbacks.report.plots=false")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    batch_size = lambda d: next(o for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())  # noqa: E731
                                if o.startswith("trainer.batch_size="))
    summaries = {batch_size(d): read_summary(d) for d in cli.run_dirs()}
    failed = summaries["trainer.batch_size=5000"]
    assert failed["status"] == "failed" and "trainer.batch_size" in failed["reason"]
    assert summaries["trainer.batch_size=32"]["status"] == "completed"
    [report] = (cli.cwd / "outputs" / "multirun").rglob("report.csv")
    rows = {next(o for o in row["overrides"].split() if o.startswith("trainer.batch_size=")): row
            for row in csv.DictReader(report.open())}
    assert rows["trainer.batch_size=5000"]["status"] == "failed"
    assert "larger than the training set" in rows["trainer.batch_size=5000"]["reason"]
    assert "1 job(s) failed" in result.stderr


def test_a_second_process_on_a_busy_run_dir_is_refused_and_the_first_completes(cli):
    run_dir = cli.cwd / "outputs" / "busy"
    # 10 epochs, each checkpointed (~0.4 s an epoch at load 5, 50 ms unloaded): the first is held long before its last
    first = subprocess.Popen([sys.executable, "-m", "runner", *TINY, "trainer.epochs=10", "trainer.checkpoint_every=1",
                              f"hydra.run.dir={run_dir}"],
                             cwd=cli.cwd, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "1").is_dir():
        time.sleep(0.05)
    # Held still (alive, its lock held) while the second tries: on a loaded machine the first could otherwise
    # finish its epochs before the second has started.
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli("trainer.resume=true", f"hydra.run.dir={run_dir}", "trainer.epochs=30")
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert "in use by another runner process" in line
    assert first.returncode == 0, stderr
    assert read_summary(run_dir)["status"] == "completed"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10, "no duplicate metrics lines"
    assert not (run_dir / ".runner.lock").exists()


@pytest.mark.xdist_group("nothing_lost_finished")  # one worker trains the module's finished run once
def test_a_fresh_run_into_a_dir_that_holds_a_run_is_refused(cli, finished):
    _copy_run(finished, cli)
    before = snapshot(cli.cwd)
    result = cli("trainer.epochs=1", *TINY, "hydra.run.dir=outputs/r")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "trainer.resume=true" in result.stderr
    assert snapshot(cli.cwd) == before


@pytest.mark.xdist_group("nothing_lost_finished")
def test_resume_may_extend_the_epochs_and_records_the_merged_overrides(cli, finished):
    _copy_run(finished, cli)  # trained with trainer.seed=3 trainer.epochs=3 model.width=8
    result = cli("trainer.resume=true", "hydra.run.dir=outputs/r", "trainer.epochs=4")
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((cli.cwd / "outputs" / "r" / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["seed"] == 3 and saved["trainer"]["epochs"] == 4
    assert saved["model"]["width"] == 8  # the first run's overrides, merged with the resume's
    assert read_summary(cli.cwd / "outputs" / "r")["epochs"] == 4


@pytest.mark.xdist_group("nothing_lost_finished")
def test_a_torn_metrics_line_before_the_checkpoint_is_reported_not_silently_lost(cli, finished):
    _copy_run(finished, cli)  # 3 epochs, each checkpointed
    metrics = cli.cwd / "outputs" / "r" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n" + lines[2] + "\n")
    result = cli("trainer.resume=true", "hydra.run.dir=outputs/r", "trainer.epochs=4")
    assert result.returncode == 0, result.stderr
    assert "lacks epoch(s) 2" in result.stderr
    assert read_summary(cli.cwd / "outputs" / "r")["missing_metric_epochs"] == [2]


# Where the disk fills: the first checkpoint (a 1000-wide net's, 8 MB of parameters, after epoch 1's metrics line of
# 2 steps: 2 MB is enough for the digits data) or the dataset's first build into a new data dir (orbax and
# array_record are C++ writers).
@pytest.mark.parametrize("where,limit,args", [
    ("run/checkpoints", 2 << 20, ["model.width=1000", "dataset.train_subset=64", "trainer.checkpoint_every=1"]),
    ("data", 64 << 10, ["dataset.data_dir={cwd}/data"])])
def test_a_disk_that_takes_no_more_ends_the_run_in_one_line_and_keeps_what_was_written(cli, where, limit, args):
    run_dir = cli.cwd / "run"
    command = [sys.executable, "-m", "runner", "trainer.epochs=3", *[a.format(cwd=cli.cwd) for a in args],
               f"hydra.run.dir={run_dir}"]
    # The shell's file-size limit: writes past it fail (EFBIG), as on a disk that takes no more.
    result = subprocess.run(["bash", "-c", f'ulimit -f {limit // 1024} && exec "$@"', "limited", *command],
                            cwd=cli.cwd, capture_output=True, text=True, timeout=300,
                            env={**cli.env, "JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert result.returncode == 2, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: cannot write {cli.cwd / where}") and "File too large" in line, line
    assert "Traceback" not in result.stdout + result.stderr
    epochs = [json.loads(r)["epoch"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if where == "run/checkpoints" else []
    assert epochs == ([1] if where == "run/checkpoints" else [])
    assert read_summary(run_dir)["status"] == "failed"


def _read_only_mount_works(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {probe} {probe} && "
                           f"mount -o remount,bind,ro {probe} && ! touch {probe}/x"], capture_output=True)
    return done.returncode == 0


def test_a_read_only_data_dir_is_one_line_naming_it(cli, tmp_path):
    if shutil.which("unshare") is None or not _read_only_mount_works(tmp_path):
        pytest.skip("needs a read-only mount (unshare -m and mount, as root), which this machine does not allow")
    data_dir = cli.cwd / "data"
    data_dir.mkdir()
    script = (f"mount --bind {data_dir} {data_dir} && mount -o remount,bind,ro {data_dir} && exec {sys.executable} "
              f"-m runner trainer.epochs=1 dataset.data_dir={data_dir} hydra.run.dir={cli.cwd / 'run'}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cli.cwd, env=cli.env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert str(data_dir) in line and "Read-only file system" in line, line
    assert "Traceback" not in result.stderr + result.stdout


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(cli):
    run_dir = cli.cwd / "run"
    # 200 epochs of 2 steps: seconds of training in which the kill lands (~15 ms an epoch at load 5, 3 ms of CPU)
    args = ["trainer.epochs=200", *TINY, f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cli.cwd, env=cli.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.02)
    first.kill()  # SIGKILL: no checkpoint, no summary
    first.wait()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()
    fresh = cli(*args)
    assert fresh.returncode == 2 and "trainer.resume=true" in fresh.stderr, fresh.stderr
    resumed = cli("trainer.resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "starting it again from epoch 1" in resumed.stdout
    epochs = [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert epochs == list(range(1, 201))
    assert read_summary(run_dir)["status"] == "completed"


def test_a_file_in_the_way_of_the_tensorboard_dir_is_one_line_naming_it(cli):
    pytest.importorskip("tensorboard", reason="the tracking extra (TensorBoard) is not installed")
    run_dir = cli.cwd / "run"
    run_dir.mkdir()
    (run_dir / "tensorboard").write_text("the user's\n")
    result = cli("trainer.epochs=1", *TINY, "logger=[jsonl,tensorboard]", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert f"cannot write {run_dir / 'tensorboard'}" in line, line
    assert (run_dir / "tensorboard").read_text() == "the user's\n"
