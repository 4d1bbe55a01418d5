"""`python -m runner.book`: the notebook's presets compose, the table's numbers are the seeds', a finished
experiment is skipped, and (slow, where Fashion-MNIST's files are) the quick variant runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import book
from runner.cli.relations import validate
from runner.config.compose import CONF_DIR, compose_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment" / "book").glob("*.yaml"))
DATA_DIRS = [os.environ.get("FASHION_MNIST_DIR"), "/usr/share/datasets/fashion-mnist"]
DATA = next((Path(d) for d in DATA_DIRS if d and (Path(d) / "train-labels-idx1-ubyte.gz").exists()
             or d and (Path(d) / "train-labels-idx1-ubyte").exists()), None)


def test_every_experiment_and_row_of_the_driver_has_its_preset_and_every_preset_runs():
    names = {e.name for e in book.EXPERIMENTS}
    assert names == set(PRESETS) - {"base"}
    assert {row.name for row in book.ROWS} <= names
    assert {c.name for c in book.CAUSES} <= names and {c.explains for c in book.CAUSES} <= names
    for a, b, *_ in book.ORDERINGS:
        assert {a, b} <= names


@pytest.mark.parametrize("name", PRESETS)
def test_every_book_preset_composes_and_validates_on_the_books_split(name):
    cfg = compose_config(f"+experiment=book/{name}", "dataset.path=/data/fashion-mnist")
    validate(cfg)
    assert cfg.dataset.name == "idx" and cfg.dataset.validation == "tail"
    assert cfg.dataset.path == "/data/fashion-mnist"
    lines = (CONF_DIR / "experiment" / "book" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert f"+experiment=book/{name}" in lines[1].split()


def test_the_data_dir_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", "/elsewhere")
    assert compose_config("+experiment=book/sgd").dataset.path == "/elsewhere"


def _member(out: Path, name: str, seed: int, val: float, test: float, status: str = "completed") -> None:
    member = out / name / f"seed_{seed}"
    member.mkdir(parents=True)
    (member / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_accuracy": 0.5}) + "\n"
                                          + json.dumps({"epoch": 2, "val_accuracy": val}) + "\n")
    (member / "summary.json").write_text(json.dumps({"status": status, "test_accuracy": test}))


def test_a_row_is_the_last_epochs_validation_accuracy_over_the_seeds_against_the_book(tmp_path):
    for seed, val in enumerate((0.80, 0.81, 0.82)):
        _member(tmp_path, "selu_lecun", seed, val, 0.7)
    rows, misses = book.table(tmp_path, [0, 1, 2])
    line = next(l for l in rows.splitlines() if "`selu_lecun`" in l)
    cells = [c.strip() for c in line.split("|")]
    # mean 81.00, t(0.975, 2) = 4.303, sd 1 -> half-width 4.303 / sqrt(3) = 2.48; book 80.46
    assert cells[3] == "80.46" and cells[4] == "81.00 ± 2.48" and cells[5] == "+0.54"
    assert cells[6] == "80.00–82.00" and cells[7] == "yes" and cells[8] == "yes"
    assert "interval wider than the gap" in line
    assert "selu_lecun:val_accuracy" not in misses and "relu_he:val_accuracy" not in misses  # no runs: no verdict


def test_a_gap_with_the_book_inside_our_one_run_prediction_interval_is_explained_by_seed_variance(tmp_path):
    for seed, (a, b) in enumerate(((0.83, 0.60), (0.84, 0.66), (0.85, 0.72))):
        _member(tmp_path, "selu_lecun", seed, a, 0.0)  # mean 84.00, sd 1: book 80.46 is 3.54 below
        _member(tmp_path, "relu_he", seed, b, 0.0)  # mean 66.00, sd 6: book 70.54 is 4.54 above
    rows, misses = book.table(tmp_path, [0, 1, 2])
    cells = {name: [c.strip() for c in next(l for l in rows.splitlines() if f"`{name}`" in l).split("|")]
             for name in ("selu_lecun", "relu_he")}
    # one run: mean ± t(0.975, 2) · sd · sqrt(1 + 1/3) = ± 4.303 · 1.1547 · sd: ± 4.97 (sd 1), ± 29.81 (sd 6)
    assert cells["selu_lecun"][8] == "**no**" and cells["selu_lecun"][9] == "79.03–88.97"
    assert cells["selu_lecun"][10] == "seed variance"
    assert cells["relu_he"][9] == "36.19–95.81" and cells["relu_he"][10] == "seed variance"
    assert misses == {"selu_lecun:val_accuracy": "seed variance", "relu_he:val_accuracy": "seed variance"}
    assert "Explained by seed variance: selu_lecun:val_accuracy, relu_he:val_accuracy" in book.summary(misses)


def test_a_gap_outside_the_prediction_interval_is_explained_only_by_a_cause_that_reaches_the_book(tmp_path):
    for seed, (a, b) in enumerate(((0.8700, 0.8400), (0.8710, 0.8410), (0.8720, 0.8420))):
        _member(tmp_path, "momentum", seed, a, 0.0)  # the sgd row's cause: 87.10, the book's 86.72
        _member(tmp_path, "sgd", seed, b, 0.0)  # 84.10 ± a hair: far outside its one-run interval
    rows, misses = book.table(tmp_path, [0, 1, 2])
    line = next(l for l in rows.splitlines() if "`sgd`" in l)
    assert line.split("|")[10].strip() == "measured cause: the `momentum` preset"
    assert misses["sgd:val_accuracy"] == "measured cause: the `momentum` preset"
    (tmp_path / "momentum").rename(tmp_path / "momentum_near")
    for seed in (0, 1, 2):  # a cause that moves the row, but not to within 1.5 of the book, explains nothing
        _member(tmp_path, "momentum", seed, 0.8500 + seed / 1000, 0.0)
    rows, misses = book.table(tmp_path, [0, 1, 2])
    assert next(l for l in rows.splitlines() if "`sgd`" in l).split("|")[10].strip() == "**unexplained**"
    assert misses["sgd:val_accuracy"] == "" and "unexplained: sgd:val_accuracy" in book.summary(misses)


def test_an_ordering_is_the_paired_difference_seed_by_seed(tmp_path):
    for seed, (a, b) in enumerate(((0.80, 0.70), (0.85, 0.74), (0.82, 0.72))):
        _member(tmp_path, "selu_lecun", seed, a, 0.0)
        _member(tmp_path, "relu_he", seed, b, 0.0)
    line = next(l for l in book.orderings(tmp_path, [0, 1, 2]).splitlines() if "`selu_lecun` − `relu_he`" in l)
    cells = [c.strip() for c in line.split("|")]
    assert cells[3] == "+9.92"  # the book's 80.46 - 70.54
    assert cells[4].startswith("+10.33 ± ") and cells[5] == "yes"


def test_an_experiment_whose_members_completed_is_skipped_and_an_unfinished_one_is_not(tmp_path):
    for seed in (0, 1, 2):
        _member(tmp_path, "sgd", seed, 0.8, 0.8)
    experiment = book.Experiment("sgd")
    assert book.run_experiment(experiment, tmp_path, tmp_path, [0, 1, 2], False) is None  # nothing to run
    _member(tmp_path, "adam", 0, 0.8, 0.8, status="interrupted")
    assert not book.completed(tmp_path / "adam" / "seed_0")
    assert not book.completed(tmp_path / "adam" / "seed_1")  # never started


@pytest.mark.parametrize("experiment", [e for e in book.EXPERIMENTS + book.CAUSES if e.replicas],
                         ids=lambda e: book.run_dir(Path("out"), e).name)
def test_every_replicas_command_the_driver_types_is_one_the_runner_takes(experiment, tmp_path):
    from runner.cli.replicas import check_replicas

    args = book.command(experiment, Path("/data/fashion-mnist"), tmp_path / "run", [0, 1, 2], False, tmp_path)
    assert args[1:4] == ["-m", "runner", f"+experiment=book/{experiment.name}"] and "trainer.replicas=3" in args
    cfg = compose_config(*(a for a in args[3:] if not a.startswith("hydra.")))
    validate(cfg)
    check_replicas(cfg)  # dropout's MC passes are refused in a replicas program: the driver turns them off there
    alone = book.command(experiment, Path("/data/fashion-mnist"), tmp_path / "run", [0], False, tmp_path)
    assert not any(a.startswith("trainer.replicas") or a in experiment.with_replicas for a in alone)


def test_experiments_run_side_by_side_and_b_on_a_starts_after_model_a_ends(tmp_path, monkeypatch, capsys):
    import threading
    import time

    events, lock = [], threading.Lock()

    def fake_run(experiment, data, out, seeds, quick):
        with lock:
            events.append(("start", book.run_dir(out, experiment).name))
        time.sleep(0.3 if experiment.name == "transfer_a" else 0.05)
        with lock:
            events.append(("end", book.run_dir(out, experiment).name))
        return 0.1, 0.1

    monkeypatch.setattr(book, "run_experiment", fake_run)
    names = ["transfer_a", "transfer_b_on_a", "transfer_b_on_a+trainer.batch_size-28", "transfer_b"]
    code = book.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--doc", str(tmp_path / "b.md"),
                      "--jobs", "3", "--only", *names])
    assert code == 0
    started = [name for kind, name in events if kind == "start"]
    assert set(started) == set(names)
    a_ends = events.index(("end", "transfer_a"))
    for dependent in names[1:3]:  # model A of the same seed first
        assert events.index(("start", dependent)) > a_ends
    assert events.index(("start", "transfer_b")) < a_ends  # the others do not wait
    out = capsys.readouterr().out
    assert all(line.count("[") == 1 for line in out.splitlines() if line.startswith("["))  # one line per print
    assert book.main(["--data", str(tmp_path), "--jobs", "0"]) == 2


def test_a_missing_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    assert book.main(["--data", str(tmp_path / "absent"), "--quick"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(DATA is None, reason="no Fashion-MNIST IDX files: set FASHION_MNIST_DIR (or apt-get install "
                                         "dataset-fashion-mnist)")
def test_the_quick_book_runs_every_preset_and_writes_a_row_for_each_printed_number(tmp_path):
    out, doc = tmp_path / "book", tmp_path / "book.md"
    args = [sys.executable, "-m", "runner.book", "--quick", "--data", str(DATA), "--out", str(out), "--doc", str(doc)]
    result = subprocess.run(args, cwd=book.REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count(": running") == len(book.EXPERIMENTS)
    text = doc.read_text()
    table = [l for l in text.split("## ")[0].splitlines() if l.startswith("| ") and "`" in l]
    assert len(table) == len(book.ROWS)
    assert all(" — |" not in l.split("|")[4] for l in table)  # every row has a number of ours
    again = subprocess.run(args, cwd=book.REPO, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("done before, skipped") == len(book.EXPERIMENTS)
