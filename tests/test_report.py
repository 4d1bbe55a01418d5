"""`python -m runner.report`: finds run dirs, writes plots and a table sorted by validation accuracy."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from runner.report.tables import CSV_COLUMNS, main, write_report

LAYERS = ["dense_0", "dense_1", "head"]


def fake_run(path: Path, overrides: list[str], val_accuracy: list[float], status: str = "completed",
             diagnosed: bool = True) -> Path:
    """A run dir as `python -m runner` leaves it, with made-up numbers."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + ["hydra.run.dir=x"]))
    metrics = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": a}
               for e, a in enumerate(val_accuracy, 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (path / "summary.json").write_text(json.dumps({
        "status": status, "best_val_accuracy": max(val_accuracy), "test_accuracy": val_accuracy[-1] - 0.01,
        "epochs": len(val_accuracy), "wall_time_s": 3.5, "grad_norm_ratio": 0.01 if diagnosed else None}))
    if diagnosed:
        records = [{"step": s, "epoch": s // 10 + 1, "layers": [
            {"name": n, "grad_norm": 10.0 ** (i - 2) * (1 + s), "act_std": None if n == "head" else 0.5 + 0.01 * s,
             "saturated_fraction": None, "dead_fraction": None if n == "head" else 0.1}
            for i, n in enumerate(LAYERS)]} for s in (0, 5, 10, 15)]
        (path / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A multirun dir of three jobs, the best not first on disk, one without diagnostics."""
    root = tmp_path / "multirun"
    fake_run(root / "0_activation=sigmoid", ["+experiment=x", "activation=sigmoid"], [0.1, 0.2, 0.3])
    fake_run(root / "1_activation=elu", ["+experiment=x", "activation=elu"], [0.5, 0.9, 0.8])
    fake_run(root / "2_activation=relu", ["+experiment=x", "activation=relu"], [0.4, 0.6], diagnosed=False)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_report_writes_readable_plots_and_a_table_sorted_by_best_validation_accuracy(sweep):
    out = write_report([sweep])
    assert out == sweep / "report"
    for name in ("learning_curves.png", "grad_norms.png", "activations.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, name
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [row["run_dir"] for row in rows] == ["1_activation=elu", "2_activation=relu", "0_activation=sigmoid"]
    assert [float(row["best_val_accuracy"]) for row in rows] == [0.9, 0.6, 0.3]
    assert rows[0]["overrides"] == "+experiment=x activation=elu"  # hydra.* settings are not the run's choices
    markdown = (out / "report.md").read_text()
    order = [markdown.index(f"`activation={a}`") for a in ("elu", "relu", "sigmoid")]
    assert order == sorted(order)
    assert "All runs: `+experiment=x`" in markdown and "![learning_curves.png](learning_curves.png)" in markdown


def test_report_replaces_an_earlier_report_whole(sweep):
    out = write_report([sweep], plots=False)
    (out / "stale.png").write_text("left from before")
    write_report([sweep], plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md"]
    assert not [p for p in sweep.iterdir() if p.name.startswith(".report")]  # no temp dirs left behind


def test_one_run_dir_reports_into_itself_and_several_paths_beside_the_first(sweep):
    assert write_report([sweep / "1_activation=elu"], plots=False) == sweep / "1_activation=elu" / "report"
    out = write_report([sweep / "0_activation=sigmoid", sweep / "1_activation=elu"], plots=False)
    assert out == sweep.resolve() / "report"
    assert len(list(csv.DictReader((out / "report.csv").open()))) == 2


def test_runs_without_diagnostics_get_no_diagnostics_plots(tmp_path):
    fake_run(tmp_path / "a", ["optimizer=sgd"], [0.3, 0.4], diagnosed=False)
    fake_run(tmp_path / "b", ["optimizer=adam"], [0.5, 0.7], diagnosed=False)
    out = write_report([tmp_path], plots=True)
    # isolation.png: the runs vary one override (optimizer)
    assert sorted(p.name for p in out.glob("*.png")) == ["isolation.png", "learning_curves.png"]


def test_the_table_is_printed(sweep, capsys):
    assert main([str(sweep), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("activation=elu") < printed.index("activation=sigmoid")
    assert f"report in {sweep / 'report'}" in printed


@pytest.mark.parametrize("make", [lambda tmp: tmp / "missing", lambda tmp: tmp])
def test_a_path_without_runs_is_one_line_on_stderr_and_exit_2(tmp_path, make):
    result = subprocess.run([sys.executable, "-m", "runner.report", str(make(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "report").exists()
