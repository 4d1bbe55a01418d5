"""Hydra callbacks, registered under `hydra.callbacks` in conf/config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.console import Console
from runner.errors import UserError


class MultirunReport(Callback):
    """When a multirun ends, writes its report (runner.report) into `<sweep dir>/report/` and prints the table."""

    def __init__(self, plots: bool = True):
        self.plots = plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.report import write_report  # matplotlib loads only when a multirun has ended

        console = Console()
        try:
            write_report([Path(config.hydra.sweep.dir)], plots=self.plots, console=console)
        except UserError as e:  # e.g. every job failed before writing anything: the jobs said why
            console.warn(f"no multirun report: {e}")
