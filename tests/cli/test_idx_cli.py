"""`python -m runner dataset=idx`: a bad IDX file is one line, exit 2, nothing written; a good set trains."""

from __future__ import annotations

import gzip
import struct

import numpy as np

from tests.cli.test_bad_input import _assert_rejected
from tests.conftest import read_summary

NAMES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic number 0, 0, 0x08, axes; big-endian uint32 sizes; the values."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _write_set(directory, num_train: int = 64, num_test: int = 16):
    """Tiny 8x8 images whose label is whether their mean is above mid-grey, gzipped under MNIST's names."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    for split, count in (("train", num_train), ("test", num_test)):
        images = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
        labels = (images.mean(axis=(1, 2)) > 127.5).astype(np.uint8)
        for name, array in zip(NAMES[split], (images, labels)):
            (directory / name).write_bytes(gzip.compress(_idx(array)))
    return directory


def test_a_truncated_idx_file_is_one_line_exit_2_and_nothing_written(cli, tmp_path):
    directory = _write_set(tmp_path / "idx")
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    _assert_rejected(cli, ["dataset=idx", f"dataset.path={directory}"], [str(path), "is truncated", "valid:"])


def test_an_idx_set_trains_one_epoch_with_the_books_split_and_scaling(cli, tmp_path):
    directory = _write_set(tmp_path / "idx")
    result = cli("dataset=idx", f"dataset.path={directory}", "dataset.validation=tail", "dataset.val_size=16",
                 "dataset.scaling=unit", "trainer.epochs=1", "trainer.batch_size=16", "model.depth=1",
                 "model.width=16")
    assert result.returncode == 0, result.stderr
    [run_dir] = cli.run_dirs()
    assert read_summary(run_dir)["status"] == "completed"
