"""Each logger against the metrics.jsonl records it is given, read back with the tool's own reader."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from runner.cli.preflight import preflight
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from runner.rundir.outputs import append_jsonl, read_jsonl
from runner.training import loggers as module
from runner.training.diagnostics import STATS, Buffer
from runner.training.handlers import EpochEnd
from runner.training.loggers import (CsvLogger, JsonlLogger, MlflowLogger, RunStart, TensorBoardLogger, build_loggers,
                                     close_loggers, flat_params)
from tests.conftest import compose_config

PARAMS = {"dense_0": {"kernel": np.arange(12.0).reshape(3, 4) / 7, "bias": np.zeros(4)},
          "head": {"kernel": np.linspace(-1, 1, 8).reshape(4, 2), "bias": np.array([0.5, -0.5])}}
RECORDS = [{"epoch": e, "step": 10 * e, "lr": 0.001 / e, "train_loss": 1.0 / e + 1e-9, "train_accuracy": 0.5 + e / 10,
            "val_loss": 1.1 / e, "val_accuracy": 0.4 + e / 10, "epoch_time_s": 0.123 * e} for e in (1, 2, 3)]


def run_start(run_dir: Path, first_epoch: int = 1, step: int = 0, **params) -> RunStart:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunStart(run_dir, {"optimizer.learning_rate": 0.001, "optimizer._target_": "optax.adam",
                              "regularizer.dropout.on_inputs": False, "model.widths": "null", **params},
                    first_epoch, step)


def epoch_end(record: dict, params=PARAMS, diagnostics: Buffer | None = None) -> EpochEnd:
    raw = {} if diagnostics is None else {"diagnostics": diagnostics}
    return EpochEnd(record["epoch"], 0, SimpleNamespace(params=params), dict(record), raw, last=False)


def feed(logger, records, run_dir: Path) -> None:
    """What a run does at each epoch's end: metrics.jsonl first (the jsonl logger), then this logger."""
    for record in records:
        append_jsonl(run_dir / "metrics.jsonl", record)
        logger.on_epoch_end(epoch_end(record))


# The config as every tool records it.

def test_flat_params_are_the_resolved_config_by_dotted_key_without_ranges_or_loggers():
    cfg = compose_config("logger=[jsonl,tensorboard]", "model.widths=[30,20]")
    flat = flat_params(cfg)
    assert flat["optimizer.learning_rate"] == cfg.optimizer.learning_rate
    assert flat["optimizer._target_"] == "optax.adam"
    assert flat["regularizer.dropout.rate"] == cfg.regularizer.dropout.rate
    assert flat["trainer.early_stopping.monitor"] == "val_loss"
    assert flat["model.widths"] == "[30, 20]" and flat["dataset.data_dir"] == "null"
    assert not any("_valid_" in key or key.startswith("logger") for key in flat)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


# Which loggers a run gets.

@pytest.mark.parametrize("choice, expected", [
    ("logger=[jsonl]", [JsonlLogger]),
    ("logger=[]", [JsonlLogger]),
    ("logger=[csv]", [JsonlLogger, CsvLogger]),
    ("logger=[csv,jsonl]", [CsvLogger, JsonlLogger]),
])
def test_metrics_jsonl_is_written_whatever_the_logger_list(choice, expected, tmp_path):
    loggers = build_loggers(compose_config(choice), tmp_path)
    try:
        assert [type(logger) for logger in loggers] == expected
        for record in RECORDS:
            for logger in loggers:
                logger.on_epoch_end(epoch_end(record))
        assert read_jsonl(tmp_path / "metrics.jsonl") == RECORDS
    finally:
        close_loggers(tmp_path, {"status": "completed"})


# Override values outside each range the logger conf files declare.
OUT_OF_RANGE = {"bool": ["maybe", "null", "1"], "str": ["null", "''"], "null or str": ["''"]}


@pytest.mark.parametrize("path", sorted((CONF_DIR / "logger").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_logger_parameter_out_of_range_is_refused_before_anything_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    specs = yaml.safe_load(path.read_text()).get("_valid_") or {}
    for key, spec in specs.items():
        for value in OUT_OF_RANGE[spec]:
            with pytest.raises(UserError) as refused:
                preflight([f"logger=[{path.stem}]", f"logger.{path.stem}.{key}={value}"])
            assert str(refused.value).startswith(f"logger.{path.stem}.{key}: must be"), str(refused.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("choice, missing", [("tensorboard", "tensorboard.summary.writer.event_file_writer"),
                                            ("mlflow", "mlflow.tracking")])
def test_a_chosen_logger_whose_package_is_missing_is_one_line_naming_the_extra(choice, missing, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` finds when the package is not installed
    with pytest.raises(UserError) as refused:
        build_loggers(compose_config(f"logger=[csv,{choice}]"), tmp_path)
    message = str(refused.value)
    assert message.startswith(f"logger.{choice}: needs the {choice} package") and "[tracking]" in message
    assert "\n" not in message
    assert tmp_path not in module._OPEN  # the loggers built before it were closed again


# CSV.

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_csv_has_one_row_per_epoch_equal_to_the_jsonl_record_from_the_first_epoch_on(tmp_path):
    logger = CsvLogger(run_start(tmp_path))
    for i, record in enumerate(RECORDS):
        append_jsonl(tmp_path / "metrics.jsonl", record)
        logger.on_epoch_end(epoch_end(record))
        assert read_csv(tmp_path / "metrics.csv") == RECORDS[: i + 1]  # synced at each epoch, not at close
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(RECORDS[0])


def test_a_key_first_seen_later_becomes_a_new_last_column_with_earlier_cells_empty(tmp_path):
    logger = CsvLogger(run_start(tmp_path))
    later = {**RECORDS[1], "plateau_scale": 0.5}
    for record in (RECORDS[0], later, {**RECORDS[2], "val_loss": float("nan")}):
        logger.on_epoch_end(epoch_end(record))
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == [*RECORDS[0], "plateau_scale"]
    assert all(len(line.split(",")) == len(RECORDS[0]) + 1 for line in lines)  # every row as wide as the header
    assert read_csv(tmp_path / "metrics.csv") == [
        RECORDS[0], later, {k: v for k, v in RECORDS[2].items() if k != "val_loss"}]  # NaN: empty, as jsonl's null


def test_a_resumed_csv_is_rebuilt_from_metrics_jsonl_cut_back_to_the_checkpoint(tmp_path):
    first = CsvLogger(run_start(tmp_path))
    feed(first, RECORDS, tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")  # resume() keeps epochs <= checkpoint
    resumed = CsvLogger(run_start(tmp_path, first_epoch=2, step=10))
    assert read_csv(tmp_path / "metrics.csv") == RECORDS[:1]
    redone = [{**r, "train_loss": r["train_loss"] + 1} for r in RECORDS[1:]]
    feed(resumed, redone, tmp_path)
    assert read_csv(tmp_path / "metrics.csv") == RECORDS[:1] + redone == read_jsonl(tmp_path / "metrics.jsonl")


# TensorBoard.

def accumulate(logdir: Path) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})  # 0: keep every event
    events.Reload()
    return events


def series(events: EventAccumulator, tag: str) -> dict[int, np.ndarray]:
    """A tag's values by step, as TensorBoard shows them; a step with two values is a mistake."""
    found = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
    assert len({step for step, _ in found}) == len(found), (tag, found)
    return dict(found)


def test_tensorboard_scalars_are_every_record_key_at_the_epochs_step_flushed_each_epoch(tmp_path):
    logger = TensorBoardLogger(run_start(tmp_path))
    drained, flush = [], logger.writer.flush
    logger.writer.flush = lambda: drained.append(flush())  # TensorBoard's flush: every queued event is on disk
    feed(logger, RECORDS, tmp_path)
    assert len(drained) == len(RECORDS)
    events = accumulate(tmp_path / "tensorboard")  # before close: what a crash now would leave
    for key in RECORDS[0]:
        assert series(events, key) == {r["step"]: np.float32(r[key]) for r in RECORDS}, key
    logger.close({"status": "completed", "steps": 30})


def test_tensorboard_histograms_hold_every_weight_by_its_flattened_name(tmp_path):
    logger = TensorBoardLogger(run_start(tmp_path))
    logger.on_epoch_end(epoch_end(RECORDS[0]))
    events = accumulate(tmp_path / "tensorboard")
    for name, weights in (("dense_0/kernel", PARAMS["dense_0"]["kernel"]), ("head/bias", PARAMS["head"]["bias"])):
        [buckets] = series(events, name).values()  # rows: left edge, right edge, count
        assert buckets[:, 2].sum() == weights.size
        assert buckets[0, 0] == weights.min() and buckets[-1, 1] == weights.max()
    assert {"dense_0/bias", "head/kernel"} <= set(events.Tags()["tensors"])
    logger.close({"status": "completed"})
    off = TensorBoardLogger(run_start(tmp_path / "off"), histograms=False)
    off.on_epoch_end(epoch_end(RECORDS[0]))
    off.close({"status": "completed"})
    assert "dense_0/kernel" not in accumulate(tmp_path / "off" / "tensorboard").Tags()["tensors"]


def test_tensorboard_grad_norms_are_each_diagnosed_steps_per_layer_values(tmp_path):
    values = np.zeros((3, len(STATS), 2), np.float32)  # capacity 3, two layers; one row unused
    grad = STATS.index("grad_norm")
    values[0, grad], values[1, grad] = [0.25, 2.0], [0.125, 4.0]
    buffer = Buffer(np.array([0, 5, -1]), values, np.array(2))
    logger = TensorBoardLogger(run_start(tmp_path))
    logger.on_epoch_end(epoch_end(RECORDS[0], diagnostics=buffer))
    events = accumulate(tmp_path / "tensorboard")
    assert series(events, "grad_norm/dense_0") == {0: 0.25, 5: 0.125}
    assert series(events, "grad_norm/head") == {0: 2.0, 5: 4.0}
    logger.close({"status": "completed"})


@pytest.mark.parametrize("status, expected", [("completed", "STATUS_SUCCESS"), ("early_stopped", "STATUS_SUCCESS"),
                                              ("diverged", "STATUS_FAILURE"), ("failed", "STATUS_FAILURE"),
                                              ("interrupted", "STATUS_UNKNOWN")])
def test_tensorboard_hparams_are_the_config_and_the_session_ends_with_the_runs_status(status, expected, tmp_path):
    run = run_start(tmp_path)
    logger = TensorBoardLogger(run)
    feed(logger, RECORDS[:1], tmp_path)
    logger.close({"status": status, "steps": 10, "best_val_accuracy": 0.75, "test_accuracy": None})
    events = accumulate(tmp_path / "tensorboard")
    content = events.PluginTagToContent("hparams")
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hparams == run.params
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.Status.Value(expected)
    assert series(events, "best_val_accuracy") == {10: 0.75}
    assert "test_accuracy" not in events.Tags()["tensors"]  # unknown (interrupted, no test): not written as 0


def test_a_resumed_tensorboard_run_hides_what_came_after_the_checkpoint(tmp_path):
    crashed = TensorBoardLogger(run_start(tmp_path))
    feed(crashed, RECORDS, tmp_path)  # epochs 1-3 written, then a crash: never closed; checkpoint at epoch 1
    crashed.writer.close()
    time.sleep(1.05)  # TensorBoard reads a dir's event files in name order, and names start with the second
    resumed = TensorBoardLogger(run_start(tmp_path, first_epoch=2, step=RECORDS[0]["step"]))
    redone = [{**r, "train_loss": r["train_loss"] + 1} for r in RECORDS[1:]]
    for record in redone:
        resumed.on_epoch_end(epoch_end(record))
    resumed.close({"status": "completed"})
    # The reader TensorBoard's server uses (the legacy EventAccumulator purges only legacy summaries).
    events = plugin_event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert series(events, "train_loss") == {r["step"]: np.float32(r["train_loss"]) for r in RECORDS[:1] + redone}
    assert len(events.PluginTagToContent("hparams")) == 2  # the session's start written once, its end at close


# MLflow.

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module's tests (making its tables takes a second or two)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def mlflow_logger(run: RunStart, store: str, experiment: str) -> MlflowLogger:
    return MlflowLogger(run, tracking_uri=store, experiment=experiment)


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_mlflow_run_holds_the_config_as_params_and_each_epoch_at_step_epoch(tmp_path, store):
    run = run_start(tmp_path / "run")
    (tmp_path / "run" / "plot.png").write_bytes(b"\x89PNG")
    logger = mlflow_logger(run, store, "params")
    feed(logger, RECORDS, tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text("{}")
    logger.close({"status": "completed", "test_accuracy": 0.9, "best_val_accuracy": 0.7, "devices": ["cpu"]})
    client = MlflowClient(tracking_uri=store)
    [found] = client.search_runs([client.get_experiment_by_name("params").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params == {k: str(v) for k, v in run.params.items()}
    for key in RECORDS[0]:
        assert history(client, found.info.run_id, key) == {r["epoch"]: r[key] for r in RECORDS}, key
    assert found.data.metrics["test_accuracy"] == 0.9 and found.data.tags["runner.status"] == "completed"
    assert {a.path for a in client.list_artifacts(found.info.run_id)} == {"summary.json", "plot.png"}


@pytest.mark.parametrize("status, expected", [("completed", "FINISHED"), ("early_stopped", "FINISHED"),
                                              ("interrupted", "KILLED"), ("diverged", "FAILED"),
                                              ("failed", "FAILED")])
def test_mlflow_run_status_follows_the_runs_outcome(status, expected, tmp_path, store):
    logger = mlflow_logger(run_start(tmp_path), store, "status")
    logger.close({"status": status})
    assert MlflowClient(tracking_uri=store).get_run(logger.run_id).info.status == expected


def test_a_resumed_run_continues_its_mlflow_run_and_a_changed_param_becomes_a_tag(tmp_path, store):
    first = mlflow_logger(run_start(tmp_path, **{"trainer.epochs": 2}), store, "resume")
    feed(first, RECORDS[:2], tmp_path)
    first.close({"status": "completed"})
    resumed = mlflow_logger(run_start(tmp_path, first_epoch=3, step=20, **{"trainer.epochs": 3}), store, "resume")
    assert resumed.run_id == first.run_id
    feed(resumed, RECORDS[2:], tmp_path)
    resumed.close({"status": "completed"})
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(first.run_id)
    assert run.data.params["trainer.epochs"] == "2" and run.data.tags["resumed_with.trainer.epochs"] == "3"
    assert history(client, first.run_id, "train_loss") == {r["epoch"]: r["train_loss"] for r in RECORDS}


def test_a_logger_added_on_resume_starts_with_the_history_of_metrics_jsonl(tmp_path, store):
    for record in RECORDS[:2]:
        append_jsonl(tmp_path / "metrics.jsonl", record)
    logger = mlflow_logger(run_start(tmp_path, first_epoch=3, step=20), store, "added")
    tensorboard = TensorBoardLogger(run_start(tmp_path, first_epoch=3, step=20))
    for each in (logger, tensorboard):
        each.on_epoch_end(epoch_end(RECORDS[2]))
        each.close({"status": "completed"})
    assert history(MlflowClient(tracking_uri=store), logger.run_id, "lr") == {r["epoch"]: r["lr"] for r in RECORDS}
    assert series(accumulate(tmp_path / "tensorboard"), "lr") == {r["step"]: np.float32(r["lr"]) for r in RECORDS}


PARALLEL_JOB = """
import sys
from pathlib import Path
from runner.training.loggers import MlflowLogger, RunStart
run_dir = Path(sys.argv[1])
run_dir.mkdir()
MlflowLogger(RunStart(run_dir, {"job": run_dir.name}, 1, 0), tracking_uri=sys.argv[2], experiment="sweep").close(
    {"status": "completed"})
"""


def test_parallel_sweep_jobs_share_a_new_sqlite_store(tmp_path):
    store = f"sqlite:///{tmp_path}/outputs/mlflow.db"  # new: the jobs race to create its tables
    # Two jobs are a race (each a process of ~2.5 CPU-s: importing mlflow, and making or finding the tables).
    jobs = [subprocess.Popen([sys.executable, "-c", PARALLEL_JOB, str(tmp_path / f"job{i}"), store],
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert [(job.wait(timeout=120), job.stderr.read()) for job in jobs] == [(0, "")] * 2
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["job"] for r in runs) == ["job0", "job1"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_an_unusable_tracking_uri_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(UserError) as refused:
        MlflowLogger(run_start(tmp_path), tracking_uri="nosuchscheme://x", experiment="e")
    assert str(refused.value).startswith("logger.mlflow.tracking_uri: cannot record to nosuchscheme://x")
    assert "\n" not in str(refused.value)


# Ending: every run's loggers are closed, also when the run never reaches close_loggers.

CRASH = """
import sys
from pathlib import Path
from runner.config.compose import compose_config
from runner.training.loggers import build_loggers
loggers = build_loggers(compose_config("logger=[tensorboard,mlflow]", "logger.mlflow.tracking_uri=" + sys.argv[2]),
                        Path(sys.argv[1]))
raise RuntimeError("a bug mid-run")
"""


def test_a_run_that_crashes_ends_its_mlflow_run_failed_and_its_tensorboard_session_failed(tmp_path, store):
    result = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), store], capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert "a bug mid-run" in result.stderr and result.returncode == 1
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("runner").experiment_id],
                               filter_string=f"tags.`runner.run_dir` = '{tmp_path.resolve()}'")
    assert run.info.status == "FAILED"
    content = accumulate(tmp_path / "tensorboard").PluginTagToContent("hparams")
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE


def test_a_run_left_open_is_closed_as_failed_when_the_next_run_of_the_process_starts(tmp_path, store):
    cfg = compose_config("logger=[mlflow]", f"logger.mlflow.tracking_uri={store}", "logger.mlflow.experiment=stale")
    [_, stale] = build_loggers(cfg, tmp_path / "a")  # a sweep job that raised: finish never ran
    build_loggers(cfg, tmp_path / "b")
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(stale.run_id).info.status == "FAILED"
    close_loggers(tmp_path / "b", {"status": "completed"})


def test_one_logger_failing_to_close_does_not_keep_the_others_open(tmp_path):
    class Broken:
        def close(self, summary):
            raise OSError("disk full")

    tensorboard = TensorBoardLogger(run_start(tmp_path))
    module._OPEN[tmp_path] = [Broken(), tensorboard]
    with pytest.raises(OSError):
        close_loggers(tmp_path, {"status": "completed"})
    content = accumulate(tmp_path / "tensorboard").PluginTagToContent("hparams")
    assert hparams_metadata.SESSION_END_INFO_TAG in content
