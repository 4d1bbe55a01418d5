"""A local dataset file in the Keras convention: an .npz holding x_train, y_train, x_test and y_test.

conf/dataset/npz.yaml names `read_npz` as its source and `validate_npz` as its check, which preflight runs on the
file before anything is written.
"""

import os
import zipfile
import zlib
from typing import Callable

import numpy as np

from runner.data.splits import TrainTest
from runner.errors import UserError, first_line

_KEYS = ("x_train", "y_train", "x_test", "y_test")
_VALID_FILE = "an .npz with x_train, y_train, x_test, y_test (np.savez)"


def validate_npz(path: str | None) -> None:
    """Raises UserError, naming the file and the problem, unless `path` is an .npz dataset `read_npz` accepts."""
    read_npz(path)


def read_npz(path: str | None, data_dir: str | None = None) -> TrainTest:
    """Reads and checks an .npz dataset: finite (N, D), (N, H, W) or (N, H, W, C) inputs, integer labels 0..K-1."""
    del data_dir  # every source is given the tfds data dir; a local file is read where it is
    if path is None:
        raise UserError(f"dataset.path: needs a value, e.g. dataset.path=data.npz; valid: {_VALID_FILE}")
    if not os.path.isfile(path):
        raise UserError(f"dataset.path={path}: no such file; valid: {_VALID_FILE}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty; valid: {_VALID_FILE}")
    arrays = _read_arrays(path)
    for split in ("train", "test"):
        _check_split(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    x_train, y_train, x_test, y_test = (arrays[key] for key in _KEYS)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"{path}: x_train examples are {x_train.shape[1:]} but x_test examples {x_test.shape[1:]}; "
            "valid: one example shape in both"
        )
    num_classes = int(y_train.max()) + 1
    if num_classes > len(y_train):
        raise UserError(
            f"{path}: y_train has label {y_train.max()}, which would make {num_classes} classes for {len(y_train)} "
            "examples; valid: class ids 0..K-1 with K at most the number of training examples"
        )
    if len(np.unique(y_train)) < 2:
        raise UserError(f"{path}: y_train has a single class ({y_train[0]}); valid: a classifier needs at least two")
    if y_test.max() >= num_classes:
        raise UserError(
            f"{path}: y_test has class {y_test.max()} but y_train's classes are 0..{num_classes - 1}; "
            "valid: test labels among the training classes"
        )
    return TrainTest(_with_channel_axis(x_train), y_train, _with_channel_axis(x_test), y_test, num_classes)


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """The four arrays of the file, or a UserError saying why they cannot be had."""
    def four(files: list[str]) -> list[str]:
        missing = [key for key in _KEYS if key not in files]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}; valid: {_VALID_FILE}")
        return list(_KEYS)

    return read_members(path, four, _VALID_FILE)


def read_members(path: str, choose: Callable[[list[str]], list[str]], valid: str,
                 prefix: str = "") -> dict[str, np.ndarray]:
    """The members of an .npz that `choose(its member names)` names, read without running code (no pickles) and
    without trusting a header's claimed size. Each failure is a UserError, `prefix` then the path, then what is
    wrong and `valid`: the one reader of .npz files (datasets, and `python -m runner.predict`'s inputs)."""
    try:
        archive = np.load(path, allow_pickle=False)  # a data file must not run code on load
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{prefix}{path} is not a readable .npz ({first_line(error)}); valid: {valid}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{prefix}{path} holds a single .npy array, not an .npz archive; valid: {valid}")
    with archive:
        keys = choose(archive.files)
        _check_headers(path, keys, valid, prefix)
        try:
            return {key: archive[key] for key in keys}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise UserError(f"{prefix}{path} has an unreadable array ({first_line(error)}); valid: {valid}") from None


def _check_headers(path: str, keys: list[str], valid: str, prefix: str) -> None:
    """Each array's header must describe no more bytes than its member holds: a header claiming huge
    dimensions would otherwise make NumPy try to allocate them (MemoryError, or a stall)."""
    with zipfile.ZipFile(path) as archive:
        for key in keys:
            try:
                info = archive.getinfo(f"{key}.npy")
            except KeyError:  # NumPy lists a member without the .npy suffix too, but np.savez writes none
                raise UserError(f"{prefix}{path}: {key} is not a .npy member ({key}.npy); valid: {valid}") from None
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
                raise UserError(f"{prefix}{path}: {key} has an unreadable header ({first_line(error)}); "
                                f"valid: {valid}") from None
            claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if claimed > info.file_size:
                raise UserError(f"{prefix}{path}: {key}'s header claims shape {shape} ({claimed:,} bytes) but the "
                                f"file holds {info.file_size:,}; valid: {valid}")


def _with_channel_axis(x: np.ndarray) -> np.ndarray:
    """Adds the trailing channel axis that (N, D) vectors and (N, H, W) images lack; (N, H, W, C) has one."""
    return x[..., None] if x.ndim in (2, 3) else x


def _check_split(path: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Raises UserError on the first problem with one split's inputs `x` and labels `y`."""
    x_key, y_key = f"x_{split}", f"y_{split}"
    if not 2 <= x.ndim <= 4:
        raise UserError(f"{path}: {x_key} has shape {x.shape}; valid: (N, D), (N, H, W) or (N, H, W, C)")
    if x.dtype.kind not in "iuf":
        raise UserError(f"{path}: {x_key} has dtype {x.dtype}; valid: integer (e.g. uint8) or float inputs")
    if y.ndim != 1:
        raise UserError(
            f"{path}: {y_key} has shape {y.shape}; valid: (N,) class ids (for one-hot labels, store their argmax)"
        )
    if y.dtype.kind not in "iu":
        raise UserError(f"{path}: {y_key} has dtype {y.dtype}; valid: integer class ids 0..K-1")
    if len(x) != len(y):
        raise UserError(f"{path}: {x_key} has {len(x)} examples but {y_key} {len(y)} labels; valid: one label each")
    if len(y) == 0:
        raise UserError(f"{path}: {x_key} has no examples; valid: at least one")
    if y.min() < 0:
        raise UserError(f"{path}: {y_key} has negative label {y.min()}; valid: class ids 0..K-1")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{path}: {x_key} has NaN or infinite values; valid: finite inputs")
