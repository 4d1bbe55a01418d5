"""`python -m runner logger=[...]`: one real run, each tool's output read back with the tool's own reader."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from tests.conftest import Runner, read_metrics, read_summary

DIAGNOSTICS_EVERY = 2  # steps: 4 of the run's 8


def expected_params(config: dict) -> dict:
    """The saved config (.hydra/config.yaml) by dotted key, as the loggers record it: without ranges and the
    logger group; null as "null", lists as JSON."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "_valid_":
                    walk(value, f"{prefix}.{key}" if prefix else key)
        else:
            flat[prefix] = "null" if node is None else json.dumps(node) if isinstance(node, list) else node

    walk({k: v for k, v in config.items() if k != "logger"}, "")
    return flat


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tfds_dir):
    """One run with every logger, shared by the tests that read its outputs: 2 epochs of 4 steps (128 examples)
    of a 16-wide net, what each tool records being what matters, not what it learns."""
    cli = Runner(tmp_path_factory.mktemp("tracked"), tfds_dir)
    run_dir = cli.cwd / "outputs" / "tracked"  # beside outputs/mlflow.db and outputs/mlruns, the default store
    result = cli("logger=[jsonl,csv,tensorboard,mlflow]", "trainer.epochs=2", "dataset.train_subset=128",
                 "model.width=16", f"trainer.diagnostics_every={DIAGNOSTICS_EVERY}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return cli, run_dir, result


@pytest.mark.xdist_group("tracked_run")  # one worker runs the fixture once
def test_a_tracked_run_says_nothing_more_on_stderr(tracked_run):
    _, _, result = tracked_run
    assert result.stderr == "", result.stderr  # no warnings or INFO chatter from the tools


@pytest.mark.xdist_group("tracked_run")  # one worker runs the fixture once
def test_metrics_csv_rows_are_the_metrics_jsonl_records(tracked_run):
    _, run_dir, _ = tracked_run
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert rows == read_metrics(run_dir) and len(rows) == 2


@pytest.mark.xdist_group("tracked_run")  # one worker runs the fixture once
def test_tensorboard_shows_the_runs_metrics_grad_norms_weights_and_hparams(tracked_run):
    _, run_dir, _ = tracked_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()

    def series(tag):
        return {e.step: tensor_util.make_ndarray(e.tensor_proto).item() for e in events.Tensors(tag)}

    metrics = read_metrics(run_dir)
    for key in metrics[0]:  # every key of the record, lr included, at the step that ended its epoch
        assert series(key) == {m["step"]: float(np.float32(m[key])) for m in metrics}, key
    diagnosed = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").read_text().splitlines()]
    assert len(diagnosed) > 2
    for layer in ("dense_0", "dense_1", "dense_2", "head"):
        assert series(f"grad_norm/{layer}") == {
            d["step"]: float(np.float32(next(x["grad_norm"] for x in d["layers"] if x["name"] == layer)))
            for d in diagnosed}, layer
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    width = config["model"]["width"]
    for name, size in (("dense_0/kernel", 64 * width), ("head/kernel", width * 10), ("head/bias", 10)):
        histograms = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in events.Tensors(name)}
        assert sorted(histograms) == [m["step"] for m in metrics], name
        assert all(buckets[:, 2].sum() == size for buckets in histograms.values()), name  # count column
    content = events.PluginTagToContent("hparams")
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()} == expected_params(config)
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    summary = read_summary(run_dir)
    assert series("best_val_accuracy") == {summary["steps"]: float(np.float32(summary["best_val_accuracy"]))}


@pytest.mark.xdist_group("tracked_run")  # one worker runs the fixture once
def test_mlflow_holds_a_finished_run_with_the_config_the_epochs_and_the_summary(tracked_run):
    cli, run_dir, _ = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{cli.cwd}/outputs/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("runner").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["runner.run_dir"] == str(run_dir.resolve())
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert run.data.params == {k: str(v) for k, v in expected_params(config).items()}
    metrics = read_metrics(run_dir)
    for key in metrics[0]:
        assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} == {
            r["epoch"]: r[key] for r in metrics}, key
    summary = read_summary(run_dir)
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "hydra"}
    artifacts = client.download_artifacts(run.info.run_id, "summary.json", str(cli.cwd))
    assert json.loads(open(artifacts).read()) == summary


MISSING_TENSORBOARD = """
import sys
sys.modules["tensorboard"] = None  # as if the tracking extra were not installed
sys.argv = ["runner", *sys.argv[1:]]
from runner.__main__ import cli
cli()
"""


def test_a_chosen_logger_without_its_package_is_one_line_exit_2_and_leaves_nothing(cli):
    result = subprocess.run([sys.executable, "-c", MISSING_TENSORBOARD, "logger=[tensorboard]", "trainer.epochs=1"],
                            cwd=cli.cwd, env=cli.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "logger.tensorboard: needs the tensorboard package" in line and "[tracking]" in line
    assert not any(path.is_file() for path in cli.cwd.rglob("*"))  # the run dir it claimed is taken back
