"""`runner --help` and bash completion: the runner's own usage, every group with its conf files as choices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from runner.config.compose import CONF_DIR
from tests.conftest import compose_config

GROUPS_HEADING = "== Groups: choose one with group=choice =="  # conf/hydra/help/runner.yaml
CONFIG_HEADING = "== Config: change any key with group.key=value =="
RUNNER_SCRIPT = Path(sys.executable).parent / "runner"  # the console script the install put beside python


def run(*args: str, script: bool = False, env: dict[str, str] | None = None) -> str:
    """stdout of `python -m runner ARGS` (or of the `runner` console script), which must exit 0."""
    command = [str(RUNNER_SCRIPT)] if script else [sys.executable, "-m", "runner"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def conf_groups() -> dict[str, list[str]]:
    """The definition of the choices: every dir of conf/ that holds YAML files is a group (a nested one is
    `parent/child`), its files are the choices; conf/hydra/ configures Hydra itself."""
    groups = {}
    for path in sorted(CONF_DIR.rglob("*")):
        group = path.relative_to(CONF_DIR).as_posix()
        files = sorted(p.stem for p in path.glob("*.yaml")) if path.is_dir() else []
        if files and group.split("/")[0] != "hydra":
            groups[group] = files
    return groups


def section(text: str, start: str, end: str | None = None) -> str:
    """The lines of `text` after the heading `start`, up to the heading `end`."""
    after = text.split(start + "\n", 1)[1]
    return after.split(end + "\n", 1)[0] if end else after


@pytest.fixture(scope="module")
def help_text() -> str:
    return run("--help")


def test_help_opens_with_the_runners_usage_not_hydras(help_text):
    assert help_text.startswith("runner: ")
    assert "powered by Hydra" not in help_text and "__main__" not in help_text
    usage = help_text.split(GROUPS_HEADING)[0]
    for what in ("runner [group=choice ...] [group.key=value ...]", "runner -m ", "runner --cfg job",
                 "runner -cd DIR", "outputs/<date>/<time>/", "python -m runner.report", "--hydra-help"):
        assert what in usage, what


def test_short_flag_prints_the_same_help(help_text):
    assert run("-h") == help_text


def test_help_lists_every_group_with_exactly_its_conf_files(help_text):
    listed = {}
    for line in section(help_text, GROUPS_HEADING, CONFIG_HEADING).splitlines():
        if line.strip():
            group, choices = line.split(": ", 1)
            listed[group] = choices.split(", ")
    assert listed == conf_groups()  # no internal `schema` entry, no Hydra group


def test_help_ends_with_the_config_composed_from_the_overrides():
    overrides = ("optimizer=sgd", "trainer.epochs=3", "regularizer=[l2]")
    shown = yaml.safe_load(section(run(*overrides, "--help"), CONFIG_HEADING))
    assert shown == OmegaConf.to_container(compose_config(*overrides))
    assert shown["optimizer"]["_target_"] == "optax.sgd" and shown["trainer"]["epochs"] == 3


def test_hydra_help_is_still_hydras():
    text = run("--hydra-help")
    assert text.startswith("Hydra (") and "== Flags ==" in text and "hydra/help: " in text


def completions(line: str) -> list[str]:
    """What `runner -sc query=bash` answers for the command line typed so far (as the installed script asks)."""
    return run("-sc", "query=bash", script=True, env={"COMP_LINE": line}).split()


@pytest.mark.parametrize("group", ["optimizer", "dataset", "trainer"])
def test_completing_a_group_offers_exactly_its_conf_files(group):
    assert sorted(completions(f"runner {group}=")) == [f"{group}={choice}" for choice in conf_groups()[group]]


def test_completing_a_prefix_offers_the_groups_and_keys_it_starts():
    assert "optimizer=" in completions("runner optim")
    assert all(word.startswith("optim") for word in completions("runner optim"))
    assert completions("runner trainer.ep") == ["trainer.epochs="]
    assert completions("runner activation=elu optimizer=ad") == [
        f"optimizer={choice}" for choice in conf_groups()["optimizer"] if choice.startswith("ad")]


def test_installed_bash_completion_completes_the_runner_command(tmp_path):
    # The script `runner -sc install=bash` prints, sourced in bash and asked as bash asks on <Tab>.
    line = "runner optimizer=ad"
    script = f"""eval "$(runner -sc install=bash)"
COMP_LINE='{line}'; COMP_POINT={len(line)}; COMP_CWORD=1
hydra_bash_completion
printf '%s\\n' "${{COMPREPLY[@]}}"
complete -p runner
"""
    env = {**os.environ, "PATH": f"{RUNNER_SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *offered, registered = result.stdout.splitlines()
    assert offered == [f"optimizer={choice}" for choice in conf_groups()["optimizer"] if choice.startswith("ad")]
    assert registered.endswith("-F hydra_bash_completion runner")
