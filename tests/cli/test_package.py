"""The runner as a package: a wheel built from the repo's sdist, installed in a fresh venv, runs from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What the sdist is made from: the files pyproject.toml names and the two trees it packages.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "runner", "hydra_plugins", "conf")


def sh(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds: an sdist of (a copy of) the repo, then a wheel from that sdist.

    Without build isolation, so nothing is downloaded: this venv's setuptools builds it (checked against
    [build-system] requires)."""
    work = tmp_path_factory.mktemp("build")
    source, dist = work / "source", work / "dist"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    sh(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})", cwd=source)
    [sdist] = dist.glob("*.tar.gz")
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies",
       "--no-cache-dir", "--wheel-dir", dist, sdist, cwd=work)
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; its dependencies are this venv's, seen through a .pth file."""
    root = tmp_path_factory.mktemp("venv")
    sh(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    # Installed while the new venv sees nothing else, so pip finds no other `runner` to replace.
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir", wheel)
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # Path lines are appended after the venv's own site-packages, and the .pth files of the dirs they name do not
    # run: the repo's editable install (a .pth finder in this venv) stays out, so `import runner` is the wheel's.
    dependencies = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    (site / "runner_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return root


def user_env(tfds_dir: Path) -> dict[str, str]:
    """A user's shell: nothing points at the repo."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu"}


@pytest.mark.xdist_group("package")  # one worker builds the wheel and the venv once
def test_wheel_holds_every_module_and_conf_file_of_the_checkout(wheel):
    # pyproject.toml lists the packages (conf/ maps to runner/conf): a package left off the list fails here.
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if ".dist-info/" not in name}
    modules = {p.relative_to(ROOT).as_posix()
               for top in ("runner", "hydra_plugins") for p in (ROOT / top).rglob("*.py")}
    conf = {"runner/conf/" + p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert packaged == modules | conf


@pytest.mark.xdist_group("package")  # one worker builds the wheel and the venv once
def test_installed_wheel_trains_from_an_unrelated_directory(venv, tmp_path, tfds_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = user_env(tfds_dir)
    where = sh(venv / "bin" / "python", "-c", "import runner, runner.config.compose as c; print(runner.__file__); "
               "print(c.CONF_DIR)", cwd=elsewhere, env=env).stdout.split()
    site = Path(sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   env=env).stdout.strip())
    assert Path(where[0]) == site / "runner" / "__init__.py"  # the wheel's runner, not the repo's
    assert Path(where[1]) == site / "runner" / "conf"

    result = sh(venv / "bin" / "runner", "trainer.epochs=1", cwd=elsewhere, env=env)
    [summary_path] = (elsewhere / "outputs").glob("*/*/summary.json")  # outputs/<date>/<time>/ where it ran
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1, result.stdout
    assert (summary_path.parent / ".hydra" / "config.yaml").is_file()


@pytest.mark.xdist_group("package")  # one worker builds the wheel and the venv once
def test_installed_runner_helps_and_completes_from_its_packaged_conf(venv, tmp_path, tfds_dir):
    env = user_env(tfds_dir)
    help_text = sh(venv / "bin" / "runner", "--help", cwd=tmp_path, env=env).stdout
    assert help_text.startswith("runner: ")
    optimizers = sorted(p.stem for p in (ROOT / "conf" / "optimizer").glob("*.yaml"))
    assert f"optimizer: {', '.join(optimizers)}\n" in help_text
    offered = sh(venv / "bin" / "runner", "-sc", "query=bash", cwd=tmp_path,
                 env={**env, "COMP_LINE": "runner optimizer="}).stdout.split()
    assert offered == [f"optimizer={name}" for name in optimizers]
    install = sh(venv / "bin" / "runner", "-sc", "install=bash", cwd=tmp_path, env=env).stdout
    assert install.rstrip().endswith("-F hydra_bash_completion runner")
