"""Data parallel over several devices: the same run as on one device, up to float summation order.

JAX fixes its device count when it starts, so the runs with 4 devices happen in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (4 CPU "devices" sharing this machine's cores).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from runner.errors import UserError
from runner.scale.distributed import DataParallel, launched_processes, process_index_from_env, shared_run_dir
from tests.conftest import ROOT, read_metrics, read_summary

FORCED = "--xla_force_host_platform_device_count=4"
# A short run of the default config (batch norm, dropout, Adam) on digits: 2 epochs of 8 steps (256 training
# examples; validation and test as whole: 144 and 360).
SHORT = ("trainer.epochs=2", "model.depth=2", "model.width=64", "dataset.train_subset=256")


def forced_devices_env(tfds_dir: Path) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} {FORCED}",
            "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(tfds_dir)}


def train_on_forced_devices(out: str) -> None:
    """In the 4-device subprocess: the short run on 1 and on 4 devices, a batch size 4 does not divide, dropout
    masks drawn whole and split over the devices, and the short run stopped and resumed on 4 devices. Results go
    to `out` (run dirs and results.json)."""
    import jax

    from runner.cli.run import train_and_evaluate
    from runner.config.compose import compose_config
    from runner.console import Console
    from runner.scale.distributed import DataParallel
    from runner.training.process import prepare_training_process

    prepare_training_process()  # as `python -m runner` does: every compiled program kept, the resume's read back
    out_dir, results = Path(out), {"device_count": jax.device_count()}
    for devices in (1, 4):
        train_and_evaluate(compose_config(*SHORT, f"trainer.devices={devices}"), out_dir / f"devices_{devices}",
                           Console(live=False))
    for key, value in (("batch_size", 30), ("eval_batch_size", 999)):
        refused = out_dir / f"refused_{key}"
        refused.mkdir()
        try:
            train_and_evaluate(compose_config(*SHORT, "trainer.devices=4", f"trainer.{key}={value}"), refused,
                               Console(live=False))
        except UserError as e:
            results[f"refused_{key}"] = str(e)
        results[f"refused_{key}_wrote"] = sorted(p.name for p in refused.iterdir())
    # Dropout's masks: the same bits drawn on one device and split over four (jax_threefry_partitionable).
    split = DataParallel.over(4).batch
    draw = jax.jit(lambda key: jax.random.bernoulli(key, 0.5, (32, 100)), out_shardings=split)
    whole = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (32, 100))
    results["threefry_partitionable"] = bool(jax.config.jax_threefry_partitionable)
    results["masks_equal"] = bool(np.array_equal(np.asarray(draw(jax.random.PRNGKey(3))), np.asarray(whole)))
    results["mask_shards"] = len(draw(jax.random.PRNGKey(3)).addressable_shards)
    train_then_resume_on_forced_devices(out)  # in this process too: one process of 4 devices started, not two
    (out_dir / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def forced(tmp_path_factory, tfds_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("devices")
    done = subprocess.run([sys.executable, "-c", f"from tests.test_devices import train_on_forced_devices; "
                           f"train_on_forced_devices({str(out)!r})"], cwd=ROOT, env=forced_devices_env(tfds_dir),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_four_devices_give_the_metrics_of_one_within_float_tolerance(forced):
    """Training metrics agree to float rounding: the loss and batch-norm statistics are of the global batch.

    Evaluation agrees less closely, for a reason of the model, not of the devices: the dense bias before batch norm
    has a gradient of exactly zero in theory (the norm subtracts it again), so its computed gradient is rounding
    noise, which Adam divides by its own magnitude into steps of about +-lr; the noise differs with the summation
    order, so that bias drifts differently, and at evaluation the running mean lags it. Measured (2 epochs of 8
    steps): train_loss within 2e-7 (relative), val_loss 1.3e-4, test_loss 1.6e-4; of 40 steps: 8e-7, 5e-4, 2e-4,
    and at the default XLA optimization level 2e-7, 6e-5, 8e-5 with one of the 144 validation predictions flipped. With normalization=none, or with SGD
    (whose step is proportional to the noise), the validation loss agrees within 1e-7.
    """
    out, results = forced
    assert results["device_count"] == 4
    one, four = read_metrics(out / "devices_1"), read_metrics(out / "devices_4")
    assert [r["step"] for r in four] == [r["step"] for r in one] == [8, 16]
    for a, b in zip(one, four, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-3)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1.01 / 144)  # at most one prediction
    s1, s4 = read_summary(out / "devices_1"), read_summary(out / "devices_4")
    assert s4["test_loss"] == pytest.approx(s1["test_loss"], rel=2e-3)
    assert s4["test_accuracy"] == pytest.approx(s1["test_accuracy"], abs=1.01 / 360)


@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_summary_lists_the_devices_used(forced):
    out, _ = forced
    assert read_summary(out / "devices_1")["devices"] == ["cpu:0"]
    assert read_summary(out / "devices_4")["devices"] == [f"cpu:{i}" for i in range(4)]


@pytest.mark.parametrize("key, value", [("batch_size", 30), ("eval_batch_size", 999)])
@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_a_batch_size_the_devices_do_not_divide_is_refused_before_anything_is_written(forced, key, value):
    _, results = forced
    message = results[f"refused_{key}"]
    assert message.startswith(f"trainer.{key}: {value} does not divide over the 4 devices")
    assert "valid: a multiple of 4" in message and "\n" not in message
    assert results[f"refused_{key}_wrote"] == []


@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_dropout_masks_split_over_devices_are_the_bits_drawn_on_one(forced):
    _, results = forced
    assert results["threefry_partitionable"] and results["mask_shards"] == 4
    assert results["masks_equal"]


def train_as_one_of_several_processes(run_dir: str, *overrides: str) -> None:
    """In each process of a multi-process run: the short run on this process's one CPU device, into `run_dir`."""
    from runner.cli.run import train_and_evaluate
    from runner.config.compose import compose_config
    from runner.console import Console
    from runner.training.interrupts import Interrupted
    from runner.training.process import prepare_training_process

    prepare_training_process()  # as `python -m runner` does: a program compiled before is read back
    try:
        train_and_evaluate(compose_config(*SHORT, *overrides), Path(run_dir), Console(live=False))
    except Interrupted as e:
        sys.exit(e.exit_code)


def start_processes(count: int, run_dir: Path, tfds_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    """`count` processes of one run on this machine (JAX's CPU backend, gloo collectives), one device each."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(tfds_dir),
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(count)}
    code = f"import tests.test_devices as t; t.train_as_one_of_several_processes(*{[str(run_dir), *overrides]!r})"
    return [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(i)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]


def wait_all(processes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    try:
        return [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()


@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_two_processes_train_as_one_and_only_process_0_writes(forced, tmp_path, tfds_dir):
    out, _ = forced
    run_dir = tmp_path / "run"
    processes = start_processes(2, run_dir, tfds_dir)
    outputs = wait_all(processes)
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]

    summary = read_summary(run_dir)
    assert len(set(summary["devices"])) == 2  # one CPU device of each process
    assert "2 processes, this is 1" in outputs[1][0] and "epoch 1/" not in outputs[1][0]  # process 1 shows no epochs
    one = read_metrics(out / "devices_1")
    two = read_metrics(run_dir)  # written once: two lines, not four
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-3)
    assert summary["test_loss"] == pytest.approx(read_summary(out / "devices_1")["test_loss"], rel=2e-3)
    # The same files as a run of one process; the checkpoint saved by both, collectively.
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (out / "devices_1").iterdir())
    assert (run_dir / "checkpoints" / "2" / "_CHECKPOINT_METADATA").exists()


def test_a_signal_to_one_process_stops_every_process_at_the_same_step_with_one_checkpoint(tmp_path, tfds_dir):
    """SLURM signals every task, but not at the same instant: the processes agree at each chunk's end."""
    run_dir = tmp_path / "run"
    processes = start_processes(2, run_dir, tfds_dir, "trainer.epochs=30")
    for line in processes[0].stdout:  # process 0 shows the epochs; signal it alone once training is under way
        if line.startswith("epoch 1/"):
            processes[0].send_signal(signal.SIGTERM)
            break
    outputs = wait_all(processes)
    assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, [err for _, err in outputs]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and 1 <= summary["epochs"] < 30
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(1, summary["epochs"] + 1))
    assert (run_dir / "checkpoints" / str(summary["epochs"]) / "_CHECKPOINT_METADATA").exists()


def train_then_resume_on_forced_devices(out: str) -> None:
    """In the 4-device subprocess: epoch 1 of the short run on 4 devices, then resumed to its end (epoch 2), in
    `out`/resumed (`out`/refused.txt if the resume was refused)."""
    from runner.cli.run import train_and_evaluate
    from runner.config.compose import compose_config
    from runner.console import Console

    run_dir = Path(out) / "resumed"
    train_and_evaluate(compose_config(*SHORT, "trainer.devices=4", "trainer.epochs=1"), run_dir, Console(live=False))
    try:
        train_and_evaluate(compose_config(*SHORT, "trainer.devices=4", "trainer.resume=true"), run_dir,
                           Console(live=False))
    except UserError as e:
        (Path(out) / "refused.txt").write_text(str(e))


@pytest.mark.xdist_group("forced_devices")  # one worker runs the fixture once
def test_a_run_on_four_devices_resumed_ends_as_the_uninterrupted_one_bit_for_bit(forced):
    out, _ = forced  # the fixture's process ran train_then_resume_on_forced_devices too
    refused = out / "refused.txt"
    assert not refused.exists(), refused.read_text()
    resumed, whole = read_metrics(out / "resumed"), read_metrics(out / "devices_4")
    drop_time = lambda records: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]  # noqa: E731
    assert drop_time(resumed) == drop_time(whole)


@pytest.mark.parametrize("batch, valid", [(30, "28 or 32"), (3, "4"), (1001, "1000 or 1004")])
def test_the_refusal_names_the_nearest_multiples_of_the_device_count(batch, valid):
    four = DataParallel(types.SimpleNamespace(size=4), setting=4)
    with pytest.raises(UserError, match=rf"valid: a multiple of 4 \(e\.g\. {valid}\)"):
        four.check_batch_size("trainer.batch_size", batch)
    four.check_batch_size("trainer.batch_size", 32)  # divides: no error


def test_more_devices_than_the_process_has_is_refused():
    with pytest.raises(UserError, match=r"^trainer\.devices: 2, but this process has 1 device\(s\) .*"
                                        r"valid: auto or an integer in \[1, 1\]$"):
        DataParallel.over(2)


@pytest.mark.parametrize("environ, processes, index", [
    ({}, 1, 0),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, 1, 0),  # srun -n 1: no setup
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2"}, 4, 2),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, 1, 0),  # sbatch's own script, outside srun
    ({"JAX_COORDINATOR_ADDRESS": "host:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, 2, 1),
])
def test_the_launcher_environment_gives_the_process_count_and_index(environ, processes, index):
    assert launched_processes(environ) == processes
    assert process_index_from_env(environ) == index


@pytest.mark.parametrize("environ, message", [
    ({"JAX_NUM_PROCESSES": "2"}, r"^JAX_NUM_PROCESSES=2: every process also needs JAX_COORDINATOR_ADDRESS and "
                                 r"JAX_PROCESS_ID; valid: .*JAX_PROCESS_ID=<0 \.\. 1>, or launch with srun$"),
    ({"JAX_NUM_PROCESSES": "two"}, r"^JAX_NUM_PROCESSES=two: must be an integer >= 1"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "2"},
     r"^JAX_PROCESS_ID=2: must be an integer in \[0, 1\]"),
])
def test_a_launch_by_hand_with_missing_or_bad_variables_is_one_line_naming_them(environ, message):
    with pytest.raises(UserError, match=message):
        launched_processes(environ)


def test_every_process_of_a_slurm_step_names_the_same_run_dir():
    step = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "3", "SLURM_STEP_NUM_TASKS": "2"}
    assert shared_run_dir({**step, "SLURM_PROCID": "0"}) == shared_run_dir({**step, "SLURM_PROCID": "1"}) \
        == "outputs/slurm/4242.3"
    assert shared_run_dir({}) is None


# The row of `python -m runner.bench --smoke` (measure_data_parallel_anywhere over 4 devices forced in a
# subprocess): the session's one smoke run (tests/conftest.py).
@pytest.mark.xdist_group("bench_smoke")
def test_the_bench_times_the_epoch_on_forced_cpu_devices_against_one_device(bench_smoke):
    row = bench_smoke[1]["data_parallel"]
    assert row["forced_cpu_devices"] and row["devices"] == 4 and row["batch_size"] == 16
    assert row["one_device_examples_per_s"] > 0 and row["data_parallel_examples_per_s"] > 0
    assert row["speedup"] == pytest.approx(row["data_parallel_examples_per_s"] / row["one_device_examples_per_s"])
