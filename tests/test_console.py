"""What a person sees: the live bar keeps its counter and clocks on an 80-column terminal; plain lines otherwise."""

from __future__ import annotations

import io
import re

from rich.console import Console as RichConsole

from runner.console import Console, format_cell

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
    assert any("epoch 12/20 train_loss=0.1235" in f for f in frames)  # the finished epoch's line, above the bar
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
