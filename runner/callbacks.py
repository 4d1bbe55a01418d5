"""Hydra callbacks, registered under `hydra.callbacks` in conf/config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.console import Console
from runner.errors import UserError


class MultirunReport(Callback):
    """When a multirun ends, writes its report (runner.report) into `<sweep dir>/report/` and prints the table.

    `baseline` (overrides naming one config, as `python -m runner.report --baseline` takes them) adds the
    ablation: `'hydra.callbacks.report.baseline="activation=relu"'` on the command line (quoted: Hydra takes a
    value holding `=` only in quotes). One that names no config or several costs the ablation, not the report.
    """

    def __init__(self, plots: bool = True, baseline: str | None = None):
        self.plots, self.baseline = plots, baseline

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.report import write_report  # matplotlib loads only when a multirun has ended
        from runner.stats import BaselineError

        console = Console()
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            try:
                write_report([sweep_dir], plots=self.plots, console=console, baseline=self.baseline)
            except BaselineError as e:  # the sweep's results still deserve their report
                console.warn(f"no ablation: {e}")
                write_report([sweep_dir], plots=self.plots, console=console)
        except UserError as e:  # e.g. every job failed before writing anything: the jobs said why
            console.warn(f"no multirun report: {e}")
