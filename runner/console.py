"""What a person sees: rich progress and tables on a terminal, plain lines otherwise.

The only module that imports rich. Plain mode keeps sweeps and CI logs one line per event.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

from rich.console import Console as RichConsole
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# A rich Table costs ~0.7 ms a row to lay out (1,000 rows: 0.7 s on 2 cores); past this many rows each column is
# drawn as one cell of lines instead, which looks the same (no wrapping; long cells end in an ellipsis) in ~0.1 s.
ROWS_AS_ONE_CELL = 200


class Console:
    """Progress bars, tables and messages for one process."""

    def __init__(self, live: bool | None = None):
        self.live = sys.stdout.isatty() if live is None else live
        self._out = RichConsole(highlight=False) if self.live else None

    def info(self, message: str) -> None:
        if self.live:
            self._out.print(message)
        else:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        """One line on stderr."""
        print(message, file=sys.stderr, flush=True)

    @contextmanager
    def training(self, epochs: int, steps_per_epoch: int, start: int = 0) -> Iterator["TrainingView"]:
        """Yields the view a run reports its steps and epochs to: a live bar on a terminal (steps of the
        whole run, its clocks, and a line per finished epoch above it), one line per epoch otherwise."""
        if not self.live:
            yield TrainingView(epochs)
            return
        progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=None),
                            TextColumn("{task.completed:,}/{task.total:,} steps"),
                            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self._out, expand=True)
        with progress:
            task = progress.add_task("train", total=epochs * steps_per_epoch, completed=start * steps_per_epoch,
                                     epoch=f"{start + 1}/{epochs}", loss="")
            yield LiveTrainingView(epochs, steps_per_epoch, progress, task)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A table: rich on a terminal, aligned plain text otherwise."""
        cells = [[format_cell(v) for v in row] for row in rows]
        if self.live:
            table = Table(title=title)
            long = len(cells) > ROWS_AS_ONE_CELL
            if long:  # the widest column alone gives way to a narrow terminal, its cells cut with an ellipsis
                widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
                widest = widths.index(max(widths))
                room = self._out.width - 3 * len(columns) - 1 - (sum(widths) - widths[widest])  # borders, padding
                widths[widest] = max(min(widths[widest], room), len(columns[widest]))
            for i, column in enumerate(columns):
                table.add_column(column, **({"width": widths[i], "no_wrap": True, "overflow": "ellipsis"}
                                            if long else {}))
            if long:
                table.add_row(*(Text("\n".join(row[i] for row in cells)) for i in range(len(columns))))
            for row in [] if long else cells:
                table.add_row(*(Text(v) for v in row))  # Text: a cell's [brackets] (regularizer=[l2]) are not markup
            self._out.print(table)
            return
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)), flush=True)


class TrainingView:
    """Where a run reports progress; plain: one line per finished epoch."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def steps(self, epoch: int, done: int, metrics: Mapping[str, float]) -> None:
        """`done` steps of `epoch` are trained; `metrics` are the epoch's so far."""

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        print(self.line(epoch, metrics), flush=True)

    def line(self, epoch: int, metrics: Mapping[str, float]) -> str:
        return f"epoch {epoch}/{self.epochs} " + " ".join(_fmt(k, v) for k, v in metrics.items())


class LiveTrainingView(TrainingView):
    """The rich bar: moves with each chunk of steps; each finished epoch prints its line above it."""

    def __init__(self, epochs: int, steps_per_epoch: int, progress: Progress, task: int):
        super().__init__(epochs)
        self.steps_per_epoch, self.progress, self.task = steps_per_epoch, progress, task

    def steps(self, epoch: int, done: int, metrics: Mapping[str, float]) -> None:
        self.progress.update(self.task, completed=(epoch - 1) * self.steps_per_epoch + done,
                             epoch=f"{epoch}/{self.epochs}", loss=f"loss {format_cell(float(metrics['loss']))}")

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.progress.console.print(self.line(epoch, metrics), highlight=False)
        self.progress.update(self.task, completed=epoch * self.steps_per_epoch,
                             epoch=f"{min(epoch + 1, self.epochs)}/{self.epochs}")


def format_cell(value: object) -> str:
    """A table cell: floats to 4 significant digits (thousands grouped, not in e-notation), None as empty."""
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _fmt(key: str, value: object) -> str:
    return f"{key}={format_cell(value)}"


def error(message: str) -> None:
    """The one line a user error gets on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)
