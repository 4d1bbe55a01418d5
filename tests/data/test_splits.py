"""Carving validation from train, keeping a train subset, and scaling every split by train statistics."""

import numpy as np
import pytest

from runner.data import load_splits
from runner.data.catalogue import load_tfds
from runner.data.splits import TrainTest, split_and_scale
from runner.errors import UserError


def _indexed(num_train: int = 200, num_test: int = 50) -> TrainTest:
    """Three-channel inputs whose train labels are the example's index, so a split's labels say which it holds."""
    rng = np.random.default_rng(7)
    offsets = np.array([0.0, 10.0, -5.0])  # channels with different means and spreads
    x_train = rng.normal(size=(num_train, 4, 4, 3)) * [1.0, 3.0, 0.5] + offsets
    x_test = rng.normal(size=(num_test, 4, 4, 3)) * [1.0, 3.0, 0.5] + offsets
    return TrainTest(x_train, np.arange(num_train), x_test, np.zeros(num_test, np.int64), num_train)


def _split(data=None, **kwargs):
    arguments = {"name": "indexed", "val_fraction": 0.1, "seed": 0} | kwargs
    return split_and_scale(_indexed() if data is None else data, **arguments)


def test_validation_and_train_are_disjoint_and_together_are_the_train_split():
    splits = _split(val_fraction=0.25)
    assert set(splits.y_val).isdisjoint(splits.y_train)
    assert sorted([*splits.y_val, *splits.y_train]) == list(range(200))


@pytest.mark.parametrize(("val_fraction", "num_val"), [(0.1, 20), (0.25, 50), (0.003, 1), (0.0, 0)])
def test_validation_is_a_rounded_share_of_train_and_at_least_one_example(val_fraction, num_val):
    splits = _split(val_fraction=val_fraction)
    assert len(splits.y_val) == len(splits.x_val) == num_val
    assert len(splits.y_train) == 200 - num_val


def test_no_validation_gives_empty_arrays_with_the_example_shape():
    splits = _split(val_fraction=0.0)
    assert splits.x_val.shape == (0, 4, 4, 3) and splits.x_val.dtype == np.float32
    assert splits.y_val.shape == (0,) and splits.y_val.dtype == np.int32


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    assert np.array_equal(_split(seed=3).y_val, _split(seed=3).y_val)
    assert not np.array_equal(_split(seed=3).y_val, _split(seed=4).y_val)


def test_train_subset_keeps_the_first_examples_of_the_permuted_remainder():
    full, subset = _split(), _split(train_subset=30)
    assert np.array_equal(subset.y_train, full.y_train[:30])
    assert np.array_equal(subset.y_val, full.y_val)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, r"dataset.val_fraction=1.0 is out of range; valid: 0 <= val_fraction < 1"),
        ({"val_fraction": -0.1}, r"dataset.val_fraction=-0.1 is out of range"),
        ({"val_fraction": 0.999}, r"dataset.val_fraction=0.999 leaves no training examples of 200"),
        ({"train_subset": 0}, r"dataset.train_subset=0 is out of range; valid: 1..180"),
        ({"train_subset": 181}, r"dataset.train_subset=181 is out of range; valid: 1..180"),
    ],
)
def test_out_of_range_arguments_are_user_errors_naming_the_valid_range(kwargs, message):
    with pytest.raises(UserError, match=message):
        _split(**kwargs)


def test_the_training_split_has_zero_mean_and_unit_std_per_channel():
    splits = _split(train_subset=100)
    np.testing.assert_allclose(splits.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(splits.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_validation_and_test_are_scaled_by_the_training_statistics_not_their_own():
    data = _indexed()
    splits = _split(data, train_subset=100)
    train_raw = data.x_train[splits.y_train]
    mean, std = train_raw.mean(axis=(0, 1, 2)), train_raw.std(axis=(0, 1, 2))
    np.testing.assert_allclose(splits.x_val, (data.x_train[splits.y_val] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(splits.x_test, (data.x_test - mean) / std, atol=1e-5)
    assert abs(splits.x_test.mean()) > 1e-3  # scaled by its own statistics it would be centred exactly


def test_a_constant_channel_is_centred_not_divided_by_zero():
    data = _indexed()
    constant = data._replace(x_train=data.x_train.copy(), x_test=data.x_test.copy())
    constant.x_train[..., 0] = 5.0
    constant.x_test[..., 0] = 6.0
    splits = _split(constant)
    assert np.all(splits.x_train[..., 0] == 0.0)
    assert np.all(np.isfinite(splits.x_test))


def test_digits_splits_match_a_manual_split_and_scaling_of_the_raw_arrays(dataset, tfds_dir):
    raw = load_tfds("digits", str(tfds_dir))
    splits = load_splits(dataset("dataset=digits", f"dataset.data_dir={tfds_dir}"), seed=5)
    order = np.random.default_rng(5).permutation(1437)
    val, train = order[:144], order[144:]
    mean, std = raw.x_train[train].mean(axis=(0, 1, 2)), raw.x_train[train].std(axis=(0, 1, 2))
    np.testing.assert_allclose(splits.x_train, (raw.x_train[train] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(splits.x_val, (raw.x_train[val] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(splits.x_test, (raw.x_test - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(splits.y_val, raw.y_train[val])
    assert splits.x_train.shape == (1293, 8, 8, 1) and splits.num_classes == 10 and splits.name == "digits"
