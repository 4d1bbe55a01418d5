"""The embedded datasets: digits and mnist1d built offline with tfds, read back, and safe against interruption."""

import random

import numpy as np
import pytest
from sklearn.datasets import load_digits

from runner.data import embedded
from runner.data.catalogue import load_tfds
from runner.data.embedded import Digits


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    """The examples of `x` in a canonical order, to compare datasets whose example order differs."""
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def _incomplete_dirs(data_dir) -> list:
    return [path for path in data_dir.rglob("*") if path.name.startswith("incomplete.")]


def test_digits_is_1437_train_and_360_test_8x8x1_images_of_10_classes(tfds_dir):
    data = load_tfds("digits", str(tfds_dir))
    assert data.x_train.shape == (1437, 8, 8, 1) and data.x_test.shape == (360, 8, 8, 1)
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() == 0 and data.x_train.max() == 16
    assert data.num_classes == 10
    assert set(np.unique(data.y_train)) == set(range(10))


def test_digits_test_split_is_the_last_360_of_a_seed_0_permutation(tfds_dir):
    data = load_tfds("digits", str(tfds_dir))
    digits = load_digits()
    test = np.random.default_rng(0).permutation(len(digits.target))[1437:]
    expected = np.concatenate([digits.images[test].reshape(360, -1), digits.target[test, None]], axis=1)
    actual = np.concatenate([data.x_test.reshape(360, -1), data.y_test[:, None]], axis=1)
    np.testing.assert_array_equal(_sorted_rows(actual), _sorted_rows(expected.astype(np.float32)))


def test_mnist1d_is_4000_train_and_1000_test_40x1_signals_of_10_classes(tfds_dir):
    data = load_tfds("mnist1d", str(tfds_dir))
    assert data.x_train.shape == (4000, 40, 1) and data.x_test.shape == (1000, 40, 1)
    assert data.x_train.dtype == np.float32
    assert data.num_classes == 10
    assert set(np.unique(data.y_test)) == set(range(10))


def test_mnist1d_is_the_packages_default_dataset_and_leaves_the_global_rngs_alone(tfds_dir):
    np.random.seed(123)
    random.seed(123)
    generated = embedded._make_mnist1d()
    after = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.random(), random.random())
    stored = load_tfds("mnist1d", str(tfds_dir))
    np.testing.assert_array_equal(
        _sorted_rows(stored.x_train[..., 0]), _sorted_rows(generated["x"].astype(np.float32))
    )


def test_a_prepared_dataset_is_read_back_not_rebuilt(tfds_dir, monkeypatch):
    load_tfds("digits", str(tfds_dir))

    def fail(self, dl_manager):
        raise AssertionError("digits was generated again")

    monkeypatch.setattr(Digits, "_split_generators", fail)
    assert len(load_tfds("digits", str(tfds_dir)).y_train) == 1437


def test_a_build_cut_short_leaves_no_dataset_and_the_next_load_builds_it(tmp_path, monkeypatch):
    original = Digits._generate_examples

    def crash_midway(self, images, labels):
        yield from list(original(self, images, labels))[:100]
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Digits, "_generate_examples", crash_midway)
    with pytest.raises(RuntimeError, match="interrupted"):
        load_tfds("digits", str(tmp_path))
    assert not (tmp_path / "digits" / "1.0.0").exists()
    assert _incomplete_dirs(tmp_path) == []

    monkeypatch.setattr(Digits, "_generate_examples", original)
    assert len(load_tfds("digits", str(tmp_path)).y_train) == 1437


def test_the_incomplete_dir_of_a_killed_build_is_never_read(tmp_path):
    # What a build killed outright (SIGKILL, power loss) leaves: tfds' temporary dir, never renamed into place.
    killed = tmp_path / "digits" / "incomplete.ABC123_1.0.0"
    killed.mkdir(parents=True)
    (killed / "dataset_info.json").write_text("{}")
    data = load_tfds("digits", str(tmp_path))
    assert len(data.y_train) == 1437 and len(data.y_test) == 360


def test_a_build_that_loses_a_race_reads_the_winners_copy(tmp_path, monkeypatch):
    original = Digits._split_generators
    raced = False

    def split_generators_while_a_parallel_job_finishes_first(self, dl_manager):
        nonlocal raced
        if not raced:
            raced = True
            Digits(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
        return original(self, dl_manager)

    monkeypatch.setattr(Digits, "_split_generators", split_generators_while_a_parallel_job_finishes_first)
    data = load_tfds("digits", str(tmp_path))
    assert raced and len(data.y_train) == 1437
    assert _incomplete_dirs(tmp_path) == []


def test_a_first_build_says_it_builds_locally_in_one_line_and_a_read_back_says_nothing(tmp_path, capsys):
    load_tfds("digits", str(tmp_path))
    assert capsys.readouterr().out == f"building digits locally into {tmp_path}/digits/1.0.0 (first use only)…\n"
    load_tfds("digits", str(tmp_path))
    assert capsys.readouterr().out == ""
