"""Local .npz datasets: Keras-convention files load with a channel axis; every malformed file is a UserError."""

import numpy as np
import pytest

from runner.data import check_dataset, load_splits, validate_npz
from runner.errors import UserError


def _arrays(**overrides) -> dict:
    """A valid MNIST-like dataset: uint8 (N, H, W) images and integer labels 0..3."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(40, 6, 6), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.integers(0, 256, size=(12, 6, 6), dtype=np.uint8),
        "y_test": np.arange(12) % 4,
    }
    return {key: value for key, value in (arrays | overrides).items() if value is not None}


def _write(tmp_path, **overrides) -> str:
    path = tmp_path / "data.npz"
    np.savez(path, **_arrays(**overrides))
    return str(path)


@pytest.fixture
def npz(dataset):
    """`npz(path, *overrides)`: the dataset node of `dataset=npz dataset.path=<path>`."""
    return lambda path, *overrides: dataset("dataset=npz", f"dataset.path='{path}'", *overrides)


def test_uint8_images_load_with_a_channel_axis_and_scaled(tmp_path, npz):
    path = _write(tmp_path)
    check_dataset(npz(path))
    splits = load_splits(npz(path, "dataset.val_fraction=0.25"), seed=0)
    assert splits.x_train.shape == (30, 6, 6, 1) and splits.x_val.shape == (10, 6, 6, 1)
    assert splits.x_test.shape == (12, 6, 6, 1)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int32
    assert splits.num_classes == 4
    assert abs(splits.x_train.mean()) < 1e-5


def test_vectors_become_signals_with_one_channel(tmp_path, npz):
    path = _write(tmp_path, x_train=np.ones((40, 5), np.float32), x_test=np.ones((12, 5), np.float32))
    assert load_splits(npz(path, "dataset.val_fraction=0.0"), seed=0).x_train.shape == (40, 5, 1)


def test_channels_last_images_keep_their_channels(tmp_path, npz):
    path = _write(tmp_path, x_train=np.zeros((40, 6, 6, 3)), x_test=np.zeros((12, 6, 6, 3)))
    assert load_splits(npz(path, "dataset.val_fraction=0.0"), seed=0).x_test.shape == (12, 6, 6, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_test": None}, r"lacks y_test; valid: an .npz with x_train, y_train, x_test, y_test"),
        ({"x_train": None, "y_train": None}, r"lacks x_train, y_train"),
        ({"y_train": np.arange(39) % 4}, r"x_train has 40 examples but y_train 39 labels"),
        ({"y_train": (np.arange(40) % 4).astype(np.float32)}, r"y_train has dtype float32; valid: integer class ids"),
        ({"y_test": np.arange(12) % 4 - 1}, r"y_test has negative label -1"),
        ({"y_train": np.eye(4, dtype=np.int64)[np.arange(40) % 4]}, r"y_train has shape \(40, 4\); valid: \(N,\)"),
        ({"y_test": np.arange(12) % 5}, r"y_test has class 4 but y_train's classes are 0..3"),
        ({"x_test": np.zeros((12, 7, 7), np.uint8)}, r"x_train examples are \(6, 6\) but x_test examples \(7, 7\)"),
        ({"x_train": np.full((40, 6, 6), np.nan)}, r"x_train has NaN or infinite values"),
        ({"x_test": np.full((12, 6, 6), np.inf)}, r"x_test has NaN or infinite values"),
        ({"x_train": np.zeros(40)}, r"x_train has shape \(40,\); valid: \(N, D\), \(N, H, W\) or \(N, H, W, C\)"),
        ({"x_train": np.array([["a"]] * 40)}, r"x_train has dtype <U1; valid: integer \(e.g. uint8\) or float"),
        ({"x_train": np.zeros((0, 6, 6)), "y_train": np.zeros(0, np.int64)}, r"x_train has no examples"),
    ],
)
def test_a_malformed_file_is_a_user_error_naming_the_file_and_the_problem(tmp_path, npz, overrides, message):
    path = _write(tmp_path, **overrides)
    with pytest.raises(UserError, match=message) as raised:
        check_dataset(npz(path))
    assert str(raised.value).startswith(path)
    with pytest.raises(UserError, match=message):
        load_splits(npz(path), seed=0)


def test_no_path_is_a_user_error_from_the_check_and_the_source(dataset):
    message = r"^dataset.path: needs a value, e.g. dataset.path=data.npz; valid: an .npz"
    for run in (check_dataset, lambda node: load_splits(node, seed=0)):
        with pytest.raises(UserError, match=message):
            run(dataset("dataset=npz"))


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"dataset.path=.*absent.npz: no such file"):
        validate_npz(str(tmp_path / "absent.npz"))


def test_a_file_that_is_not_an_npz_is_a_user_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(UserError, match=r"notes.txt is not a readable .npz"):
        validate_npz(str(path))


def test_a_single_npy_array_is_a_user_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(UserError, match=r"x.npy holds a single .npy array, not an .npz archive"):
        validate_npz(str(path))


def test_an_array_that_needs_pickle_is_a_user_error(tmp_path):
    path = _write(tmp_path, y_train=np.array([object()] * 40))
    with pytest.raises(UserError, match=r"data.npz has an unreadable array"):
        validate_npz(path)
