"""`python -m runner.models`: the catalog lists finished runs (multirun jobs included) in each sort's order, skips
unfinished ones silently and unreadable ones with one warning line, imports no JAX; `transfer.source=best:DATASET`
picks the most accurate fitting run, and a run that uses it logs and records the path it resolved to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.errors import UserError
from runner.models import main
from runner.reuse.catalog import architecture, best_run, layers, read_sections
from runner.rundir.records import read_overrides
from tests.conftest import ROOT, Runner, compose_config, compose_shared, read_summary, snapshot

# The module's built nets and compiled programs are shared by its tests (cached per process): one worker runs them all.
pytestmark = pytest.mark.xdist_group("models_module")


def fake_run(root: Path, name: str, accuracy: float | None = 0.9, *overrides: str, status: str = "completed",
             shape=(8, 8, 1), finished: float = 1_700_000_000.0) -> Path:
    """A run dir with only what the catalog reads: summary.json and .hydra/config.yaml as a run writes them (the
    config by compose_shared: the module's runs share a few compositions)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_shared(*overrides)))
    summary = {"status": status, "test_accuracy": accuracy, **({"input_shape": list(shape)} if shape else {})}
    (run / "summary.json").write_text(json.dumps(summary))
    os.utime(run / "summary.json", (finished, finished))
    return run


def listed(capsys, *args) -> list[dict]:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def runs(tmp_path):
    """Four finished runs (two of them multirun jobs), on two datasets, finished an hour apart."""
    outputs = tmp_path / "outputs"
    fake_run(outputs, "2026-01-01/10-00-00", 0.90, finished=1_700_000_000)
    fake_run(outputs, "multirun/2026-01-01/11-00-00/activation=relu", 0.97, "activation=relu", finished=1_700_003_600)
    fake_run(outputs, "multirun/2026-01-01/11-00-00/activation=selu", 0.93, "activation=selu", finished=1_700_007_200)
    fake_run(outputs, "2026-01-01/12-00-00", 0.55, "dataset=mnist1d", shape=(40, 1), finished=1_700_010_800)
    return outputs


def test_each_sort_orders_as_defined(runs, capsys, monkeypatch):
    monkeypatch.chdir(runs.parent)
    by = {sort: [r["path"] for r in listed(capsys, "--sort", sort)] for sort in ("test_accuracy", "date", "dataset",
                                                                                "path")}
    sweep = "outputs/multirun/2026-01-01/11-00-00"
    relu, selu = f"{sweep}/activation=relu", f"{sweep}/activation=selu"
    first, mnist1d = "outputs/2026-01-01/10-00-00", "outputs/2026-01-01/12-00-00"
    assert by["test_accuracy"] == [relu, selu, first, mnist1d]  # highest first
    assert by["date"] == [mnist1d, selu, relu, first]  # newest first
    assert by["dataset"] == [relu, selu, first, mnist1d]  # digits before mnist1d, each by accuracy
    assert by["path"] == sorted(by["path"])
    assert [r["path"] for r in listed(capsys, "--dataset", "mnist1d")] == [mnist1d]


def test_an_entry_names_dataset_shape_architecture_layers_and_accuracy(tmp_path, capsys):
    fake_run(tmp_path, "cnn", 0.5, "model=cnn", "model.channels=[32,64]", "model.depth=1", "activation=prelu",
             "normalization=batch_norm", "normalization.position=post")
    fake_run(tmp_path, "widths", 0.6, "model.widths=[300,100]", "normalization=layer_norm", "dataset=mnist1d",
             shape=(40, 1))
    entries = {Path(r["path"]).name: r for r in listed(capsys, str(tmp_path))}
    assert entries["cnn"]["architecture"] == "cnn, prelu, batch_norm (post)"
    assert entries["cnn"]["layers"] == "conv 32,64; dense 1x128"  # conf/model/cnn.yaml's width
    assert entries["widths"] == {**entries["widths"], "dataset": "mnist1d", "input_shape": [40, 1],
                                 "architecture": "mlp, elu, layer_norm", "layers": "dense 300,100",
                                 "test_accuracy": 0.6, "status": "completed"}


def test_unfinished_runs_are_left_out_and_unreadable_ones_skipped_with_one_warning(runs, capsys):
    fake_run(runs, "interrupted", None, status="interrupted")
    fake_run(runs, "failed", None, status="failed")
    running = fake_run(runs, "running")
    (running / "summary.json").unlink()
    (running / "metrics.jsonl").write_text("{}\n")
    for name, broken in (("torn", lambda r: (r / "summary.json").write_text('{"status": "comp')),
                         ("no_config", lambda r: (r / ".hydra" / "config.yaml").unlink()),
                         ("foreign", lambda r: (r / ".hydra" / "config.yaml").write_text("just: text\n"))):
        broken(fake_run(runs, name))

    assert main([str(runs), "--json"]) == 0

    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 4
    (line,) = err.splitlines()
    assert line.startswith("warning: skipped 3 unreadable run dir(s): ") and "torn" in line, line


def _without_valid(node):
    if isinstance(node, dict):
        return {k: _without_valid(v) for k, v in node.items() if k != "_valid_"}
    return node


@pytest.mark.parametrize("overrides", [("model.widths=[300,100]", "regularizer=[l2,dropout]"),
                                       ("model=cnn", "dataset.classes=[0,1,2]", "activation=prelu")])
def test_the_sections_read_are_the_whole_configs_values_but_valid_ranges(overrides):
    text = OmegaConf.to_yaml(compose_config(*overrides))
    whole = OmegaConf.to_container(OmegaConf.create(text))
    sections = read_sections(text, ("dataset", "model", "activation", "normalization"))
    assert sections == {k: _without_valid(whole[k]) for k in ("dataset", "model", "activation", "normalization")}


def test_sections_of_a_config_written_otherwise_come_from_the_whole_file():
    text = '{"dataset": {"name": "digits"}, "model": {}, "activation": {}, "normalization": {}}'
    assert read_sections(text, ("dataset", "model"))["dataset"] == {"name": "digits"}


def test_an_architecture_names_its_parts_as_conf_names_them():
    sections = read_sections(OmegaConf.to_yaml(compose_config("model.widths=[300,100]")),
                             ("model", "activation", "normalization"))
    assert architecture(sections) == "mlp, elu, batch_norm" and layers(sections["model"]) == "dense 300,100"


def test_best_is_the_most_accurate_finished_run_on_the_dataset_whose_shape_fits(tmp_path):
    outputs = tmp_path / "outputs"
    fake_run(outputs, "a", 0.90)
    fake_run(outputs, "b", 0.95, finished=1_700_000_000)
    fake_run(outputs, "b_newer", 0.95, finished=1_700_000_100)  # a tie: the newer
    fake_run(outputs, "resized", 0.99, "dataset.resize=[16,16]", shape=(16, 16, 1))  # more accurate, other shape
    fake_run(outputs, "other_dataset", 0.999, "dataset=mnist1d", shape=(40, 1))
    fake_run(outputs, "interrupted", 0.999, status="interrupted")
    fake_run(outputs, "unrecorded", 0.999, shape=None)  # made before input_shape was recorded: cannot be shown to fit

    assert best_run("digits", (8, 8, 1), [outputs]).path.name == "b_newer"
    assert best_run("digits", (16, 16, 1), [outputs]).path.name == "resized"
    with pytest.raises(UserError, match=r"best:digits: no finished run on digits .* fits .*16x16x1, 8x8x1, "
                                        r"unrecorded, this run's is 28x28x1"):
        best_run("digits", (28, 28, 1), [outputs])
    with pytest.raises(UserError, match="best:cifar10: .*none there"):
        best_run("cifar10", (32, 32, 3), [outputs])
    with pytest.raises(UserError, match="none there"):
        best_run("digits", (8, 8, 1), [tmp_path / "nothing_here"])


def test_listing_imports_no_jax(runs):
    code = ("import sys, runner.models; runner.models.main([sys.argv[1]]); "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'scipy')], 'imported'")
    done = subprocess.run([sys.executable, "-c", code, str(runs)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4 finished run(s), by date" in done.stdout


def test_a_mistake_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main(["--sort", "accuracy"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "nowhere: no such directory" in lines[0] and "invalid choice: 'accuracy'" in lines[1]


# ---- transfer.source=best:DATASET in a run ----

TINY = ("trainer.epochs=1", "model.depth=2", "model.width=16")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
    """A dir whose outputs/ holds one tiny finished run on digits."""
    runner = Runner(tmp_path_factory.mktemp("catalog"), tfds_dir)
    result = runner(*TINY, "hydra.run.dir=outputs/a")
    assert result.returncode == 0, result.stderr
    return runner


def test_a_run_from_best_logs_and_records_the_run_it_resolved_to(trained):
    result = trained(*TINY, "transfer.source=best:digits", "hydra.run.dir=outputs/b")

    assert result.returncode == 0, result.stderr
    source = trained.cwd / "outputs" / "a"
    assert f"transfer: dense_0, dense_1 from {source}" in result.stdout
    assert read_summary(trained.cwd / "outputs" / "b")["transfer_source"] == str(source)
    # the run dir records the run it resolved to, so trainer.resume=true recomposes that one (not a newer best)
    saved = trained.cwd / "outputs" / "b" / ".hydra"
    assert f"transfer.source={source}" in read_overrides(saved / "overrides.yaml")
    assert OmegaConf.load(saved / "config.yaml").transfer.source == str(source)

    listing = trained("--sort", "test_accuracy", module="runner.models")
    assert listing.returncode == 0 and "2 finished run(s)" in listing.stdout and "outputs/b" in listing.stdout


def test_best_with_no_fitting_run_is_one_line_exit_2_and_nothing_written(trained):
    before = snapshot(trained.cwd / "outputs")
    result = trained(*TINY, "dataset=mnist1d", "transfer.source=best:digits", "hydra.run.dir=outputs/c")
    assert result.returncode == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.splitlines()
    assert "transfer.source=best:digits" in line and "this run's is 40x1" in line, line
    assert snapshot(trained.cwd / "outputs") == before
