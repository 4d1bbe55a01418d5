"""`python -m runner.predict`: a run's net on its own test split gives its own test accuracy; MC dropout is the mean
and std of dropout passes; every mistake is one line, exit 2, nothing written."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from runner.data import load_splits
from runner.data.splits import Scaling
from runner.predict import main, predict_arrays
from runner.reuse.trained import build_net, read_run
from runner.training.train import predictive_passes
from tests.conftest import trained_run, read_summary, snapshot

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("predict_module")

TINY = ("trainer.epochs=1", "model.depth=2", "model.width=16")  # the default net's blocks: batch norm, dropout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tfds_dir):
    return trained_run(tmp_path_factory, tfds_dir, "predict", *TINY)


@pytest.fixture(scope="module")
def raw_test_split(run_dir):
    """The run's test split as its dataset gives it, unscaled: what a user would save."""
    run = read_run(run_dir, "RUN_DIR")
    splits = load_splits(run.dataset_config(), seed=0, scaling=Scaling(np.zeros(1, np.float32), np.ones(1, np.float32)))
    return splits.x_test, splits.y_test


def test_predicting_the_test_split_reproduces_the_runs_test_accuracy(cli, run_dir, raw_test_split):
    x, y = raw_test_split
    np.savez(cli.cwd / "test.npz", x_test=x, y_test=y)

    result = cli(str(run_dir), "test.npz", module="runner.predict")

    assert result.returncode == 0, result.stderr
    with np.load(cli.cwd / "predictions.npz") as predictions:  # beside the input
        probabilities, labels = predictions["probabilities"], predictions["labels"]
        assert set(predictions.files) == {"probabilities", "labels"}
    assert probabilities.shape == (len(x), 10) and labels.dtype == np.int32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))
    assert np.mean(labels == y) == pytest.approx(read_summary(run_dir)["test_accuracy"], abs=1e-6)
    assert f"accuracy {read_summary(run_dir)['test_accuracy']:.4f}" in result.stdout


def test_mc_samples_are_the_mean_and_std_of_dropout_passes(run_dir, raw_test_split):
    run = read_run(run_dir, "RUN_DIR")
    x = raw_test_split[0][:50]
    got = predict_arrays(run, x, batch_size=50, mc_samples=8)  # one batch: its key is fold_in(PRNGKey(0), 0)

    model, variables = build_net(run, x.shape[1:])
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 0), 8)
    passes = np.asarray(jax.jit(lambda v, x, k: predictive_passes(model.apply, v, x, k))(  # one program
        variables, run.scale(x), keys))
    np.testing.assert_allclose(got["probabilities"], passes.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["probabilities_std"], passes.std(0), rtol=1e-4, atol=1e-6)
    assert got["probabilities_std"].max() > 0.01  # dropout is on: the passes differ
    np.testing.assert_array_equal(got["labels"], got["probabilities"].argmax(-1))


def test_batches_and_a_left_out_channel_axis_give_the_same_predictions(run_dir, raw_test_split):
    run = read_run(run_dir, "RUN_DIR")
    x = raw_test_split[0][:37]
    whole = predict_arrays(run, x, batch_size=1000)["probabilities"]
    np.testing.assert_allclose(predict_arrays(run, x, batch_size=8)["probabilities"], whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(predict_arrays(run, x[..., 0][..., None], batch_size=8)["probabilities"], whole,
                               rtol=1e-5, atol=1e-7)


def test_a_run_saved_before_the_net_moved_predicts_as_it_did(run_dir, raw_test_split, tmp_path):
    # Runs saved before runner/ was split into parts name their net runner.model.Net (runner/reuse/trained.py).
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    config = old / ".hydra" / "config.yaml"
    assert "_target_: runner.net.model.Net" in config.read_text()
    config.write_text(config.read_text().replace("_target_: runner.net.model.Net", "_target_: runner.model.Net"))
    x = raw_test_split[0][:20]
    np.testing.assert_array_equal(predict_arrays(read_run(old, "RUN_DIR"), x, batch_size=20)["probabilities"],
                                  predict_arrays(read_run(run_dir, "RUN_DIR"), x, batch_size=20)["probabilities"])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path.name


BAD = {  # name: (arguments after RUN_DIR, or a full argument list if it starts with a RUN_DIR, words in the line)
    "no run dir": (lambda d, r: ["nowhere", _write(d / "in.npz", x=np.zeros((2, 8, 8, 1)))], ["RUN_DIR", "nowhere"]),
    "run without weights": (lambda d, r: [str(_no_weights(d, r)), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1)))],
                            ["model.safetensors", "completed"]),
    "no input": (lambda d, r: [str(r), "missing.npz"], ["INPUT", "missing.npz", "no such file"]),
    "not an npz": (lambda d, r: [str(r), _text(d / "in.npz")], ["not a readable .npz"]),
    "no x": (lambda d, r: [str(r), _write(d / "in.npz", inputs=np.zeros((2, 8, 8, 1)))],
             ["no x or x_test", "it has: inputs", "(N, 8, 8, 1)"]),
    "wrong shape": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 7, 1)))],
                    ["(2, 8, 7, 1)", "valid: (N, 8, 8, 1)"]),
    "wrong dtype": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1), complex))],
                    ["complex128", "integer (e.g. uint8) or float"]),
    "strings": (lambda d, r: [str(r), _write(d / "in.npz", x=np.array([["a"] * 8] * 8))], ["<U1", "float"]),
    "nan": (lambda d, r: [str(r), _write(d / "in.npz", x=np.full((2, 8, 8, 1), np.nan))], ["NaN", "finite"]),
    "no examples": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((0, 8, 8, 1)))], ["(0, 8, 8, 1)"]),
    "out is the input": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1))), "--out", "in.npz"],
                         ["--out", "the input file"]),
    "out in no dir": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1))), "--out", "no/p.npz"],
                      ["--out", "does not exist"]),
    "negative samples": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1))), "--mc-samples", "-1"],
                         ["--mc-samples", ">= 0"]),
    "zero batch": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1))), "--batch-size", "0"],
                   ["--batch-size", ">= 1"]),
    "unknown flag": (lambda d, r: [str(r), _write(d / "in.npz", x=np.zeros((2, 8, 8, 1))), "--samples", "3"],
                     ["unrecognized arguments: --samples"]),
}


def _text(path):
    path.write_text("not an archive")
    return path.name


def _no_weights(tmp, run_dir):
    """A run dir whose model.safetensors is gone."""
    copy = tmp / "copied_run"
    (copy / ".hydra").mkdir(parents=True)
    (copy / ".hydra" / "config.yaml").write_bytes((run_dir / ".hydra" / "config.yaml").read_bytes())
    (copy / "summary.json").write_bytes((run_dir / "summary.json").read_bytes())
    return copy


@pytest.mark.parametrize("case", list(BAD))
def test_a_mistake_is_one_line_exit_2_and_nothing_written(run_dir, tmp_path, monkeypatch, capsys, case):
    make_args, words = BAD[case]
    monkeypatch.chdir(tmp_path)
    args = make_args(tmp_path, run_dir)
    before, run_before = snapshot(tmp_path), snapshot(run_dir)

    code = main(args)

    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, (word, err)
    assert snapshot(tmp_path) == before and snapshot(run_dir) == run_before


def test_the_command_exits_2_with_one_line_and_no_traceback(cli, run_dir):
    result = cli(str(run_dir), "missing.npz", module="runner.predict")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
