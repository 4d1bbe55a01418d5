"""load_splits: which source a name reads, and where tfds keeps what it prepares."""

import os
import subprocess
import sys

import pytest

from runner.data import load_splits
from runner.errors import UserError


def test_no_data_dir_means_the_tfds_default_set_by_the_TFDS_DATA_DIR_variable(tmp_path):
    # A fresh interpreter: tfds reads TFDS_DATA_DIR once, when it is imported.
    code = "from runner.data import load_splits; print(load_splits('digits', val_fraction=0.1, seed=0).x_train.shape)"
    environment = os.environ | {"TFDS_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip().endswith("(1293, 8, 8, 1)")
    assert (tmp_path / "digits" / "1.0.0" / "dataset_info.json").exists()


def test_a_path_with_a_dataset_other_than_npz_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"dataset.path=.* is read only with dataset=npz, not dataset.name=digits"):
        load_splits("digits", val_fraction=0.1, seed=0, path=str(tmp_path / "data.npz"))
