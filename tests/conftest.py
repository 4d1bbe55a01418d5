"""Shared fixtures: one tfds data dir per session, the real config composed and shrunk for CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runner.config import CONF_DIR, register_schemas

register_schemas()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    """A tfds data dir shared by the whole session, so embedded datasets are built once."""
    path = tmp_path_factory.mktemp("tfds")
    os.environ["TFDS_DATA_DIR"] = str(path)
    # The runner's compiled-program cache, kept out of the user's home for the test session.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    return path


def compose_config(*overrides: str):
    """The real config from conf/, with overrides, as `python -m runner` would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


class Runner:
    """Runs `python -m runner` in a working dir, as a user would from a shell."""

    def __init__(self, cwd: Path, tfds_dir: Path):
        self.cwd, self.env = cwd, {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu"}

    def __call__(self, *args: str, module: str = "runner", timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def run_dirs(self) -> list[Path]:
        """Every run dir under outputs/ (single runs and multirun jobs), oldest first."""
        return sorted(p.parent for p in (self.cwd / "outputs").rglob("summary.json"))


@pytest.fixture
def cli(tmp_path, tfds_dir) -> Runner:
    return Runner(tmp_path, tfds_dir)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
