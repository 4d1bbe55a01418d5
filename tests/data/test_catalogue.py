"""tfds catalogue datasets: read through as_data_source, refused in the user's words when they cannot be had."""

import importlib.util
import io

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing import mocking

from runner.data import catalogue, load_splits
from runner.data.catalogue import load_tfds
from runner.errors import UserError

_HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture
def mock_catalogue(monkeypatch):
    """tfds.testing.mock_data: random examples for any catalogue dataset, nothing downloaded or prepared."""
    # tfds 4.9.10's mock installs `_getitems` on the data source unbound, so __getitems__ receives the keys as
    # `self` and fails; its own tests (mocking_test.py) only index one example at a time.
    monkeypatch.setattr(
        mocking,
        "_getitems",
        lambda record_keys, generator, serialized=False: [generator[key] for key in record_keys],
    )
    # mock_data fakes the download, so the offline probe before it goes too.
    monkeypatch.setattr(catalogue, "_check_reachable", lambda name, builder: None)
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize(
    ("name", "example_shape"), [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_catalogue_images_load_with_their_shape_and_labels_in_range(
    mock_catalogue, dataset, tmp_path, name, example_shape
):
    node = dataset(f"dataset={name}", "dataset.val_fraction=0.25", f"dataset.data_dir={tmp_path}")
    splits = load_splits(node, seed=0)
    assert splits.x_train.shape == (18, *example_shape)
    assert splits.x_val.shape == (6, *example_shape)
    assert splits.x_test.shape == (24, *example_shape)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int32
    assert splits.num_classes == 10
    for labels in (splits.y_train, splits.y_val, splits.y_test):
        assert labels.min() >= 0 and labels.max() < 10
    assert splits.name == name


@pytest.mark.parametrize(
    ("choice", "builder"),
    [
        ("dataset=mnist", "mnist_np"),
        ("dataset=fashion_mnist", "fashion_mnist_np"),
        ("dataset=cifar10", "cifar10_np"),
        ("dataset=tfds dataset.name=kmnist", "kmnist"),
    ],
)
def test_an_offline_download_is_a_user_error_and_leaves_nothing_half_written(
    dataset, tmp_path, monkeypatch, choice, builder
):
    def offline(url, **kwargs):
        raise requests.exceptions.ConnectionError(f"Failed to resolve host of {url}")

    monkeypatch.setattr("tensorflow_datasets.core.download.downloader._open_url", offline)
    with pytest.raises(UserError) as raised:
        load_splits(dataset(*choice.split(), f"dataset.data_dir={tmp_path}"), seed=0)
    how = {"mnist_np": "dataset=mnist", "fashion_mnist_np": "dataset=fashion_mnist",
           "cifar10_np": "dataset=cifar10"}.get(builder, f"dataset=tfds dataset.name={builder}")
    typed = how.split("=", 1)[1] if builder.endswith("_np") else builder  # the user's word, not our builder's
    assert str(raised.value) == (
        f"{how}: {typed} is not prepared in {tmp_path} and could not be downloaded: it needs network once to "
        f"download (or prepare it where there is network with `python -m runner {how} dataset.data_dir=DIR "
        "trainer.epochs=1`, copy DIR here and set dataset.data_dir to the copy), or use a dataset that needs no "
        "network, e.g. dataset=digits (python -m runner --help lists them)"
    )
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith("incomplete.") or ".tmp." in p.name]
    assert leftovers == []
    assert [p for p in tmp_path.glob("*/*") if p.parent.name != "downloads"] == []  # no dataset version dir


def test_an_unknown_name_says_where_the_valid_choices_are(dataset, tmp_path):
    with pytest.raises(UserError) as raised:
        load_splits(dataset("dataset=tfds", "dataset.name=mnits", f"dataset.data_dir={tmp_path}"), seed=0)
    assert str(raised.value) == (
        "tfds dataset mnits is not a known dataset; valid: a tfds catalogue name, or one of the dataset= choices "
        "(python -m runner --help), e.g. dataset=digits"
    )


def test_dataset_tfds_reads_the_builder_its_name_gives(mock_catalogue, dataset, tmp_path):
    splits = load_splits(dataset("dataset=tfds", "dataset.name=kmnist", f"dataset.data_dir={tmp_path}"), seed=0)
    assert splits.name == "kmnist" and splits.x_test.shape == (24, 28, 28, 1)


def test_a_dataset_of_text_inputs_is_refused_before_any_download(tmp_path):
    with pytest.raises(UserError, match=r"tfds dataset imdb_reviews is not a classification dataset .*'text'"):
        load_tfds("imdb_reviews", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


class TinyPngImages(tfds.core.GeneratorBasedBuilder):
    """Six 4x4 grayscale images per split, stored like tfds' catalogue images: PNG-encoded Image features."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0), "test": self._generate_examples(100)}

    def _generate_examples(self, offset):
        for index in range(6):
            buffer = io.BytesIO()
            # Encoded here with PIL: tfds encodes NumPy images with TensorFlow, which this venv lacks.
            Image.fromarray(np.full((4, 4), offset + index, np.uint8)).save(buffer, format="PNG")
            yield index, {"image": buffer.getvalue(), "label": index % 3}


def test_a_copy_with_png_images_is_read_without_tensorflow(tmp_path):
    data = load_tfds("tiny_png_images", str(tmp_path))
    assert data.x_train.shape == (6, 4, 4, 1) and data.x_train.dtype == np.uint8
    assert sorted(data.x_test[:, 0, 0, 0]) == list(range(100, 106))
    assert data.num_classes == 3


class TinyNumpyImages(TinyPngImages):
    """TinyPngImages given as NumPy arrays, which tfds can only encode to PNG with TensorFlow."""

    def _generate_examples(self, offset):
        for index in range(6):
            yield index, {"image": np.full((4, 4, 1), offset + index, np.uint8), "label": index % 3}


@pytest.mark.skipif(_HAS_TENSORFLOW, reason="preparing needs TensorFlow only where it is missing")
def test_preparing_without_tensorflow_is_a_user_error_that_says_how_to_get_a_copy(tmp_path):
    with pytest.raises(UserError) as raised:
        load_tfds("tiny_numpy_images", str(tmp_path))
    assert str(raised.value).startswith(
        f"tfds dataset tiny_numpy_images is not prepared in {tmp_path}, and tfds needs TensorFlow (not installed) to "
        f"prepare it: run once where it is, `tfds build tiny_numpy_images --file_format=array_record "
        f"--data_dir={tmp_path}`"
    )
    assert [p for p in tmp_path.rglob("*") if p.name.startswith("incomplete.")] == []
