"""Every bad input: exit code 2, one line on stderr naming the key and what is valid, nothing under outputs/."""

from __future__ import annotations

import numpy as np
import pytest

CASES = [
    # (overrides, words the one line must contain)
    (["optimizer=adamm"], ["optimizer=adamm", "unknown choice", "adam", "sgd"]),
    (["activation=relux"], ["activation=relux", "elu", "relu"]),
    (["-m", "optimizer=sgd,adamm"], ["optimizer=adamm", "unknown choice"]),
    (["trainer.epoch=3"], ["trainer.epoch", "no such key", "epochs"]),
    (["optimizer.learning_rat=0.1"], ["optimizer.learning_rat", "learning_rate"]),
    (["+optimizer.bogus=1"], ["optimizer.bogus", "valid", "learning_rate"]),
    (["trainer.epochs=abc"], ["trainer.epochs", "abc", "valid: an integer >= 1"]),
    (["optimizer.learning_rate=-0.1"], ["optimizer.learning_rate", "> 0", "-0.1"]),
    (["regularizer.dropout.rate=1.0"], ["regularizer.dropout.rate", "[0, 1)"]),
    (["model.depth=-1"], ["model.depth", ">= 0"]),
    (["model.width=0"], ["model.width", ">= 1"]),
    (["trainer.batch_size=0"], ["trainer.batch_size", ">= 1"]),
    (["trainer.batch_size=100000"], ["trainer.batch_size", "larger than the training set"]),
    (["clip=sometimes"], ["clip=sometimes", "unknown choice", "global_norm"]),
    (["logger=[jsonl,nosuch]"], ["logger=nosuch: unknown choice; valid: csv, jsonl, mlflow, tensorboard"]),
    (["experiment=nosuch"], ["experiment=nosuch: unknown choice", "fast", "+experiment="]),
    (["dataset.val_fraction=1.5"], ["dataset.val_fraction", "[0, 1)"]),
    (["dataset=npz"], ["dataset.path", "npz"]),
    (["dataset=npz", "dataset.path=/no/such/file.npz"], ["/no/such/file.npz"]),
    (["initializer=variance_scaling", "initializer.mode=fan_sideways"], ["initializer.mode", "fan_in"]),
    (["dataset=tfds"], ["dataset.name", "needs a value"]),
    (["dataset=tfds", "dataset.name=no_such_dataset_xyz"], ["no_such_dataset_xyz", "digits"]),
    (["schedule=exponential", "schedule.unit=fortnight"], ["schedule.unit", "epoch"]),
    (["trainer.early_stopping.monitor=val_f1"], ["trainer.early_stopping.monitor", "val_loss"]),
    # relations between values (runner/config/compose.py check_relations; every rule: tests/test_relations.py)
    (["schedule=piecewise_constant", "schedule.boundaries=[15,5]"], ["schedule.boundaries", "each above", "[15, 5]"]),
    (["dataset.val_fraction=0", "trainer.early_stopping.patience=3"],
     ["trainer.early_stopping.patience", "dataset.val_fraction=0"]),
    (["transfer.reuse_layers=2"], ["transfer.reuse_layers", "transfer.source"]),
]


def _assert_rejected(cli, args, words):
    result = cli(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (cli.cwd / "outputs").exists(), list((cli.cwd / "outputs").rglob("*"))


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_override_is_one_line_exit_2_and_nothing_written(cli, args, words):
    _assert_rejected(cli, args, words)


def _npz(path, **arrays):
    base = {"x_train": np.zeros((20, 4, 4), np.uint8), "y_train": np.arange(20) % 3,
            "x_test": np.zeros((5, 4, 4), np.uint8), "y_test": np.arange(5) % 3}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


NPZ_CASES = {
    "missing_key": ({"y_test": None}, ["y_test"]),
    "mismatched_lengths": ({"y_train": np.arange(19) % 3}, ["length"]),
    "labels_out_of_range": ({"y_train": np.arange(20) - 1}, ["label"]),
    "non_finite": ({"x_train": np.full((20, 4, 4), np.nan, np.float32)}, ["finite"]),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_bad_npz_is_one_line_exit_2_and_nothing_written(cli, tmp_path, case):
    arrays, words = NPZ_CASES[case]
    path = _npz(tmp_path / f"{case}.npz", **arrays)
    _assert_rejected(cli, ["dataset=npz", f"dataset.path={path}"], [str(path), *words])


def test_unreadable_npz_is_rejected(cli, tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"not a zip file")
    _assert_rejected(cli, ["dataset=npz", f"dataset.path={path}"], [str(path)])


def test_good_npz_trains(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 6, 6), dtype=np.uint8)
    y = (x.reshape(200, -1).mean(1) > 127).astype(np.int64)
    path = _npz(tmp_path / "ok.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    result = cli("dataset=npz", f"dataset.path={path}", "trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    assert len(cli.run_dirs()) == 1
