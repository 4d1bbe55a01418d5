"""runner/rundir/records.py: the one reader of summary.json and of metrics.jsonl; a file the runner did not write is one
line naming the file and what is wrong."""

from __future__ import annotations

import json

import pytest

from runner.errors import UserError
from runner.rundir.records import leave_out, read_metrics, read_summary
from runner.rundir.relaunch import read_summary as relaunch_summary

LINE = json.dumps({"epoch": 1, "step": 10, "train_loss": 0.5, "val_loss": None}) + "\n"


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("  \n", "empty"),
    ('{"status": "comp', "not JSON (Unterminated string starting at: line 1 column 12)"),
    ("<html>", "not JSON (Expecting value: line 1 column 1)"),
    ("[1, 2]", "holds a list, not a JSON object"),
    ("null", "holds null, not a JSON object"),
    ('{"status": 3}', "its status is a number, not a string"),
])
def test_a_summary_the_runner_did_not_write_is_one_line_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        read_summary(path)
    assert str(refused.value).startswith(f"{path}: {problem}") and "\n" not in str(refused.value)


def test_a_missing_or_binary_summary_is_one_line_too(tmp_path):
    with pytest.raises(UserError, match="summary.json: cannot be read"):
        read_summary(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserError, match="not text"):
        read_summary(tmp_path / "summary.json")


def test_a_good_summary_is_its_object(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "completed", "epochs": 3}')
    assert read_summary(tmp_path / "summary.json") == {"status": "completed", "epochs": 3}


@pytest.mark.parametrize("text, problem", [
    (LINE + '{"epoch": 2, "st', "line 2 is cut off"),
    ('{"epoch": 1, "st\n' + LINE, "line 1 is not JSON"),
    ('"epoch 1"\n', "line 1 holds a string, not a JSON object"),
    ('{"step": 10}\n', "line 1 has no integer epoch (epoch: null)"),
    ('{"epoch": "1"}\n', 'line 1 has no integer epoch (epoch: "1")'),
    ('{"epoch": 1, "val_loss": [0.5]}\n', "line 1 has a list for val_loss, not a number"),
])
def test_a_bad_metrics_line_raises_naming_the_file_and_line_or_is_told_and_left_out(tmp_path, text, problem):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        read_metrics(path)
    assert str(refused.value).startswith(f"{path}: {problem}")
    told: list[str] = []
    records = read_metrics(path, on_bad_line=told.append)
    assert len(told) == 1 and told[0].startswith(f"{path}: {problem}")
    assert all(isinstance(r["epoch"], int) for r in records)


def test_metrics_records_are_every_good_line_in_order_blank_lines_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []  # no file yet: no epoch ended
    path.write_text(LINE + "\n" + LINE.replace('"epoch": 1', '"epoch": 2') + "garbage\n")
    assert [r["epoch"] for r in read_metrics(path, on_bad_line=leave_out)] == [1, 2]


def test_relaunch_takes_a_summary_it_cannot_read_for_none(tmp_path):
    assert relaunch_summary(tmp_path) == {}
    (tmp_path / "summary.json").write_text("[]")
    assert relaunch_summary(tmp_path) == {}
    (tmp_path / "summary.json").write_text('{"status": "failed"}')
    assert relaunch_summary(tmp_path) == {"status": "failed"}


def test_best_val_accuracy_is_the_highest_number_and_none_without_one():
    from runner.rundir.records import best_val_accuracy

    assert best_val_accuracy([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.75},
                              {"epoch": 3, "val_accuracy": 0.625}]) == 0.75
    # no validation split: metrics.jsonl writes null, and a replicas member's summary must not fail on it
    assert best_val_accuracy([{"epoch": 1, "val_accuracy": None}, {"epoch": 2}]) is None
    assert best_val_accuracy([]) is None
