"""Pretraining through the command line: each method pretrains on digits, logs every epoch to pretraining.jsonl,
and the run fine-tunes on its scarce labels with the pretrained layers grafted in; a setting a method cannot use is
one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_metrics, read_summary

TINY = ("model.depth=2", "model.width=16", "trainer.batch_size=16", "trainer.epochs=2", "pretraining.epochs=2",
        "dataset.labeled_examples=48")


def _pretraining_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "pretraining.jsonl").read_text().splitlines()]


def _check_run(cli, result, method: str, layers: list[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    (run_dir,) = cli.run_dirs()
    assert "dataset digits: 48 train" in result.stdout  # fine-tuning sees only the labeled examples
    assert f"transfer: dense_0, dense_1 from pretraining={method} (frozen)" in result.stdout
    assert read_summary(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 2
    log = _pretraining_log(run_dir)
    assert [(r["layer"], r["epoch"]) for r in log] == [(layer, e) for layer in layers for e in (1, 2)]
    assert all(r["method"] == method for r in log)
    return log


@pytest.mark.slow
def test_autoencoder_pretraining_logs_each_layer_then_fine_tunes_on_the_labeled_examples(cli):
    result = cli(*TINY, "pretraining=autoencoder")
    log = _check_run(cli, result, "autoencoder", ["dense_0", "dense_1"])
    for layer in ("dense_0", "dense_1"):
        first, last = (r["loss"] for r in log if r["layer"] == layer)
        assert last < first, (layer, first, last)


def test_rbm_with_another_activation_is_one_line_exit_2_and_nothing_written(cli):
    result = cli(*TINY, "pretraining=rbm", "activation=elu", "normalization=none")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "error: pretraining=rbm: needs activation=sigmoid (an RBM's hidden units are sigmoid), got elu"]
    assert not (cli.cwd / "outputs").exists()


@pytest.mark.slow
def test_rbm_pretraining_runs_with_sigmoid_units(cli):
    result = cli(*TINY, "pretraining=rbm", "activation=sigmoid", "normalization=none")
    _check_run(cli, result, "rbm", ["dense_0", "dense_1"])


@pytest.mark.slow
def test_supervised_pretraining_trains_on_other_classes_first(cli):
    result = cli(*TINY, "pretraining=supervised", "dataset.classes=[5,6,7,8,9]", "pretraining.classes=[0,1,2,3,4]")
    log = _check_run(cli, result, "supervised", ["body"])
    assert "pretraining=supervised: 708 examples of classes [0, 1, 2, 3, 4]" in result.stdout
    assert all(0 <= r["accuracy"] <= 1 for r in log)


@pytest.mark.slow
def test_auxiliary_pretraining_learns_rotations_of_every_training_input(cli):
    result = cli(*TINY, "pretraining=auxiliary")
    _check_run(cli, result, "auxiliary", ["body"])
    assert "pretraining=auxiliary: 5172 inputs, 4 transformations of 1293 training inputs" in result.stdout
