"""Experiment tracking: each epoch's metrics record, written in the format of each tool the `logger` group chose.

A logger is an epoch-end handler (runner/training/handlers.py) with a constructor and a `close`:

    Logger(run: RunStart, **its conf file's parameters)   the run starts: open files, record the hyperparameters
    on_epoch_end(end)                                     write the epoch's record (and what else the tool shows)
    close(summary)                                        the run ended as summary.json says: final numbers, status

`build_loggers` builds the chosen ones (conf/logger/*.yaml, several at once: `logger=[jsonl,tensorboard,mlflow]`);
`close_loggers` ends them with the run's summary. metrics.jsonl is the runner's own record (resume and the report
read it), so the jsonl logger is always built, chosen or not. Every logger writes each epoch through to disk
before the next begins, so a crash loses at most the epoch being written; a run that ends without reaching
`close_loggers` (an exception, a failed job of a sweep) is closed as its summary.json says when the next run of
the process starts, or when the process exits. The tools' packages (pip extra `tracking`) are imported only
when chosen; `check_logger_packages` says before the run starts that one is missing, and how to install it the
way the runner itself was installed (`install_command`). Importing this module imports no JAX: the checks run
before it loads.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import dataclasses
import fcntl
import importlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig

from runner.config.checks import strip_specs
from runner.errors import UserError, first_line
from runner.rundir.claim import note_created
from runner.rundir.outputs import append_jsonl, finite_or_none, write_atomic
from runner.rundir.records import METRICS_FILE, SUMMARY_FILE, leave_out, read_metrics, read_summary
from runner.scale.launchers import environ

if TYPE_CHECKING:  # the loop's types; importing them would import JAX
    from runner.training.handlers import EpochEnd

EXTRA = "tracking"  # the pip extra that holds every tool's package (pyproject.toml)
# Summary numbers that rank runs: TensorBoard's HParams view and MLflow's run table show them beside the config.
FINAL_METRICS = ("best_val_accuracy", "test_accuracy", "test_loss")


@dataclasses.dataclass(frozen=True)
class RunStart:
    """What a logger is told when the run starts."""

    run_dir: Path
    params: dict[str, bool | int | float | str]  # the resolved config, flattened: optimizer.learning_rate -> 0.001
    first_epoch: int  # 1, or the epoch a resumed run continues with
    step: int  # train steps taken before first_epoch

    @property
    def resumed(self) -> bool:
        return self.first_epoch > 1


class Logger(Protocol):
    def on_epoch_end(self, end: EpochEnd) -> None: ...

    def close(self, summary: dict) -> None: ...


def flat_params(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The resolved config as `group.key` -> a value every tool takes (null as "null", lists as JSON)."""
    plain = strip_specs(cfg)
    plain.pop("logger", None)  # where a run is recorded is not a property of the run
    flat = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif node is None:
            flat[prefix] = "null"
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = json.dumps(node)

    walk(plain, "")
    return flat


def _history(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl so far (a resumed run has cut it back to its checkpoint; a torn line is left out)."""
    return read_metrics(run_dir / METRICS_FILE, on_bad_line=leave_out)


def numbers(record: dict) -> dict[str, int | float]:
    """The record's finite numbers (metrics.jsonl writes a non-finite one as null; the tools skip it too)."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and finite_or_none(float(v)) is not None}


def install_command(extra: str = EXTRA, distribution: str = "runner") -> str:
    """The pip command that adds `extra` to the runner as it is installed here.

    pip records how it installed a distribution in its direct_url.json (PEP 610): an editable install of a checkout
    (`dir_info.editable`) takes the checkout again, in compat mode as `make install` does (README: hydra_plugins/);
    any other install (a wheel, an index) takes the extra by the distribution's name, which pip adds to the
    installed version."""
    # The installed distribution's record; a checkout's own runner.egg-info (on sys.path too) has none.
    recorded = (d.read_text("direct_url.json") for d in importlib.metadata.distributions(name=distribution))
    try:
        direct = json.loads(next((text for text in recorded if text), "{}"))
    except ValueError:
        direct = {}
    if direct.get("dir_info", {}).get("editable") and direct.get("url", "").startswith("file:"):
        checkout = Path(unquote(urlparse(direct["url"]).path))
        where = "." if checkout.resolve() == Path.cwd().resolve() else str(checkout)
        return f"pip install -e '{where}[{extra}]' --config-settings editable_mode=compat"
    return f"pip install '{distribution}[{extra}]'"


def _missing(key: str, package: str) -> UserError:
    """The one line for a chosen tool whose package is not installed."""
    return UserError(f"{key}: needs the {package} package, which is not installed; valid: install the "
                     f"{EXTRA} extra ({install_command()}), or drop {key.split('.')[-1]} from the logger list")


def _import(key: str, module: str) -> Any:
    """A tool's module, or the one-line UserError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing(key, module.split(".")[0]) from None


def check_logger_packages(cfg: DictConfig) -> None:
    """Raise the one-line UserError for the first chosen logger whose tool is not installed, before anything runs.

    A logger class of this module names the modules it imports as `PACKAGES`; a logger of one's own (a `_target_`
    elsewhere) is not looked into. Finding a module imports nothing (importlib.util.find_spec)."""
    for name, node in (cfg.get("logger") or {}).items():
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        module, _, attribute = target.rpartition(".")
        if module != __name__:
            continue
        for package in getattr(globals().get(attribute), "PACKAGES", ()):
            try:
                found = importlib.util.find_spec(package) is not None
            except (ImportError, ValueError):  # a parent package that is not there, or a broken one
                found = False
            if not found:
                raise _missing(f"logger.{name}", package)


class JsonlLogger:
    """metrics.jsonl: one JSON line per epoch, appended and synced (a crash loses at most the line being written)."""

    def __init__(self, run: RunStart):
        self.path = run.run_dir / METRICS_FILE

    def on_epoch_end(self, end: EpochEnd) -> None:
        append_jsonl(self.path, end.record)

    def close(self, summary: dict) -> None:
        del summary  # every line was synced as it was written


class CsvLogger:
    """metrics.csv: metrics.jsonl as a table, one row per epoch, synced per epoch.

    Columns are the record keys in the order first seen. A key first seen at a later epoch becomes a new last
    column and the file is rewritten whole (atomically) with that cell empty in earlier rows: a reader never sees
    a row longer than the header. At the start the table is rebuilt from metrics.jsonl, which a resumed run has
    cut back to its checkpoint, so the two files always hold the same epochs.
    """

    def __init__(self, run: RunStart):
        self.path = run.run_dir / "metrics.csv"
        self.rows = [numbers(r) for r in _history(run.run_dir)]
        self.columns = list(dict.fromkeys(k for row in self.rows for k in row))
        if self.rows or self.path.exists():
            self._rewrite()

    def on_epoch_end(self, end: EpochEnd) -> None:
        row = numbers(end.record)
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not self.path.exists():
            self.columns += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            f.write(self._lines([row]))
            f.flush()
            os.fsync(f.fileno())

    def close(self, summary: dict) -> None:
        del summary  # every row was synced as it was written

    def _rewrite(self) -> None:
        header = dict(zip(self.columns, self.columns))
        write_atomic(self.path, self._lines([header] + self.rows) if self.columns else "")

    def _lines(self, rows: list[dict]) -> str:
        out = io.StringIO()
        # repr of a float reads back as the same float; a key the row lacks is an empty cell
        csv.writer(out, lineterminator="\n").writerows([[row.get(k, "") for k in self.columns] for row in rows])
        return out.getvalue()


# TensorBoard's hparams plugin statuses (tensorboard/plugins/hparams/api.proto) by summary.json status.
_TENSORBOARD_STATUS = {"completed": "STATUS_SUCCESS", "early_stopped": "STATUS_SUCCESS",
                       "diverged": "STATUS_FAILURE", "failed": "STATUS_FAILURE"}


class TensorBoardLogger:
    """Event files in <run dir>/tensorboard/, written with TensorBoard's own writer and summary protos (no TensorFlow).

    The x-axis of everything is the train step: each epoch's record at the step that ended the epoch, each
    diagnosed step's per-layer gradient norms at that step, weight histograms at each epoch's end. The resolved
    config is the HParams view's hyperparameters (session start), with the final metrics and the run's status
    written at the end. TensorBoard's writer (not tensorboardX's, whose flush leaves queued events unwritten)
    drains its queue on flush, done once per epoch.
    """

    PACKAGES = ("tensorboard",)

    def __init__(self, run: RunStart, histograms: bool = True):
        key = "logger.tensorboard"
        writer = _import(key, "tensorboard.summary.writer.event_file_writer")
        self.pb = {name: _import(key, module) for name, module in (
            ("event", "tensorboard.compat.proto.event_pb2"), ("summary", "tensorboard.compat.proto.summary_pb2"),
            ("scalar", "tensorboard.plugins.scalar.summary_v2"),
            ("histogram", "tensorboard.plugins.histogram.summary_v2"),
            ("hparams", "tensorboard.plugins.hparams.summary_v2"),
            ("hparams_metadata", "tensorboard.plugins.hparams.metadata"),
            ("hparams_data", "tensorboard.plugins.hparams.plugin_data_pb2"),
            ("hparams_api", "tensorboard.plugins.hparams.api_pb2"))}
        self.histograms, self.layers = histograms, None
        logdir = run.run_dir / "tensorboard"
        note_created(logdir)
        continued = any(logdir.glob("events.out.tfevents.*"))
        self.writer = writer.EventFileWriter(str(logdir))
        # A session start. A later one is a restart: TensorBoard then drops every earlier event at a step >= its
        # own, so a resumed run hides what was written after its checkpoint (before a crash) and is redone now.
        # (+1: the checkpoint's own epoch ends at `run.step`.)
        event = self.pb["event"]
        self.writer.add_event(event.Event(wall_time=time.time(), step=run.step + 1 if run.resumed else 0,
                                          session_log=event.SessionLog(status=event.SessionLog.START)))
        if not continued:
            self._add(self.pb["hparams"].hparams_pb(run.params), 0)
            for record in _history(run.run_dir) if run.resumed else ():
                self._scalars(record)  # a logger added on resume starts with the history so far
        self.writer.flush()

    def on_epoch_end(self, end: EpochEnd) -> None:
        import flax
        import numpy as np

        from runner.training.diagnostics import layer_names, to_records

        self._scalars(end.record)
        step = end.record["step"]
        if "diagnostics" in end.raw:
            self.layers = self.layers or layer_names(end.state.params)
            for diagnosed in to_records(end.epoch, end.raw["diagnostics"], self.layers):
                for layer in diagnosed["layers"]:
                    if layer["grad_norm"] is not None:
                        self._add(self.pb["scalar"].scalar_pb(f"grad_norm/{layer['name']}", layer["grad_norm"]),
                                  diagnosed["step"])
        if self.histograms:
            for name, weights in flax.traverse_util.flatten_dict(end.state.params, sep="/").items():
                self._add(self.pb["histogram"].histogram_pb(name, np.asarray(weights)), step)
        self.writer.flush()

    def close(self, summary: dict) -> None:
        step = summary.get("steps") or 0
        for key, value in numbers({k: summary.get(k) for k in FINAL_METRICS}).items():
            self._add(self.pb["scalar"].scalar_pb(key, value), step)
        api, data, metadata = self.pb["hparams_api"], self.pb["hparams_data"], self.pb["hparams_metadata"]
        status = api.Status.Value(_TENSORBOARD_STATUS.get(summary.get("status"), "STATUS_UNKNOWN"))
        plugin_data = data.HParamsPluginData(session_end_info=data.SessionEndInfo(status=status,
                                                                                  end_time_secs=time.time()))
        end = self.pb["summary"].Summary()
        end.value.add(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(plugin_data),
                      tensor=metadata.NULL_TENSOR)
        self._add(end, step)
        self.writer.close()

    def _scalars(self, record: dict) -> None:
        for key, value in numbers(record).items():
            self._add(self.pb["scalar"].scalar_pb(key, value), record["step"])

    def _add(self, summary: Any, step: int) -> None:
        self.writer.add_event(self.pb["event"].Event(wall_time=time.time(), step=int(step), summary=summary))


# MLflow's HTTP settings for a run's first requests to a tracking server (its defaults: 7 retries with growing
# backoff, 120 s a request, minutes before a server that is down is reported); the run's later requests keep them.
MLFLOW_FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def _unreachable(error: Exception, settings: dict[str, str]) -> str:
    """Why a tracking server could not be reached, in a few words; else the error's first line."""
    text = str(error)
    valid = "; valid: the URI of a running MLflow server, or a local store (sqlite:///outputs/mlflow.db)"
    if "Connection refused" in text:
        return "connection refused: no server listens there" + valid
    if "timed out" in text or "timeout" in text.lower():
        return f"no answer within MLFLOW_HTTP_REQUEST_TIMEOUT={settings['MLFLOW_HTTP_REQUEST_TIMEOUT']} s" + valid
    if "Name or service not known" in text or "Failed to resolve" in text or "nodename nor servname" in text:
        return "unknown host" + valid
    return first_line(error)


# MLflow run statuses by summary.json status.
_MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "interrupted": "KILLED",
                  "diverged": "FAILED", "failed": "FAILED"}
RUN_DIR_TAG = "runner.run_dir"  # finds the MLflow run of a run dir again when it resumes
MLFLOW_BATCH = 100  # MLflow takes at most 100 params per log_batch call


class MlflowLogger:
    """An MLflow run through MLflow's client: params, per-epoch metrics (step = epoch), artifacts, status.

    The default store is SQLite (MLflow 3 refuses its old file store unless told to allow it); its file's dir is
    made, artifacts go to mlruns/ beside it, and <store>.lock lets one job at a time of a parallel sweep open it.
    A resumed run continues the MLflow run tagged with its run dir.
    """

    PACKAGES = ("mlflow",)  # mlflow-skinny's; its SQLite store's sqlalchemy and alembic come with the extra too

    def __init__(self, run: RunStart, tracking_uri: str, experiment: str, artifact_location: str | None = None,
                 run_name: str | None = None):
        self.key = "logger.mlflow"
        tracking = _import(self.key, "mlflow.tracking")
        self.entities = _import(self.key, "mlflow.entities")
        self.errors = _import(self.key, "mlflow.exceptions").MlflowException
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables, ...) are not news
        self.run_dir, self.summary_path = run.run_dir, run.run_dir / "summary.json"
        database = tracking_uri.removeprefix("sqlite:///") if tracking_uri.startswith("sqlite:///") else None
        if database is not None:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            if artifact_location is None:
                artifact_location = str(Path(database).parent / "mlruns")
        if artifact_location is not None and "://" not in artifact_location:
            artifact_location = Path(artifact_location).resolve().as_uri()  # found from any working dir
        # The first requests bound: a server that is down or silent is one line within seconds, not MLflow's
        # minutes of retries. A setting of the user's environment stands.
        first_contact = {k: os.environ.get(k, v) for k, v in MLFLOW_FIRST_CONTACT.items()}
        try:
            with environ(first_contact):
                with store_lock(database):
                    self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
                    experiment_id = self._experiment(experiment, artifact_location)
                self.run_id = self._start(experiment_id, run, run_name)
        except (OSError, ImportError, self.errors) as e:  # an unknown scheme, an unreachable server, a bad file
            raise UserError(f"{self.key}.tracking_uri: cannot record to {tracking_uri}: "
                            f"{_unreachable(e, first_contact)}") from None

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except self.errors:  # a parallel job of the same sweep created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise UserError(f"{self.key}.experiment: {name!r} is deleted in this store; valid: another name, "
                            f"or restore it (mlflow experiments restore --experiment-id {found.experiment_id})")
        return found.experiment_id

    def _start(self, experiment_id: str, run: RunStart, run_name: str | None) -> str:
        run_dir = str(run.run_dir.resolve())
        quote = '"' if "'" in run_dir else "'"
        earlier = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = {quote}{run_dir}{quote}") if run.resumed else []
        if earlier:
            previous = earlier[0]
            self.client.update_run(previous.info.run_id, status="RUNNING")
            self._params(previous.info.run_id, run.params, previous.data.params)
            return previous.info.run_id
        created = self.client.create_run(experiment_id, run_name=run_name or str(run.run_dir),
                                         tags={RUN_DIR_TAG: run_dir})
        self._params(created.info.run_id, run.params, {})
        for record in _history(run.run_dir) if run.resumed else ():
            self._metrics(created.info.run_id, record)  # a logger added on resume starts with the history so far
        return created.info.run_id

    def _params(self, run_id: str, params: dict, logged: dict) -> None:
        """Log the params the run lacks; MLflow forbids changing one, so a value a resume changed is a tag."""
        Param, RunTag = self.entities.Param, self.entities.RunTag
        new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"resumed_with.{k}", str(v)) for k, v in params.items() if k in logged
                   and logged[k] != str(v)]
        for i in range(0, max(len(new), len(changed)), MLFLOW_BATCH):
            self.client.log_batch(run_id, params=new[i:i + MLFLOW_BATCH], tags=changed[i:i + MLFLOW_BATCH])

    def _metrics(self, run_id: str, record: dict) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[self.entities.Metric(k, v, now, int(record["epoch"]))
                                               for k, v in numbers(record).items()])

    def on_epoch_end(self, end: EpochEnd) -> None:
        self._metrics(self.run_id, end.record)

    def close(self, summary: dict) -> None:
        status = summary.get("status")
        try:
            now, step = int(time.time() * 1000), int(summary.get("epochs") or 0)
            self.client.log_batch(
                self.run_id, metrics=[self.entities.Metric(k, v, now, step) for k, v in numbers(summary).items()],
                tags=[self.entities.RunTag("runner.status", str(status))]
                + ([self.entities.RunTag("runner.reason", str(summary["reason"]))] if summary.get("reason") else []))
            # The config under hydra/, not .hydra/: `python -m runner.report` takes a dir holding .hydra for a run.
            self._artifact(self.run_dir / ".hydra" / "config.yaml", "hydra")
            for path in [self.summary_path, *sorted(self.run_dir.rglob("*.png"))]:
                parent = path.parent.relative_to(self.run_dir).as_posix()
                self._artifact(path, None if parent == "." else parent)
        finally:
            self.client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(status, "FAILED"))

    def _artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)


@contextlib.contextmanager
def store_lock(database: str | None) -> Iterator[None]:
    """Hold `<database>.lock` (the kernel's flock): the parallel jobs of a sweep would otherwise each create a new
    SQLite store's tables at once, and all but one fail. A server (database None) needs no lock."""
    if database is None:
        yield
        return
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_OPEN: dict[Path, list[Logger]] = {}  # the loggers of each run dir this process started and has not closed


def build_loggers(cfg: DictConfig, run_dir: Path, first_epoch: int = 1, step: int = 0,
                  alongside: bool = False) -> list[Logger]:
    """The loggers the `logger` group chose (jsonl always among them, first), started for this run.

    `first_epoch` and `step`: where a resumed run continues (its first epoch, the train steps before it).
    `alongside`: the run trains beside others of this process that are still open (the members of a
    trainer.replicas run, runner/cli/replicas.py), so theirs are not closed as left over.
    """
    if not alongside:
        _close_left_open()  # runs of this process that never reached close_loggers: they failed
    from runner.training.build import instantiate  # imports JAX: only once a run builds its loggers

    run = RunStart(Path(run_dir), flat_params(cfg), first_epoch, step)
    loggers: list[Logger] = []
    try:
        for name, node in (cfg.get("logger") or {}).items():
            loggers.append(instantiate(node, f"logger.{name}", _partial_=True)(run))
        if not any(isinstance(logger, JsonlLogger) for logger in loggers):
            loggers.insert(0, JsonlLogger(run))  # metrics.jsonl is what resume and the report read
    except BaseException:
        _close_each(loggers, {"status": "failed"})
        raise
    if not _OPEN:
        atexit.unregister(_close_left_open)
        atexit.register(_close_left_open)  # after the tools' own exit hooks, so it runs before them
    _OPEN[run.run_dir] = loggers
    return loggers


def close_loggers(run_dir: Path, summary: dict) -> None:
    """End the run's loggers with its summary (status, test metrics); raises the first logger's error, if any."""
    _close_each(_OPEN.pop(Path(run_dir), []), summary)


def _close_each(loggers: list[Logger], summary: dict) -> None:
    error = None
    for logger in loggers:  # each one, even when one before it fails
        try:
            logger.close(summary)
        except Exception as e:
            error = error or e
    if error is not None:
        raise error


def saved_summary(run_dir: Path) -> dict:
    """The run's summary.json (a failed run's says why), or a failed status when it has none."""
    try:
        return read_summary(Path(run_dir) / SUMMARY_FILE)
    except UserError:
        return {"status": "failed"}


def _close_left_open() -> None:
    """Close the loggers of runs that ended without close_loggers, as their summary.json says."""
    for run_dir in list(_OPEN):
        try:
            close_loggers(run_dir, saved_summary(run_dir))
        except Exception:  # that run has ended: its epochs were written as they ended, and no one is left to tell
            pass
