"""Hydra callbacks, registered under `hydra.callbacks` in conf/config.yaml."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.console import Console
from runner.errors import UserError


class MultirunReport(Callback):
    """When a multirun ends, writes its report (runner.report.tables) into `<sweep dir>/report/` and prints the table;
    when it starts, keeps its command line for its jobs (an interrupted job says how to continue the sweep).

    `baseline` (overrides naming one config, as `python -m runner.report --baseline` takes them) adds the
    ablation: `'hydra.callbacks.report.baseline="activation=relu"'` on the command line (quoted: Hydra takes a
    value holding `=` only in quotes). One that names no config or several costs the ablation, not the report.
    """

    def __init__(self, plots: bool = True, baseline: str | None = None):
        self.plots, self.baseline = plots, baseline

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Keep the sweep's command line for its jobs (runner.cli.run.continue_with): a job knows only its own
        overrides, and runs in this process or a child of it (joblib, submitit), which inherits the variable."""
        os.environ[SWEEP_ARGV] = json.dumps({"sweep_dir": str(config.hydra.sweep.dir), "argv": sys.argv[1:]})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.report.stats import BaselineError
        from runner.report.tables import write_report  # matplotlib loads only when a multirun has ended

        console = Console(label="")  # the sweep's own process: no job's label
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            try:
                write_report([sweep_dir], plots=self.plots, console=console, baseline=self.baseline)
            except BaselineError as e:  # the sweep's results still deserve their report
                console.warn(f"no ablation: {e}")
                write_report([sweep_dir], plots=self.plots, console=console)
        except UserError as e:  # e.g. every job failed before writing anything: the jobs said why
            console.warn(f"no multirun report: {e}")


SWEEP_ARGV = "RUNNER_SWEEP_ARGV"  # {"sweep_dir", "argv"}: the command line of the sweep this process works for


def sweep_command_line(sweep_dir: Path) -> list[str] | None:
    """The arguments of `python -m runner` that started the sweep writing into `sweep_dir` (flags and overrides,
    `-m` among them): as kept at its start, else as its multirun.yaml records them (Hydra's basic sweeper writes
    one); None when neither says."""
    kept = json.loads(os.environ.get(SWEEP_ARGV) or "{}")
    if kept.get("sweep_dir") is not None and Path(kept["sweep_dir"]).resolve() == Path(sweep_dir).resolve():
        return list(kept["argv"])
    saved = Path(sweep_dir) / "multirun.yaml"
    try:
        overrides = OmegaConf.load(saved).hydra.overrides
    except Exception:  # none, or not Hydra's: the caller falls back on what the job knows
        return None
    hydra = [o for o in overrides.hydra if o.partition("=")[0] != "hydra.mode"]
    return ["-m", *hydra, *overrides.task]
