"""Pretraining through the command line: each method pretrains on digits, logs every epoch to pretraining.jsonl,
and the run fine-tunes on its scarce labels with the pretrained layers grafted in; a setting a method cannot use is
one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import yaml

from runner.data import load_data
from tests.conftest import Runner, compose_config, read_metrics, read_summary

# One net every method can pretrain (an RBM's units are sigmoid, without normalization) on task B, digits 5-9, with
# supervised pretraining's task A (classes 0-4) apart from it.
TINY = ("model.depth=2", "model.width=16", "trainer.batch_size=16", "trainer.epochs=2", "dataset.labeled_examples=48",
        "activation=sigmoid", "normalization=none", "dataset.classes=[5,6,7,8,9]")
METHODS = ("autoencoder", "rbm", "supervised", "auxiliary")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tfds_dir) -> tuple[dict, str]:
    """Every method's run, one multirun: {method: its run dir}, and the multirun's stdout."""
    cli = Runner(tmp_path_factory.mktemp("pretrained"), tfds_dir)
    # ++: the sweep's own config (pretraining=none, the default) has no epochs to set; every method's has
    result = cli("-m", *TINY, "++pretraining.epochs=2", f"pretraining={','.join(METHODS)}",
                 "hydra.callbacks.report.plots=false")
    assert result.returncode == 0, result.stderr
    runs = {yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]["pretraining"]: d
            for d in cli.run_dirs()}
    assert sorted(runs) == sorted(METHODS)
    return runs, result.stdout


def _pretraining_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "pretraining.jsonl").read_text().splitlines()]


def _check_run(pretrained, method: str, layers: list[str]) -> list[dict]:
    runs, stdout = pretrained
    run_dir = runs[method]
    job = stdout.split(f"pretraining={method}\n", 1)[1].split("[HYDRA]", 1)[0]  # the job's own lines
    assert "dataset digits: 48 train" in job  # fine-tuning sees only the labeled examples
    assert f"transfer: dense_0, dense_1 from pretraining={method} (frozen)" in job
    assert read_summary(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 2
    log = _pretraining_log(run_dir)
    assert [(r["layer"], r["epoch"]) for r in log] == [(layer, e) for layer in layers for e in (1, 2)]
    assert all(r["method"] == method for r in log)
    return log


@pytest.mark.xdist_group("pretrained")
def test_autoencoder_pretraining_logs_each_layer_then_fine_tunes_on_the_labeled_examples(pretrained):
    log = _check_run(pretrained, "autoencoder", ["dense_0", "dense_1"])
    for layer in ("dense_0", "dense_1"):
        first, last = (r["loss"] for r in log if r["layer"] == layer)
        assert last < first, (layer, first, last)


def test_rbm_with_another_activation_is_one_line_exit_2_and_nothing_written(cli):
    result = cli(*[o for o in TINY if not o.startswith("activation=")], "pretraining=rbm", "pretraining.epochs=2",
                 "activation=elu")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "error: pretraining=rbm: needs activation=sigmoid (an RBM's hidden units are sigmoid), got elu"]
    assert not (cli.cwd / "outputs").exists()


@pytest.mark.xdist_group("pretrained")
def test_rbm_pretraining_runs_with_sigmoid_units(pretrained):
    _check_run(pretrained, "rbm", ["dense_0", "dense_1"])


@pytest.mark.xdist_group("pretrained")
def test_supervised_pretraining_trains_on_other_classes_first(pretrained):
    log = _check_run(pretrained, "supervised", ["body"])
    assert "pretraining=supervised: 708 examples of classes [0, 1, 2, 3, 4]" in pretrained[1]
    assert all(0 <= r["accuracy"] <= 1 for r in log)


@pytest.mark.xdist_group("pretrained")
def test_auxiliary_pretraining_learns_rotations_of_every_training_input(pretrained, tfds_dir):
    _check_run(pretrained, "auxiliary", ["body"])
    # every training input of task B's classes, the unlabeled ones too: the split before labeled_examples cuts it
    inputs = len(load_data(compose_config("dataset.classes=[5,6,7,8,9]")).x_train)
    assert f"pretraining=auxiliary: {4 * inputs} inputs, 4 transformations of {inputs} training inputs" \
        in pretrained[1]
