"""load_splits: the source each conf/dataset file names, where tfds keeps what it prepares, and what is imported."""

import inspect
import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from runner.cli.relations import validate
from runner.config.checks import strip_specs
from runner.config.compose import CONF_DIR
from runner.data import check_dataset, load_splits
from runner.errors import UserError
from tests.conftest import compose_config

# The one value a choice needs from the user (its YAML comment says so).
_REQUIRED = {"tfds": ("dataset.name=kmnist",), "npz": ("dataset.path=/data/my.npz",)}
CHOICES = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("choice", CHOICES)
def test_every_dataset_file_names_a_source_that_takes_the_data_dir(dataset, choice):
    node = dataset(f"dataset={choice}", *_REQUIRED.get(choice, ()))
    source = instantiate(strip_specs(node.source))
    inspect.signature(source).bind(data_dir=None)  # raises TypeError unless load_splits' call fits
    if node.check is not None:
        inspect.signature(instantiate(strip_specs(node.check))).bind()  # preflight calls it with no arguments


def test_no_data_dir_means_the_tfds_default_set_by_the_TFDS_DATA_DIR_variable(tmp_path):
    # A fresh interpreter: tfds reads TFDS_DATA_DIR once, when it is imported.
    code = (
        "from runner.config.compose import compose_config; from runner.data import load_splits; "
        "print(load_splits(compose_config('dataset=digits').dataset, seed=0).x_train.shape)"
    )
    environment = os.environ | {"TFDS_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip().endswith("(1293, 8, 8, 1)")
    assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()


def test_the_data_package_and_a_dataset_without_a_check_import_no_tensorflow_datasets():
    # Preflight imports runner.data to run a dataset's check; tfds takes seconds to import.
    code = (
        "import sys; from runner.config.compose import compose_config; from runner.data import check_dataset; "
        "check_dataset(compose_config('dataset=digits').dataset); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'jax')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_a_path_with_a_dataset_that_reads_no_file_is_a_user_error(tmp_path):
    cfg = compose_config("dataset=digits", f"dataset.path={tmp_path / 'data.npz'}")
    with pytest.raises(UserError, match=r"^dataset.path: dataset.name=digits reads no file; valid: a dataset= choice"):
        validate(cfg)


def test_a_source_that_cannot_be_imported_is_a_user_error_naming_the_key(dataset):
    node = dataset("dataset=npz", "dataset.path=/data/my.npz")
    node.source._target_ = node.check._target_ = "runner.data.no_such_module.read"
    with pytest.raises(UserError, match=r"^dataset.source: .*runner.data.no_such_module.read"):
        load_splits(node, seed=0)
    with pytest.raises(UserError, match=r"^dataset.check: .*runner.data.no_such_module.read"):
        check_dataset(node)
