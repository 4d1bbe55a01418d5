"""`-cd DIR -cn NAME`: a primary config of one's own, in the dir of one's conf files, as Hydra's --config-dir finds
it (after conf/, before the structured configs): preflight composes what Hydra's run composes, and refuses what it
cannot find or read in one line."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from runner.config.compose import compose_config
from tests.conftest import read_summary

# A user's experiment as a primary config: the runner's `config` extended, one value set.
MINE = "defaults:\n  - config\n  - _self_\ntrainer:\n  epochs: 1\n  batch_size: 64\n"


def test_a_primary_config_only_the_dir_has_runs_as_hydra_composes_it(cli):
    conf = cli.cwd / "conf"
    conf.mkdir()
    (conf / "mine.yaml").write_text(MINE)
    result = cli("-cd", str(conf), "-cn", "mine", "activation=relu", "hydra.run.dir=outputs/a")
    assert result.returncode == 0, result.stderr
    run = cli.cwd / "outputs" / "a"
    assert read_summary(run)["status"] == "completed" and read_summary(run)["epochs"] == 1
    # What Hydra composed for the run (its .hydra/config.yaml) is what preflight composes for the same command line.
    ran = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    checked = OmegaConf.to_container(compose_config("activation=relu", config_name="mine", config_dir=str(conf)))
    assert ran == checked
    assert ran["trainer"]["batch_size"] == 64 and ran["activation"]["_target_"].endswith("relu")


def test_a_primary_config_nowhere_is_one_line_naming_the_ones_there_are(cli):
    conf = cli.cwd / "conf"
    conf.mkdir()
    (conf / "mine.yaml").write_text(MINE)
    result = cli("-cd", str(conf), "-cn", "nosuch", "hydra.run.dir=outputs/a")
    assert result.returncode == 2
    assert result.stderr == "error: -cn nosuch: no such primary config; valid: config, mine\n"
    assert not (cli.cwd / "outputs").exists()


def test_a_primary_config_that_is_not_a_mapping_is_one_line_naming_its_file(cli):
    conf = cli.cwd / "conf"
    conf.mkdir()
    (conf / "mine.yaml").write_text("- config\n- _self_\n")
    result = cli("-cd", str(conf), "-cn", "mine", "hydra.run.dir=outputs/a")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert str(conf / "mine.yaml") in result.stderr and "Traceback" not in result.stderr
    assert not (cli.cwd / "outputs").exists()
