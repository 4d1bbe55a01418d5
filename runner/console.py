"""What a person sees: rich progress and tables on a terminal, plain lines otherwise.

The only module that imports rich. Plain mode keeps sweeps and CI logs one line per event.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


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
    def epochs(self, total: int, start: int = 0) -> Iterator:
        """Yields `update(epoch, metrics)`: a live bar on a terminal, one line per epoch otherwise."""
        if not self.live:
            def update(epoch: int, metrics: Mapping[str, float]) -> None:
                print(f"epoch {epoch}/{total} " + " ".join(_fmt(k, v) for k, v in metrics.items()), flush=True)
            yield update
            return
        progress = Progress(TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=self._out)
        with progress:
            task = progress.add_task("train", total=total, completed=start, metrics="")

            def update(epoch: int, metrics: Mapping[str, float]) -> None:
                progress.update(task, completed=epoch,
                                metrics=" ".join(_fmt(k, v) for k, v in metrics.items()))
            yield update

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A table: rich on a terminal, aligned plain text otherwise."""
        cells = [[format_cell(v) for v in row] for row in rows]
        if self.live:
            table = Table(title=title)
            for column in columns:
                table.add_column(column)
            for row in cells:
                table.add_row(*row)
            self._out.print(table)
            return
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)), flush=True)


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
