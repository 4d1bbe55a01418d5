"""The rules between values (runner/config/compose.py's check_relations), checked by `validate` before anything runs: each
refusal is one line naming both keys and what is valid; a setting meant for another job of a sweep is let through."""

from __future__ import annotations

import pytest

from runner.cli.relations import validate
from runner.errors import UserError
from tests.conftest import compose_config

SOURCE = "transfer.source=/runs/task_a"

REFUSED = [
    # (overrides, words the one line must contain)
    (["schedule=piecewise_constant", "schedule.boundaries=[15,5]"],
     ["schedule.boundaries", "each above the one before", "[15, 5]"]),
    (["schedule=piecewise_constant", "schedule.boundaries=[5,5]"], ["schedule.boundaries", "[5, 5]"]),
    (["schedule=piecewise_constant", "schedule.boundaries=[0,5]"], ["schedule.boundaries", "> 0"]),
    (["schedule=piecewise_constant", "schedule.values=[0.1,0.01]"], ["schedule.values", "schedule.boundaries", "3"]),
    (["dataset.val_fraction=0", "trainer.early_stopping.patience=3"],
     ["trainer.early_stopping.patience", "dataset.val_fraction=0", "valid", "patience=0"]),
    (["dataset.val_fraction=0", "schedule=plateau"],
     ["schedule=plateau", "dataset.val_fraction=0", "another schedule"]),
    (["dataset.validation=tail", "dataset.val_size=0", "schedule=plateau"],
     ["schedule=plateau", "dataset.val_size=0", "dataset.val_size >= 1"]),
    (["dataset.validation=tail", "dataset.val_fraction=0.2"], ["dataset.val_fraction", "dataset.validation=tail"]),
    (["dataset.val_size=100"], ["dataset.val_size", "dataset.validation=random", "dataset.validation=tail"]),
    (["stages=freeze_lower", "stages.frozen_epochs=20"], ["stages.frozen_epochs", "trainer.epochs (20)"]),
    ([SOURCE, "transfer.unfreeze_after=20"], ["transfer.unfreeze_after", "trainer.epochs (20)"]),
    ([SOURCE, "pretraining=supervised"], ["pretraining=supervised", "transfer.source", "pretraining=none"]),
    (["transfer.reuse_layers=2"], ["transfer.reuse_layers", "transfer.source=null", "transfer.reuse_layers=null"]),
    (["transfer.freeze=false"], ["transfer.freeze", "transfer.source", "transfer.freeze=true"]),
    (["transfer.unfreeze_after=3"], ["transfer.unfreeze_after", "transfer.source"]),
    (["transfer.reused_lr_scale=0.5"], ["transfer.reused_lr_scale", "transfer.source", "=0.1"]),
    (["transfer.cache=true"], ["transfer.cache", "transfer.source", "transfer.cache=false"]),
    (["transfer.layout=torch"], ["transfer.layout", "transfer.source"]),
    ([SOURCE, "transfer.layout=torch"], ["transfer.layout", ".safetensors", SOURCE]),
    ([SOURCE, "stages=freeze_lower"], ["stages=freeze_lower", "transfer.unfreeze_after", "stages=single"]),
    ([SOURCE, "transfer.freeze=false", "transfer.unfreeze_after=3"],
     ["transfer.unfreeze_after", "transfer.freeze=false"]),
    ([SOURCE, "transfer.reused_lr_scale=0.5"], ["transfer.reused_lr_scale", "transfer.unfreeze_after=null"]),
    (["pretraining=autoencoder", "transfer.layout=keras"], ["transfer.layout", "pretraining=autoencoder"]),
]

ALLOWED = [
    ["schedule=piecewise_constant", "schedule.boundaries=[2,4,8]", "schedule.values=[0.1,0.05,0.01,0.001]"],
    ["dataset.val_fraction=0"],  # no early stopping, no plateau: nothing needs validation
    ["dataset.val_fraction=0", "trainer.early_stopping.monitor=val_accuracy"],  # patience 0: early stopping is off
    ["dataset.validation=tail", "dataset.val_size=100", "trainer.early_stopping.patience=2"],
    [SOURCE, "transfer.reuse_layers=2", "transfer.unfreeze_after=5", "transfer.reused_lr_scale=0.5"],
    [SOURCE, "transfer.freeze=false", "transfer.reused_lr_scale=1.0"],
    ["transfer.source=/weights/net.safetensors", "transfer.layout=torch"],
    ["pretraining=supervised", "transfer.reuse_layers=1", "transfer.cache=true"],
    ["stages=freeze_lower", "stages.frozen_epochs=19"],
]

SWEEP_JOBS = [  # one job each of `-m pretraining=none,supervised transfer...`, `-m transfer.source=null,RUN ...`
    ["transfer.reuse_layers=2"],
    ["transfer.freeze=false", "transfer.reused_lr_scale=1.0"],
]


@pytest.mark.parametrize("overrides, words", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_a_relation_broken_is_one_line_naming_both_keys(overrides, words):
    with pytest.raises(UserError) as refused:
        validate(compose_config(*overrides))
    line = str(refused.value)
    assert "\n" not in line and ("valid" in line or "must" in line)
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("overrides", ALLOWED, ids=" ".join)
def test_settings_that_act_together_pass(overrides):
    validate(compose_config(*overrides))


@pytest.mark.parametrize("overrides", SWEEP_JOBS, ids=" ".join)
def test_a_sweep_job_may_carry_a_setting_for_the_other_jobs_but_not_one_that_harms(overrides):
    with pytest.raises(UserError):
        validate(compose_config(*overrides))
    validate(compose_config(*overrides), sweep=True)
    with pytest.raises(UserError, match="trainer.early_stopping.patience"):
        validate(compose_config(*overrides, "dataset.val_fraction=0", "trainer.early_stopping.patience=2"), sweep=True)


@pytest.mark.parametrize("overrides", [[SOURCE, "stages=freeze_lower"], ["pretraining=supervised", "stages=freeze_lower"]],
                         ids=" ".join)
def test_stages_beside_reused_layers_are_refused_in_a_sweep_job_too(overrides):
    """transfer's settings make a reusing run's stages: a stages= choice would be dropped while the job's saved
    config says it ran, so no job of a sweep may carry one."""
    with pytest.raises(UserError, match=r"^stages=freeze_lower: .*valid: stages=single"):
        validate(compose_config(*overrides), sweep=True)
