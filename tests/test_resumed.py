"""A resumed run's config: the saved overrides first; what the saved config lacks (a later runner's new keys) may
stand at its default, and nothing else may change."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from runner.errors import UserError
from runner.rundir.resumed import resumed_overrides
from tests.conftest import compose_config


def _saved_run(tmp_path, overrides, drop=()):
    """A run dir as an older runner left it: its config without the nodes `drop` names."""
    config = OmegaConf.to_container(compose_config(*overrides))
    for key in drop:
        parent, _, name = key.rpartition(".")
        (config[parent] if parent else config).pop(name)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return tmp_path


def _compose(overrides):
    return compose_config(*overrides)


def test_keys_a_saved_config_lacks_may_stand_at_their_defaults(tmp_path):
    run = _saved_run(tmp_path, ["trainer.epochs=3"], drop=("transfer", "trainer.replicas"))
    assert resumed_overrides(run, ["trainer.resume=true", "trainer.epochs=5"], _compose) == [
        "trainer.resume=true", "trainer.epochs=5"]


def test_setting_a_key_the_saved_config_lacks_is_refused_naming_it(tmp_path):
    run = _saved_run(tmp_path, ["trainer.epochs=3"], drop=("transfer",))
    with pytest.raises(UserError, match=r"transfer.reuse_layers \(\(absent\) -> 2\)"):
        resumed_overrides(run, ["trainer.resume=true", "transfer.reuse_layers=2"], _compose)


def test_a_changed_key_the_saved_config_has_is_still_refused(tmp_path):
    run = _saved_run(tmp_path, ["trainer.epochs=3"])
    with pytest.raises(UserError, match=r"optimizer.learning_rate \(0.001 -> 0.1\)"):
        resumed_overrides(run, ["trainer.resume=true", "optimizer.learning_rate=0.1"], _compose)
