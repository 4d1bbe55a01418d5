"""mnist, fashion_mnist and cifar10 prepared without TensorFlow, from tiny files in the upstream formats.

The files are served to tfds' real download manager in place of HTTP, so each build downloads, checks checksums,
caches and parses as it would online; only the bytes and their registered checksums are the tests'.
"""

import contextlib
import gzip
import hashlib
import io
import tarfile
import types
import urllib.parse

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums, download_manager
from tensorflow_datasets.image_classification import cifar, mnist

from runner.data import load_splits
from runner.data.catalogue import load_tfds
from runner.data import catalogue
from runner.data.catalogue_builders import read_cifar_batch

# The names in the real archive's batches.meta.txt, one a line: tfds' cifar10 takes its label names from it.
_CIFAR10_META = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"

_MNIST_FILENAMES = {
    "train_images": mnist._MNIST_TRAIN_DATA_FILENAME,
    "train_labels": mnist._MNIST_TRAIN_LABELS_FILENAME,
    "test_images": mnist._MNIST_TEST_DATA_FILENAME,
    "test_labels": mnist._MNIST_TEST_LABELS_FILENAME,
}


def _idx_gz(array: np.ndarray) -> bytes:
    """A gzipped IDX file as LeCun's page defines it: 0, 0, type 0x08 (uint8), ndim; big-endian int32 sizes; values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _cifar_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A CIFAR-10 binary batch as its page defines it: per image a label byte, then 1024 red, green, blue bytes."""
    return b"".join(
        bytes([label]) + image[:, :, 0].tobytes() + image[:, :, 1].tobytes() + image[:, :, 2].tobytes()
        for image, label in zip(images, labels)
    )


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _images(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)


def _labels(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 10, size=count, dtype=np.uint8)


def _sorted_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each example as one row (pixels, label), sorted: tfds stores examples in an order of its own."""
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture
def serve(monkeypatch):
    """Serves bytes for URLs to tfds' downloader in place of HTTP; `serve(files)` returns the URLs requested.

    `serve(files)` also registers the files' own checksums, as tfds registers the real files'; `serve(files,
    register=False)` keeps tfds' registered checksums.
    """
    requested = []

    def start(files: dict[str, bytes], register: bool = True) -> list[str]:
        @contextlib.contextmanager
        def open_url(url, **kwargs):
            requested.append(url)
            yield types.SimpleNamespace(url=url, headers={}), [files[url]]

        monkeypatch.setattr("tensorflow_datasets.core.download.downloader._open_url", open_url)
        # The offline probe (runner.data.catalogue._check_reachable) is HTTP too: a served URL answers it;
        # tests/cli/test_catalogue.py tests it unserved.
        monkeypatch.setattr(catalogue.requests, "head", lambda url, **kwargs: url in files
                            or pytest.fail(f"probed {url}, not served"))
        if register:
            url_infos = {
                url: checksums.UrlInfo(size=len(data), checksum=hashlib.sha256(data).hexdigest(), filename=None)
                for url, data in files.items()
            }
            monkeypatch.setattr(checksums, "get_all_url_infos", lambda: url_infos)
        return requested

    return start


def _mnist_files(url: str, num_train: int = 5, num_test: int = 3) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Tiny MNIST-format files at the URLs tfds downloads them from, and the arrays they hold."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": _images(rng, num_train, (28, 28)),
        "train_labels": _labels(rng, num_train),
        "test_images": _images(rng, num_test, (28, 28)),
        "test_labels": _labels(rng, num_test),
    }
    files = {urllib.parse.urljoin(url, _MNIST_FILENAMES[key]): _idx_gz(array) for key, array in arrays.items()}
    return files, arrays


# The IDX reader itself is runner/data/idx.py's, tested in tests/data/test_idx.py.


def test_read_cifar_batch_gives_each_record_its_label_and_red_green_blue_planes_as_channels():
    images = _images(np.random.default_rng(1), 3, (32, 32, 3))
    parsed_images, parsed_labels = read_cifar_batch(_cifar_batch(images, np.array([9, 0, 4])))
    np.testing.assert_array_equal(parsed_images, images)
    np.testing.assert_array_equal(parsed_labels, [9, 0, 4])
    assert parsed_images.shape == (3, 32, 32, 3) and parsed_images.dtype == np.uint8


def test_read_cifar_batch_rejects_a_partial_record():
    with pytest.raises(ValueError, match=r"a CIFAR-10 batch of 3074 bytes; valid: a multiple of 3073"):
        read_cifar_batch(bytes(3074))


@pytest.mark.parametrize(("name", "tfds_builder"), [("mnist", mnist.MNIST), ("fashion_mnist", mnist.FashionMNIST)])
def test_mnist_formats_build_from_tfds_urls_into_the_arrays_the_idx_files_hold(tmp_path, serve, name, tfds_builder):
    files, arrays = _mnist_files(tfds_builder.URL)
    requested = serve(files)
    data = load_tfds(f"{name}_np", str(tmp_path))
    assert sorted(requested) == sorted(tfds.builder_cls(name).url_infos)  # the files tfds' own builder downloads
    for split in ("train", "test"):
        images, labels = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        np.testing.assert_array_equal(
            _sorted_rows(images, labels), _sorted_rows(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        )
    assert data.x_train.shape == (5, 28, 28, 1) and data.x_test.shape == (3, 28, 28, 1)
    assert data.x_train.dtype == np.uint8 and data.num_classes == 10
    builder = tfds.builder(f"{name}_np", data_dir=str(tmp_path))
    assert {split: info.num_examples for split, info in builder.info.splits.items()} == {"train": 5, "test": 3}
    upstream = tfds.builder(name, data_dir=str(tmp_path))  # tfds' own builder: its info needs no preparing
    assert builder.info.features["label"].names == upstream.info.features["label"].names
    assert builder.info.file_format.value == "array_record"


def test_dataset_mnist_reads_the_numpy_builders_copy(dataset, tmp_path, serve):
    files, _ = _mnist_files(mnist.MNIST.URL, num_train=10)
    serve(files)
    splits = load_splits(dataset("dataset=mnist", "dataset.val_fraction=0.2", f"dataset.data_dir={tmp_path}"), seed=0)
    assert splits.x_train.shape == (8, 28, 28, 1) and splits.x_val.shape == (2, 28, 28, 1)
    assert splits.x_test.shape == (3, 28, 28, 1) and splits.name == "mnist"
    assert (tmp_path / "mnist_np" / "1.0.0" / "dataset_info.json").exists()
    assert not (tmp_path / "mnist").exists()


def test_cifar10_builds_from_tfds_url_into_the_arrays_the_binary_batches_hold(tmp_path, serve):
    info = cifar.Cifar10._cifar_info.fget(cifar.Cifar10)
    rng = np.random.default_rng(2)
    batches = {name: (_images(rng, 2, (32, 32, 3)), _labels(rng, 2)) for name in [*info.train_files, *info.test_files]}
    members = {info.prefix + name: _cifar_batch(*batch) for name, batch in batches.items()}
    members[info.prefix + "batches.meta.txt"] = _CIFAR10_META
    requested = serve({info.url: _tar_gz(members)})
    data = load_tfds("cifar10_np", str(tmp_path))
    assert requested == list(tfds.builder_cls("cifar10").url_infos)
    train = [batches[name] for name in info.train_files]
    np.testing.assert_array_equal(
        _sorted_rows(data.x_train, data.y_train),
        _sorted_rows(np.concatenate([images for images, _ in train]), np.concatenate([labels for _, labels in train])),
    )
    np.testing.assert_array_equal(_sorted_rows(data.x_test, data.y_test), _sorted_rows(*batches["test_batch.bin"]))
    assert data.x_train.shape == (10, 32, 32, 3) and data.x_test.shape == (2, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.num_classes == 10
    names = tfds.builder("cifar10_np", data_dir=str(tmp_path)).info.features["label"].names
    assert names == _CIFAR10_META.decode().split()


def test_a_download_unlike_the_checksum_tfds_registers_is_refused_and_leaves_nothing(tmp_path, serve):
    files, _ = _mnist_files(mnist.MNIST.URL)
    serve(files, register=False)
    with pytest.raises(download_manager.NonMatchingChecksumError, match=r"has wrong checksum"):
        load_tfds("mnist_np", str(tmp_path))
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith("incomplete.") or ".tmp." in p.name]
    assert leftovers == []
    assert not (tmp_path / "mnist_np" / "1.0.0").exists()
