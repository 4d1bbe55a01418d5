"""What a person sees: rich progress and tables on a terminal, plain lines otherwise.

The only module that imports rich. Plain mode keeps sweeps and CI logs one line per event. On a terminal
everything fits its width (80 columns included): an epoch line too long for it names its metrics shorter
(`SHORT_NAMES`), and a table too wide for it breaks its headers at their underscores, onto several lines, or,
when even that does not fit, lists each row as `header: value` lines; no header is cut. The jobs of a sweep that
run at once (hydra/launcher=parallel) share the terminal: each prints plain lines that start with its label
(`[#3 activation=elu]`, `job_label`).
"""

from __future__ import annotations

import functools
import shutil
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

from rich.console import Console as RichConsole
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# A rich Table costs ~0.7 ms a row to lay out (1,000 rows: 0.7 s on 2 cores); past this many rows each column is
# drawn as one cell of lines instead, which looks the same (no wrapping; long cells end in an ellipsis) in ~0.1 s.
ROWS_AS_ONE_CELL = 200
COMPILING = "compiling…"  # what the bar says until the first chunk of steps returns (XLA compiles the epoch first)
# An epoch line too wide for the terminal names its metrics by these instead (80 columns: `epoch 12/20 loss=0.1235
# acc=0.9877 val_loss=0.2346 val_acc=0.9753`, 66 characters, against 86 with the full names).
SHORT_NAMES = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
# The results table of one run: what summary.json says, in this order.
RESULT_KEYS = ("status", "test_accuracy", "test_loss", "best_val_accuracy", "epochs", "train_examples_per_s",
               "wall_time_s")
LABEL_WIDTH = 32  # a parallel job's label longer than this ends in an ellipsis


class Console:
    """Progress bars, tables and messages for one process.

    `live`: a rich bar and tables (default: when stdout is a terminal and this is not a parallel sweep job).
    `label`: what each line starts with, in brackets (default: `job_label()`, empty outside a parallel sweep)."""

    def __init__(self, live: bool | None = None, label: str | None = None):
        self.label = job_label() if label is None else label
        self.live = sys.stdout.isatty() and not self.label if live is None else live
        self._out = RichConsole(highlight=False) if self.live else None

    @property
    def prefix(self) -> str:
        return f"[{self.label}] " if self.label else ""

    @property
    def width(self) -> int | None:
        """Columns a line may take: the terminal's; None (any) when the output is not a terminal."""
        if self.live:
            return self._out.width - len(self.prefix)
        return shutil.get_terminal_size().columns - len(self.prefix) if sys.stdout.isatty() else None

    def info(self, message: str) -> None:
        if self.live:
            self._out.print(self.prefix + message, markup=False)
        else:
            print(self.prefix + message, flush=True)

    def warn(self, message: str) -> None:
        """One line on stderr."""
        print(self.prefix + message, file=sys.stderr, flush=True)

    @contextmanager
    def training(self, epochs: int, steps_per_epoch: int, start: int = 0) -> Iterator["TrainingView"]:
        """Yields the view a run reports its steps and epochs to: a live bar on a terminal (steps of the
        whole run, its clocks, and a line per finished epoch above it), one line per epoch otherwise.

        The bar says `compiling…` until the first chunk of steps returns. It is removed, not left standing, when
        the run is interrupted (`view.discard()`) or the block raises (Ctrl-C before training, an error)."""
        if not self.live:
            yield TrainingView(epochs, self)
            return
        progress = Progress(TextColumn("{task.fields[what]}"), BarColumn(bar_width=None),
                            TextColumn("{task.completed:,}/{task.total:,} steps"),
                            TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self._out, expand=True)
        progress.start()
        view = None
        try:
            task = progress.add_task("train", total=epochs * steps_per_epoch, completed=start * steps_per_epoch,
                                     what=COMPILING, loss="")
            view = LiveTrainingView(epochs, self, steps_per_epoch, progress, task)
            yield view
        except BaseException:
            progress.live.transient = True  # no stale bar above the error or the shell's prompt
            raise
        finally:
            if view is not None and view.discarded:
                progress.live.transient = True
            progress.stop()

    def results(self, summary: Mapping[str, object]) -> None:
        """The results table of a run, from its summary; a trainer.replicas run's numbers are means over its
        members, and its row says so."""
        replicas = summary.get("replicas")
        columns, row = list(RESULT_KEYS), [summary.get(k) for k in RESULT_KEYS]
        if replicas:
            columns, row = ["of"] + columns, [f"mean of {replicas} replicas"] + row
        title = "results" + (" (each member's own: seed_<s>/summary.json)" if replicas else "")
        self.table(title, columns, [row])

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A table: rich on a terminal, fitted to its width (module doc), aligned plain text otherwise."""
        cells = [[format_cell(v) for v in row] for row in rows]
        if self.live:
            if self.prefix:
                title = self.prefix + title
            long = len(cells) > ROWS_AS_ONE_CELL
            if not long and _natural_width(columns, cells) > self._out.width:
                columns = [c.replace("_", " ") for c in columns]  # a header may now break at its words
                if _narrowest_width(columns, cells) > self._out.width:
                    self._stacked(title, columns, cells)
                    return
            table = Table(title=Text(title))  # Text: a title's [brackets] are not markup either
            if long:  # the widest column alone gives way to a narrow terminal, its cells cut with an ellipsis
                widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
                widest = widths.index(max(widths))
                room = self._out.width - 3 * len(columns) - 1 - (sum(widths) - widths[widest])  # borders, padding
                widths[widest] = max(min(widths[widest], room), len(columns[widest]))
            for i, column in enumerate(columns):
                table.add_column(column, **({"width": widths[i], "no_wrap": True, "overflow": "ellipsis"}
                                            if long else {"overflow": "fold"}))
            if long:
                table.add_row(*(Text("\n".join(row[i] for row in cells)) for i in range(len(columns))))
            for row in [] if long else cells:
                table.add_row(*(Text(v) for v in row))  # Text: a cell's [brackets] (regularizer=[l2]) are not markup
            self._out.print(table)
            return
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
        print(self.prefix + title)
        print(self.prefix + "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        for row in cells:
            print(self.prefix + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), flush=True)

    def _stacked(self, title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> None:
        """A table too wide for the terminal even with broken headers: each row as `header: value` lines."""
        self._out.print(title, markup=False, highlight=False)
        for row in cells:
            self._out.print("")
            for column, value in zip(columns, row):
                self._out.print(Text(f"{column}: {value}"), overflow="fold")


def _natural_width(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> int:
    """The width of a rich table (heavy head, box borders, one space of padding) that wraps nothing."""
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    return sum(widths) + 3 * len(columns) + 1


def _narrowest_width(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> int:
    """The narrowest such table that cuts no word of a header or a cell (rich wraps at spaces)."""
    def longest_word(text: str) -> int:
        return max((len(word) for word in text.split()), default=0)
    widths = [max([longest_word(c), *(longest_word(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    return sum(widths) + 3 * len(columns) + 1


def job_label() -> str:
    """`#3 activation=elu`: the job this process runs, when it is one of a sweep's jobs that run at once and
    share the terminal (a launcher with `n_jobs` other than 1: joblib's, hydra/launcher=parallel); else ""."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover (hydra is a dependency)
        return ""
    if not HydraConfig.initialized():
        return ""
    from omegaconf import OmegaConf

    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or OmegaConf.select(hydra, "launcher.n_jobs", default=1) == 1:
        return ""
    num = OmegaConf.select(hydra, "job.num", default=None)
    if not isinstance(num, int):  # the sweep's own process, between its jobs: no job to name
        return ""
    name = OmegaConf.select(hydra, "job.override_dirname", default=None) or "defaults"
    name = name if len(name) <= LABEL_WIDTH else name[:LABEL_WIDTH - 1] + "…"
    return f"#{num} {name}"


class TrainingView:
    """Where a run reports progress; plain: one line per finished epoch."""

    def __init__(self, epochs: int, console: Console | None = None):
        self.epochs, self.console = epochs, console

    def steps(self, epoch: int, done: int, metrics: Mapping[str, float]) -> None:
        """`done` steps of `epoch` are trained; `metrics` are the epoch's so far."""

    def compiling(self) -> None:
        """A new program is being compiled (a stage that trains other layers); the next steps() ends it."""

    def discard(self) -> None:
        """The run stopped early (a signal): the bar goes when training ends, instead of staying on screen."""

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        prefix = self.console.prefix if self.console is not None else ""
        print(prefix + self.line(epoch, metrics, self.console.width if self.console is not None else None),
              flush=True)

    def line(self, epoch: int, metrics: Mapping[str, float], width: int | None = None) -> str:
        """`epoch 3/20 train_loss=0.1235 ...`; with the metrics' short names when that is wider than `width`."""
        head = f"epoch {epoch}/{self.epochs} "
        line = head + " ".join(_fmt(k, v) for k, v in metrics.items())
        if width is None or len(line) <= width:
            return line
        return head + " ".join(_fmt(SHORT_NAMES.get(k, k), v) for k, v in metrics.items())


class LiveTrainingView(TrainingView):
    """The rich bar: moves with each chunk of steps; each finished epoch prints its line above it."""

    def __init__(self, epochs: int, console: Console, steps_per_epoch: int, progress: Progress, task: int):
        super().__init__(epochs, console)
        self.steps_per_epoch, self.progress, self.task = steps_per_epoch, progress, task
        self.discarded = False

    def steps(self, epoch: int, done: int, metrics: Mapping[str, float]) -> None:
        self.progress.update(self.task, completed=(epoch - 1) * self.steps_per_epoch + done,
                             what=f"epoch {epoch}/{self.epochs}", loss=f"loss {format_cell(float(metrics['loss']))}")

    def compiling(self) -> None:
        self.progress.update(self.task, what=COMPILING)

    def discard(self) -> None:
        self.discarded = True

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.progress.console.print(self.console.prefix + self.line(epoch, metrics, self.console.width),
                                    highlight=False, markup=False)
        self.progress.update(self.task, completed=epoch * self.steps_per_epoch,
                             what=f"epoch {min(epoch + 1, self.epochs)}/{self.epochs}")


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


def command(main: Callable[..., int]) -> Callable[..., int]:
    """A `python -m runner.X` entry point, `main(argv) -> exit code`: a user's mistake (UserError) raised anywhere
    in it is one line on stderr and exit code 2."""
    from runner.errors import UserError

    @functools.wraps(main)
    def entry(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as e:
            error(str(e))
            return 2

    return entry
