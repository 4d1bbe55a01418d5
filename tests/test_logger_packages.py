"""A chosen tracking tool that is not installed is one line before the data loads, naming the install command that
fits how the runner was installed (runner/training/loggers.py: check_logger_packages, install_command)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from runner.errors import UserError
from runner.training import loggers
from tests.conftest import USER_XLA_FLAGS, compose_config


class FakeDistribution:
    """An installed distribution as importlib.metadata gives it, with (or without) pip's direct_url.json."""

    def __init__(self, direct_url: dict | None):
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        return json.dumps(self.direct_url) if name == "direct_url.json" and self.direct_url is not None else None


def installed_as(monkeypatch, *direct_urls: dict | None) -> None:
    monkeypatch.setattr(loggers.importlib.metadata, "distributions",
                        lambda name: [FakeDistribution(d) for d in direct_urls])


def test_an_editable_checkout_installs_the_extra_from_the_checkout_in_compat_mode(monkeypatch, tmp_path):
    checkout = tmp_path / "my runner"
    checkout.mkdir()
    # a checkout's own runner.egg-info comes first on sys.path and has no record: the installed one counts
    installed_as(monkeypatch, None, {"url": checkout.as_uri(), "dir_info": {"editable": True}})
    assert loggers.install_command() == (f"pip install -e '{checkout}[tracking]' "
                                         "--config-settings editable_mode=compat")
    monkeypatch.chdir(checkout)
    assert loggers.install_command() == "pip install -e '.[tracking]' --config-settings editable_mode=compat"


@pytest.mark.parametrize("direct_url", [
    {"url": "file:///tmp/runner-0.1.0-py3-none-any.whl", "archive_info": {}},  # pip install runner-0.1.0-...whl
    {"url": "file:///src/runner", "dir_info": {}},  # pip install . (a wheel built from the checkout)
    None,  # from an index: pip writes no direct_url.json
])
def test_any_other_install_takes_the_extra_by_name(monkeypatch, direct_url):
    installed_as(monkeypatch, direct_url)
    assert loggers.install_command() == "pip install 'runner[tracking]'"


def hide(monkeypatch, *hidden: str) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in hidden else find_spec(name, *a))


@pytest.mark.parametrize("logger, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_chosen_tool_that_is_not_installed_is_one_line_with_its_install_command(monkeypatch, logger, package):
    hide(monkeypatch, package)
    installed_as(monkeypatch, {"url": "file:///x/runner-0.1.0-py3-none-any.whl", "archive_info": {}})
    with pytest.raises(UserError) as raised:
        loggers.check_logger_packages(compose_config(f"logger=[jsonl,{logger}]"))
    assert str(raised.value) == (f"logger.{logger}: needs the {package} package, which is not installed; valid: "
                                 f"install the tracking extra (pip install 'runner[tracking]'), or drop {logger} "
                                 "from the logger list")


def test_tools_that_are_installed_or_need_nothing_pass(monkeypatch):
    loggers.check_logger_packages(compose_config("logger=[jsonl,csv,tensorboard,mlflow]"))
    hide(monkeypatch, "tensorboard", "mlflow")
    loggers.check_logger_packages(compose_config("logger=[jsonl,csv]"))  # the runner's own: no package


def test_importing_the_loggers_imports_no_jax():
    """So that the check can run before anything is loaded (the pre-run checks import no JAX)."""
    code = "import sys, runner.training.loggers; print(sorted({'jax', 'flax', 'optax'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_the_run_stops_before_the_data_loads_and_keeps_nothing(tmp_path):
    """tensorboard hidden from the interpreter: exit 2, the one line, no data built, no run dir left."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorboard':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    data_dir = tmp_path / "tfds"
    env = {**os.environ, "PYTHONPATH": str(blocker), "TFDS_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": USER_XLA_FLAGS}
    done = subprocess.run([sys.executable, "-m", "runner", "logger=[tensorboard]", "hydra.run.dir=outputs/run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: logger.tensorboard: needs the tensorboard package, which is not installed; "
                           "valid: install the tracking extra (pip install ")
    assert not data_dir.exists() and not (tmp_path / "outputs" / "run").exists()
