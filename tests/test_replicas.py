"""trainer.replicas=K: each member of the vmapped program is the run of its seed (within float tolerance), in its
own run dir that the report reads; what a member cannot do alone is refused in one line."""

from __future__ import annotations

import json

import pytest
import yaml

from runner.cli.replicas import check_replicas, member_config
from runner.data import load_data
from runner.errors import UserError
from tests.conftest import compose_config, read_metrics, read_summary

SMALL = ("model.depth=2", "model.width=32", "trainer.epochs=2")


@pytest.mark.parametrize("override, key", [
    ("trainer.early_stopping.patience=3", "trainer.early_stopping.patience"),
    ("schedule=plateau", "schedule=plateau"),
    ("stages=freeze_lower", "stages"),
    ("trainer.diagnostics_every=10", "trainer.diagnostics_every"),
    ("trainer.checkpoint_every=1", "trainer.checkpoint_every"),
    ("trainer.mc_dropout_samples=10", "trainer.mc_dropout_samples"),
])
def test_what_a_member_cannot_do_alone_is_refused_naming_the_key(override, key):
    with pytest.raises(UserError, match=f"trainer.replicas=4: {key} acts on each run alone"):
        check_replicas(compose_config("trainer.replicas=4", override))


def test_a_plain_config_may_run_as_replicas():
    check_replicas(compose_config("trainer.replicas=4"))


def test_each_member_matches_its_seed_run_alone_and_the_report_groups_them(cli):
    replicas = cli(*SMALL, "trainer.replicas=3", "trainer.seed=5", "hydra.run.dir=outputs/replicas")
    assert replicas.returncode == 0, replicas.stderr
    alone = cli(*SMALL, "trainer.seed=6", "hydra.run.dir=outputs/alone")
    assert alone.returncode == 0, alone.stderr
    member = cli.cwd / "outputs/replicas/seed_6"
    assert yaml.safe_load((member / ".hydra/overrides.yaml").read_text())[-1] == "trainer.seed=6"
    for a, b in zip(read_metrics(member), read_metrics(cli.cwd / "outputs/alone"), strict=True):
        assert a["step"] == b["step"]
        for key in ("train_loss", "val_loss"):  # vmapped reductions may round differently
            assert a[key] == pytest.approx(b[key], rel=2e-3), key
        for key in ("train_accuracy", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=0.01), key
    assert read_summary(member)["test_accuracy"] == pytest.approx(
        read_summary(cli.cwd / "outputs/alone")["test_accuracy"], abs=0.01)
    parent = json.loads((cli.cwd / "outputs/replicas/replicas.json").read_text())
    assert parent["members"] == ["seed_5", "seed_6", "seed_7"]

    report = cli("outputs/replicas", "--no-plots", module="runner.report")  # the table is what groups them
    assert report.returncode == 0, report.stderr
    groups = (cli.cwd / "outputs/replicas/report/report.md").read_text().split("## Over seeds")[1]
    assert "| `model.depth=2 model.width=32 trainer.epochs=2` | 3 |" in groups  # one config over 3 seeds


def test_each_member_gets_the_chosen_loggers_as_a_run_alone_would(tmp_path, tfds_dir):
    """logger=[csv,tensorboard,mlflow] with replicas: each member's run dir gets each tool's record of that member."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runner.cli.replicas import train_replicas
    from runner.console import Console

    store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config("model.depth=1", "model.width=8", "trainer.epochs=2", "trainer.batch_size=64",
                         "dataset.train_subset=256", "trainer.replicas=2", "trainer.seed=3",
                         "logger=[jsonl,csv,tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}")
    train_replicas(cfg, tmp_path / "run", Console(live=False))
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("runner").experiment_id])
    assert sorted(r.data.params["trainer.seed"] for r in runs) == ["3", "4"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for seed in (3, 4):
        member = tmp_path / "run" / f"seed_{seed}"
        # the member's own input scaling, as a run of its seed writes it (predict and transfer read it)
        scaling = json.loads((member / "input_scaling.json").read_text())
        assert scaling == load_data(member_config(cfg, seed)).scaling.to_json()
        metrics = read_metrics(member)
        assert [r["epoch"] for r in metrics] == [1, 2]
        rows = (member / "metrics.csv").read_text().splitlines()
        assert len(rows) == 3 and rows[0].startswith("epoch,step,lr,train_loss")
        [found] = [r for r in runs if r.data.params["trainer.seed"] == str(seed)]
        history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "train_loss")}
        assert history == pytest.approx({r["epoch"]: r["train_loss"] for r in metrics})
        events = EventAccumulator(str(member / "tensorboard"), size_guidance={"tensors": 0}).Reload()
        assert [e.step for e in events.Tensors("val_accuracy")] == [r["step"] for r in metrics]
        assert "dense_0/kernel" in events.Tags()["tensors"]  # the member's own weights, as histograms
