"""The runs a report reads: one run dir's files (`Run`) and one config's runs over seeds (`Group`).

Shared by the report's tables (runner/report/tables.py) and its plots (runner/report/plots.py), which import them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from runner.report.stats import COUNTED_STATUSES, Interval, bounds_of, mean_interval, per_seed, seed_of

FINAL_EPOCH_METRICS = ("train_loss", "val_loss")  # from metrics.jsonl's last line; the others from summary.json


@dataclass
class Run:
    """One run dir's files, as far as they exist."""

    path: Path
    overrides: list[str]  # what was typed, hydra.* settings left out
    summary: dict
    metrics: list[dict]
    diagnostics: list[dict]
    label: str = ""  # the overrides that tell this run apart from the others in the report

    @property
    def sort_key(self) -> float:
        value = self.summary.get("best_val_accuracy")
        return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    @property
    def seed(self) -> str | None:
        return seed_of(self.overrides, self.summary)

    def value(self, metric: str) -> float | None:
        """A metric of summary.json, or (train_loss, val_loss) of the final epoch in metrics.jsonl."""
        if metric in FINAL_EPOCH_METRICS:
            value = self.metrics[-1].get(metric) if self.metrics else None
        else:
            value = self.summary.get(metric)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Group:
    """The runs of one config over seeds (runner.report.stats.group_indices); only finished runs are counted."""

    config: tuple[str, ...]
    runs: list[Run]
    label: str = ""

    @property
    def counted(self) -> list[Run]:
        return [run for run in self.runs if run.summary.get("status") in COUNTED_STATUSES]

    def interval(self, metric: str) -> Interval | None:
        return mean_interval((v for v in (run.value(metric) for run in self.counted) if v is not None),
                             bounds=bounds_of(metric))

    def by_seed(self, metric: str) -> dict[str, float]:
        return per_seed((run.seed, run.value(metric)) for run in self.counted)

    @property
    def sort_key(self) -> tuple:
        best = self.interval("best_val_accuracy")
        return (-best.mean if best else math.inf, self.label)
