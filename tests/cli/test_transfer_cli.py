"""Transfer through the command line: task A trains, task B reuses its lowest layers frozen (bit-identical after
training), cached (the same numbers, faster), unfrozen later; every mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from runner.net import weights
from tests.conftest import trained_run, read_metrics, read_summary

SMALL = ("model.depth=3", "model.width=32", "trainer.batch_size=16")
# Task A's net is only a source of weights: 1 epoch of 4 steps (what B reuses is checked against the file, not its skill).
TASK_A = (*SMALL, "dataset.classes=[0,1,2,3,4]", "dataset.train_subset=64", "trainer.epochs=1")
TASK_B = (*SMALL, "dataset.classes=[5,6]", "dataset.train_subset=40", "trainer.epochs=3")


@pytest.fixture(scope="module")
def source(tmp_path_factory, tfds_dir):
    return trained_run(tmp_path_factory, tfds_dir, "task_a", *TASK_A)


# Every test reads task A's run: one worker runs them (make's --dist loadgroup), and task A once.
pytestmark = pytest.mark.xdist_group("transfer_source")


def _without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


def test_every_run_writes_its_weights_and_input_scaling(source):
    flat = weights.load(source / "model.safetensors")
    assert flat["dense_0.kernel"].shape == (64, 32) and flat["head.kernel"].shape == (32, 5)
    scaling = json.loads((source / "input_scaling.json").read_text())
    assert len(scaling["mean"]) == len(scaling["std"]) == 1


def test_frozen_reused_layers_stay_bit_identical_and_caching_gives_the_same_run(cli, source):
    # Both runs in one multirun (one process started): uncached, then cached.
    result = cli("-m", *TASK_B, f"transfer.source={source}", "transfer.reuse_layers=2", "transfer.cache=false,true",
                 "hydra.sweep.dir=outputs/s", "hydra.callbacks.report.plots=false")
    assert result.returncode == 0, result.stderr
    assert "transfer: dense_0, dense_1 from" in result.stdout
    runs = {read_config(d)["transfer"]["cache"]: d for d in cli.run_dirs()}
    frozen, cached = runs[False], runs[True]
    before, after = weights.load(source / "model.safetensors"), weights.load(frozen / "model.safetensors")
    for name in before:
        if name.split(".")[0] in ("dense_0", "dense_1", "block_0", "block_1"):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)  # parameters and batch stats
    assert not np.array_equal(after["dense_2.kernel"], before["dense_2.kernel"])
    assert after["head.kernel"].shape == (32, 2)

    for a, b in zip(read_metrics(cached), read_metrics(frozen), strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            # the cached run computes the frozen layers' features once, in other batch shapes: rounding differs
            # (measured: 1.3e-5 relative on val_loss), while a wrong feature would move every number by far more
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert read_summary(cached)["test_accuracy"] == pytest.approx(read_summary(frozen)["test_accuracy"], abs=1e-6)


def read_config(run_dir) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


def test_unfreezing_after_e_epochs_moves_the_reused_layers_at_a_lower_rate(cli, source):
    result = cli(*TASK_B, f"transfer.source={source}", "transfer.reuse_layers=2", "transfer.unfreeze_after=1",
                 "transfer.reused_lr_scale=0.1", "hydra.run.dir=outputs/unfrozen", "trainer.checkpoint_every=1")
    assert result.returncode == 0, result.stderr
    before, after = weights.load(source / "model.safetensors"), weights.load(cli.cwd / "outputs/unfrozen/model.safetensors")
    assert not np.array_equal(after["dense_0.kernel"], before["dense_0.kernel"])
    assert read_summary(cli.cwd / "outputs/unfrozen")["status"] == "completed"


def _bad_source(tmp_path):
    """A dir that looks like a run dir but has no weights: an interrupted run's."""
    run = tmp_path / "interrupted"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: {}\n")
    (run / "summary.json").write_text('{"status": "interrupted"}')
    return run


def _vectors(tmp_path):
    """An .npz of 1-D inputs (40 features, 10 classes), as mnist1d's, without building mnist1d."""
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=np.zeros((40, 40), np.float32), y_train=np.arange(40) % 10,
             x_test=np.zeros((10, 40), np.float32), y_test=np.arange(10))
    return path


BAD = [
    (lambda s, t: ["transfer.source=/no/such/run"], ["transfer.source", "/no/such/run"]),
    (lambda s, t: [f"transfer.source={t}"], ["transfer.source", "not a run dir"]),
    (lambda s, t: [f"transfer.source={_bad_source(t)}"], ["model.safetensors", "interrupted"]),
    (lambda s, t: [f"transfer.source={s}", "model.width=48"], ["dense_0", "(64, 32)", "(64, 48)"]),
    (lambda s, t: [f"transfer.source={s}", "transfer.reuse_layers=4"], ["transfer.reuse_layers", "3 hidden layers"]),
    (lambda s, t: [f"transfer.source={s}", "transfer.cache=true", "regularizer=[dropconnect]"],
     ["transfer.cache", "dropconnect"]),
    (lambda s, t: [f"transfer.source={s}", "transfer.cache=true", "regularizer=[dropout]",
                   "regularizer.dropout.on_inputs=true"], ["transfer.cache", "input dropout"]),
    (lambda s, t: [f"transfer.source={s}", "transfer.cache=true", "regularizer=[augmentation]"],
     ["transfer.cache", "augmentation"]),
    (lambda s, t: [f"transfer.source={s}", "transfer.unfreeze_after=3"], ["transfer.unfreeze_after", "below"]),
    (lambda s, t: ["dataset.classes=[3,42]"], ["dataset.classes", "42"]),
    (lambda s, t: ["dataset=npz", f"dataset.path={_vectors(t)}", "dataset.resize=[8,8]"],
     ["dataset.resize", "1-D inputs, not images"]),
    (lambda s, t: ["transfer.layout=caffe"], ["transfer.layout", "torch"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_a_bad_transfer_is_one_line_exit_2_and_nothing_written(cli, source, tmp_path, case):
    make_args, words = BAD[case]
    result = cli(*TASK_B, *make_args(source, tmp_path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (cli.cwd / "outputs").exists()
