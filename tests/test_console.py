"""What a person sees: the live bar keeps its counter and clocks on an 80-column terminal; plain lines otherwise.

Screens are checked as a terminal shows them (`screen`: carriage returns, newlines, cursor up and line erasing
applied), so a line that rich erased does not count as left on screen.
"""

from __future__ import annotations

import io
import re

import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from rich.console import Console as RichConsole

from runner.console import COMPILING, RESULT_KEYS, Console, format_cell

METRICS = {"train_loss": 0.123456, "train_accuracy": 0.98765, "val_loss": 0.2345678, "val_accuracy": 0.97531}


def _live(width: int) -> tuple[Console, io.StringIO]:
    console, out = Console(live=True), io.StringIO()
    console._out = RichConsole(file=out, width=width, force_terminal=True, color_system=None)
    return console, out


def test_the_live_bar_keeps_its_step_counter_and_clocks_at_80_columns():
    console, out = _live(80)
    with console.training(epochs=20, steps_per_epoch=1687) as view:
        view.steps(12, 843, {"loss": 0.4321})
        view.progress.refresh()
        view.epoch(12, METRICS)
        view.progress.refresh()
    frames = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", f) for f in re.split(r"[\r\n]", out.getvalue())]
    bars = [f for f in frames if "steps" in f]
    assert bars and all(len(f) <= 80 for f in bars)
    mid = next(f for f in bars if "19,400/33,740 steps" in f)  # 11 epochs and 843 steps of the 12th
    assert "epoch 12/20" in mid and "loss 0.4321" in mid and "ETA" in mid
    assert re.search(r"\d:\d\d:\d\d.*ETA\s+(\d:\d\d:\d\d|-:--:--)", mid), mid
    # the finished epoch's line, above the bar, with the short names that fit 80 columns
    assert any("epoch 12/20 loss=0.1235 acc=0.9877 val_loss=0.2346 val_acc=0.9753" in f for f in frames)
    assert any("20,244/33,740 steps" in f and "epoch 13/20" in f for f in bars)


def test_plain_mode_prints_one_line_per_epoch_and_nothing_per_chunk(capsys):
    with Console(live=False).training(epochs=3, steps_per_epoch=100) as view:
        view.steps(1, 50, {"loss": 1.0})
        view.epoch(1, METRICS)
    assert capsys.readouterr().out == ("epoch 1/3 train_loss=0.1235 train_accuracy=0.9877 val_loss=0.2346 "
                                       "val_accuracy=0.9753\n")


def test_throughput_and_large_numbers_group_thousands_instead_of_e_notation():
    assert format_cell(22130.4) == "22,130"
    assert format_cell(0.98765) == "0.9877"
    assert format_cell(None) == ""


def screen(output: str) -> list[str]:
    """The lines a terminal shows after `output` (text, CR, LF, cursor up `ESC[nA`, erase line `ESC[nK`,
    other control sequences ignored), trailing blanks and empty last lines dropped."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", output):
        if token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            command, argument = token[-1], token[2:-1]
            if command == "A":
                row = max(0, row - int(argument or 1))
            elif command == "K":
                lines[row] = "" if argument == "2" else lines[row][:col]
        elif token:
            line = lines[row].ljust(col)
            lines[row], col = line[:col] + token + line[col + len(token):], col + len(token)
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_screen_applies_cursor_moves_and_erasing():
    assert screen("a\nbar 1\rbar 2\n\x1b[1A\x1b[2Kdone\n") == ["a", "done"]


def test_the_bar_says_compiling_until_the_first_chunk_returns_and_again_for_a_new_stage():
    console, out = _live(80)
    with console.training(epochs=3, steps_per_epoch=10) as view:
        view.progress.refresh()
        first = screen(out.getvalue())[-1]
        view.steps(1, 4, {"loss": 0.5})
        view.progress.refresh()
        training = screen(out.getvalue())[-1]
        view.compiling()  # a stage that unfreezes layers compiles its own program
        view.progress.refresh()
        again = screen(out.getvalue())[-1]
    assert first.startswith(COMPILING) and "0/30 steps" in first and "epoch" not in first
    assert training.startswith("epoch 1/3") and "4/30 steps" in training and COMPILING not in training
    assert again.startswith(COMPILING) and "4/30 steps" in again


def test_an_interrupted_run_leaves_its_epoch_lines_and_no_bar():
    console, out = _live(80)
    with console.training(epochs=20, steps_per_epoch=100) as view:
        view.steps(1, 100, {"loss": 0.5})
        view.epoch(1, METRICS)
        view.steps(2, 40, {"loss": 0.4})
        view.progress.refresh()
        view.discard()  # the run was interrupted
    shown = screen(out.getvalue())
    assert shown == ["epoch 1/20 loss=0.1235 acc=0.9877 val_loss=0.2346 val_acc=0.9753"], shown


def test_a_run_that_ends_normally_keeps_its_last_bar():
    console, out = _live(80)
    with console.training(epochs=1, steps_per_epoch=100) as view:
        view.steps(1, 100, {"loss": 0.5})
        view.epoch(1, METRICS)
    assert "100/100 steps" in screen(out.getvalue())[-1]


def test_ctrl_c_before_training_leaves_no_bar():
    console, out = _live(80)
    with pytest.raises(KeyboardInterrupt):
        with console.training(epochs=20, steps_per_epoch=100) as view:
            view.progress.refresh()
            raise KeyboardInterrupt
    assert not any("steps" in line for line in screen(out.getvalue()))


@pytest.mark.parametrize("epochs", [20, 1000])
def test_an_epoch_line_fits_80_columns_on_one_line(epochs):
    console, out = _live(80)
    with console.training(epochs=epochs, steps_per_epoch=10) as view:
        view.epoch(epochs, {"train_loss": 12345.6, "train_accuracy": 0.123456, "val_loss": 1.0e-5,
                            "val_accuracy": 0.987654})
        view.discard()
    (line,) = screen(out.getvalue())  # one line: nothing wrapped onto a second
    assert len(line) <= 80 and line.startswith(f"epoch {epochs}/{epochs} loss=12,346 acc=0.1235 val_loss=1e-05")


def test_an_epoch_line_keeps_its_full_names_where_it_fits_and_in_logs():
    view = Console(live=False).training(epochs=3, steps_per_epoch=1).__enter__()
    full = "epoch 1/3 train_loss=0.1235 train_accuracy=0.9877 val_loss=0.2346 val_accuracy=0.9753"
    assert view.line(1, METRICS, width=None) == full and view.line(1, METRICS, width=len(full)) == full
    assert view.line(1, METRICS, width=len(full) - 1) == "epoch 1/3 loss=0.1235 acc=0.9877 val_loss=0.2346 val_acc=0.9753"


def _header_cells(lines: list[str]) -> list[str]:
    """A rich table's header cells, each column's stacked lines joined by spaces."""
    top = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┏"))
    rule = next(i for i, line in enumerate(lines) if line.lstrip().startswith("┡"))
    columns: list[list[str]] = []
    for line in lines[top + 1:rule]:
        parts = [part.strip() for part in line.strip().strip("┃").split("┃")]
        columns += [[] for _ in range(len(parts) - len(columns))]
        for column, part in zip(columns, parts):
            if part:
                column.append(part)
    return [" ".join(column) for column in columns]


SUMMARY = {"status": "completed", "test_accuracy": 0.98888, "test_loss": 0.0412345, "best_val_accuracy": 0.993055,
           "epochs": 20, "train_examples_per_s": 41448.2, "wall_time_s": 12.3456}


def test_the_results_table_fits_80_columns_and_cuts_no_header():
    console, out = _live(80)
    console.results(SUMMARY)
    lines = screen(out.getvalue())
    assert all(len(line) <= 80 for line in lines), lines
    assert _header_cells(lines) == [key.replace("_", " ") for key in RESULT_KEYS]
    assert "41,448" in out.getvalue() and "0.9889" in out.getvalue()


def test_a_table_that_fits_keeps_its_header_names():
    console, out = _live(200)
    console.results(SUMMARY)
    assert _header_cells(screen(out.getvalue())) == list(RESULT_KEYS)


def test_a_report_table_at_80_columns_cuts_no_header_and_no_label():
    console, out = _live(80)
    columns = ["run", "status", "best_val_accuracy", "test_accuracy", "epochs", "wall_time_s"]
    label = "trainer.seed=0 activation=leaky_relu optimizer=nesterov"
    console.table("2 runs", columns, [[label, "completed", 0.9, 0.8, 20, 3.2], ["x", "failed", None, None, 1, 0.1]])
    lines = screen(out.getvalue())
    assert all(len(line) <= 80 for line in lines)
    assert _header_cells(lines) == [c.replace("_", " ") for c in columns]
    body = "".join(line.split("│")[1].strip() for line in lines if line.lstrip().startswith("│"))
    assert label.replace(" ", "") in body  # the label folds onto several lines but loses no character


def test_a_table_too_wide_even_with_broken_headers_lists_each_row():
    console, out = _live(40)
    console.results(SUMMARY)
    lines = screen(out.getvalue())
    assert all(len(line) <= 40 for line in lines), lines
    assert "train examples per s: 41,448" in lines and "status: completed" in lines


def test_the_results_of_replicas_say_they_are_a_mean(capsys):
    Console(live=False).results({**SUMMARY, "replicas": 8})
    title, header, row = capsys.readouterr().out.splitlines()
    assert "seed_<s>/summary.json" in title
    assert header.split()[:2] == ["of", "status"] and row.startswith("mean of 8 replicas  completed")


@pytest.fixture
def parallel_job():
    """This process as job 3 (`activation=elu`) of a sweep run by a launcher with n_jobs=2 (joblib's)."""
    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.launcher = {"_target_": "hydra_plugins.runner_plugins.ParallelLauncher", "n_jobs": 2}
    cfg.hydra.job.num, cfg.hydra.job.override_dirname = 3, "activation=elu"
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    yield
    HydraConfig.instance().cfg = before


def test_a_parallel_jobs_lines_start_with_its_label(parallel_job, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    console = Console()
    assert console.label == "#3 activation=elu" and not console.live  # jobs sharing a terminal: no live bars
    console.info("dataset digits")
    console.warn("diverged")
    with console.training(epochs=2, steps_per_epoch=5) as view:
        view.epoch(1, METRICS)
    console.results(SUMMARY)
    captured = capsys.readouterr()
    assert captured.err == "[#3 activation=elu] diverged\n"
    lines = captured.out.splitlines()
    assert len(lines) == 5 and all(line.startswith("[#3 activation=elu] ") for line in lines), lines


def test_a_job_run_one_at_a_time_has_no_label(parallel_job):
    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.launcher = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}  # no n_jobs
    cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    assert Console(live=False).label == ""
