"""`make install` shows no setuptools compat-mode warning block, and still shows what goes wrong.

The install's pip command is read from `make -n -B install` (what make would run, run by nobody); the build
backend's hook it calls (setuptools' build_editable, in compat mode) runs on a copy of the checkout, offline, with
the command's environment and without it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WARNING = "Compat editable installs"
BUILD = "from setuptools import build_meta; build_meta.build_editable('{out}', {{'editable_mode': 'compat'}})"


def install_command() -> list[str]:
    dry = subprocess.run(["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True, check=True)
    (line,) = [line for line in dry.stdout.splitlines() if "editable_mode=compat" in line]
    return shlex.split(line)


def assignments(command: list[str]) -> dict[str, str]:
    """The VAR=value words that start a shell command."""
    env = {}
    for word in command:
        if "=" not in word or not word.split("=", 1)[0].isidentifier():
            break
        key, value = word.split("=", 1)
        env[key] = value
    return env


@pytest.fixture
def checkout(tmp_path) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / "src" / name)
    return tmp_path / "src"


def build(checkout: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = checkout.parent / "wheel"
    out.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-c", BUILD.format(out=out)], cwd=checkout, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_install_is_quiet_and_filters_only_the_compat_warning():
    command = install_command()
    assert "--quiet" in command and "-qq" not in command and command.count("-q") == 0  # one level: errors show
    assert assignments(command) == {"PYTHONWARNINGS": f"ignore:{WARNING}"}


def test_the_compat_build_prints_its_warning_block_without_the_filter_and_nothing_with_it(checkout):
    bare = build(checkout, {})
    assert bare.returncode == 0 and WARNING in bare.stderr  # what `make install` printed before
    filtered = build(checkout, assignments(install_command()))
    assert filtered.returncode == 0, filtered.stderr
    assert WARNING not in filtered.stderr and "transitional" not in filtered.stderr


def test_a_broken_project_still_says_why_with_the_filter(checkout):
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('name = "runner"', 'name = "runner"\nbogus = 1', 1))
    broken = build(checkout, assignments(install_command()))
    assert broken.returncode != 0 and "must not contain {'bogus'} properties" in broken.stderr
