"""`python -m runner.report` on run dirs with a bad summary.json or metrics.jsonl: one warning line per bad file and
the rest reported (exit 0), or, when no run can be read, one error line and exit 2; never a traceback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from runner.report.tables import main
from tests.conftest import ROOT
from tests.test_report import fake_run

GOOD_LINE = json.dumps({"epoch": 2, "step": 20, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5}) + "\n"
FIRST_LINE = json.dumps({"epoch": 1, "step": 10, "train_loss": 2.0, "val_loss": 2.2, "val_accuracy": 0.4}) + "\n"

# (file, malformation) -> (its content, words the warning names; None: not a fault, no warning)
MALFORMED = {
    ("summary.json", "empty"): ("", ["summary.json", "empty"]),
    ("summary.json", "truncated"): ('{"status": "completed", "best_val_acc', ["summary.json", "not JSON"]),
    ("summary.json", "not JSON"): ("status: completed\n", ["summary.json", "not JSON"]),
    ("summary.json", "wrong type"): ('["completed", 0.9]\n', ["summary.json", "a list, not a JSON object"]),
    ("metrics.jsonl", "empty"): ("", None),  # a run that has not ended an epoch yet
    ("metrics.jsonl", "truncated"): (FIRST_LINE + '{"epoch": 2, "step": 2', ["metrics.jsonl", "line 2", "cut off"]),
    ("metrics.jsonl", "not JSON"): (FIRST_LINE + "epoch 2 done\n" + GOOD_LINE, ["metrics.jsonl", "line 2", "not JSON"]),
    ("metrics.jsonl", "wrong type"): ("[1, 2.0]\n" + GOOD_LINE, ["metrics.jsonl", "line 1", "a list"]),
}


def _sweep(tmp_path, bad: tuple[str, str], with_good_run: bool):
    root = tmp_path / "multirun"
    if with_good_run:
        fake_run(root / "0_activation=elu", ["activation=elu"], [0.5, 0.9], diagnosed=False)
    run = fake_run(root / "1_activation=relu", ["activation=relu"], [0.4, 0.6], diagnosed=False)
    (run / bad[0]).write_text(MALFORMED[bad][0])
    return root, run / bad[0]


def _report(root, capsys) -> tuple[int, list[str]]:
    code = main([str(root), "--no-plots"])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("bad", MALFORMED, ids=" ".join)
def test_a_bad_file_is_one_warning_naming_it_and_the_other_runs_are_reported(bad, tmp_path, capsys):
    root, path = _sweep(tmp_path, bad, with_good_run=True)
    code, lines = _report(root, capsys)
    assert code == 0
    words = MALFORMED[bad][1]
    if words is None:
        assert lines == []
    else:
        assert len(lines) == 1, lines
        assert str(path) in lines[0] and "left out" in lines[0], lines[0]
        for word in words:
            assert word in lines[0], (word, lines[0])
    rows = {row["run_dir"]: row for row in csv.DictReader((root / "report" / "report.csv").open())}
    assert "0_activation=elu" in rows
    # a bad summary leaves its run out; a bad line of metrics.jsonl only that line
    assert ("1_activation=relu" in rows) == (bad[0] == "metrics.jsonl")


@pytest.mark.parametrize("bad", [b for b in MALFORMED if b[0] == "summary.json"], ids=" ".join)
def test_nothing_readable_is_one_error_line_and_exit_2(bad, tmp_path, capsys):
    root, path = _sweep(tmp_path, bad, with_good_run=False)
    code, lines = _report(root, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: no run could be read: ") and str(path) in lines[0], lines
    assert not (root / "report").exists()


def test_every_bad_line_of_a_file_is_left_out_with_one_warning_for_the_file(tmp_path, capsys):
    root, path = _sweep(tmp_path, ("metrics.jsonl", "not JSON"), with_good_run=False)
    path.write_text("oops\n" + FIRST_LINE + '"two"\n' + GOOD_LINE + '{"epoch": 3, "val_loss": "low"}\n')
    code, lines = _report(root, capsys)
    assert code == 0 and len(lines) == 1, lines
    assert "line 1 is not JSON" in lines[0] and "and 2 more bad lines" in lines[0]
    [row] = csv.DictReader((root / "report" / "report.csv").open())
    assert row["run_dir"] == "1_activation=relu"


def test_a_bad_overrides_file_leaves_its_run_out_with_one_warning(tmp_path, capsys):
    root, _ = _sweep(tmp_path, ("metrics.jsonl", "empty"), with_good_run=True)
    overrides = root / "1_activation=relu" / ".hydra" / "overrides.yaml"
    overrides.write_text("{unclosed: [\n")
    code, lines = _report(root, capsys)
    assert code == 0 and len(lines) == 1 and str(overrides) in lines[0] and "YAML" in lines[0], lines


def test_the_command_never_tracebacks_on_a_bad_file(tmp_path):
    root, path = _sweep(tmp_path, ("summary.json", "wrong type"), with_good_run=False)
    result = subprocess.run([sys.executable, "-m", "runner.report", str(root), "--no-plots"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: no run could be read: {path}: holds a list, not a JSON object"]
