"""IDX files: read as tfds reads MNIST's, every malformed file a UserError naming it; the book's split and scaling.

The files are written here byte by byte, as MNIST's page defines them: two zero bytes, the type code (0x08:
unsigned byte), the number of axes, each axis' size as a big-endian 32-bit integer, then the values.
"""

import contextlib
import gzip
import hashlib
import os
import struct
import subprocess
import sys
import types
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.image_classification import mnist

from runner.data import catalogue, check_dataset, load_splits
from runner.data.catalogue import load_idx_or_tfds, load_tfds, tfds_order
from runner.data.idx import FILES, read_idx, read_idx_set, validate_idx_set
from runner.data.splits import TrainTest, split_and_scale
from runner.errors import UserError

# The real Fashion-MNIST: FASHION_MNIST_DIR, else where Debian's dataset-fashion-mnist installs it.
REAL_FASHION_MNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
needs_real_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(REAL_FASHION_MNIST),
    reason=f"no Fashion-MNIST in {REAL_FASHION_MNIST}: get-fashion-mnist DIR, then FASHION_MNIST_DIR=DIR")


def _idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file's bytes: the magic number (0, 0, type code, axes), big-endian uint32 sizes, the values."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, type_code, array.ndim, *array.shape) + array.tobytes()


def _arrays(num_train: int = 12, num_test: int = 5, shape: tuple[int, int] = (28, 28)) -> dict[str, np.ndarray]:
    """Random uint8 images and labels 0..9 (every class in train), by role."""
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (num_train, *shape), dtype=np.uint8),
        "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (num_test, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, num_test, dtype=np.uint8),
    }


def _write_set(directory: Path, arrays: dict[str, np.ndarray] | None = None, gz: bool = True,
               **files: bytes) -> Path:
    """The four files of an IDX set in `directory` (gzipped, named .gz, if `gz`); `files` replaces roles' bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _arrays() if arrays is None else arrays
    for role, name in FILES.items():
        data = files.get(role, _idx(arrays[role]))
        (directory / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return directory


def test_an_idx_file_reads_back_the_array_it_holds(tmp_path):
    images, labels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), np.array([7, 1, 255], np.uint8)
    (tmp_path / "images").write_bytes(_idx(images))
    (tmp_path / "labels").write_bytes(_idx(labels))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "images"), 3), images)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "labels"), 1), labels)
    assert read_idx(str(tmp_path / "images"), 3).dtype == np.uint8


def test_gzipped_and_raw_files_read_the_same_whatever_their_names_say(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    (tmp_path / "raw").write_bytes(_idx(images))
    (tmp_path / "gzipped_without_suffix").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "raw_named.gz").write_bytes(_idx(images))
    for name in ("raw", "gzipped_without_suffix", "raw_named.gz"):
        np.testing.assert_array_equal(read_idx(str(tmp_path / name), 3), images)


_IMAGES = np.zeros((2, 3, 4), np.uint8)
MALFORMED = {
    "empty": (b"", "is empty"),
    "truncated_magic": (b"\0\0\x08", "ends after 3 bytes, inside the 4-byte magic number"),
    "truncated_header": (_idx(_IMAGES)[:10], "ends inside its header, after 10 of 16 bytes"),
    "truncated_body": (_idx(_IMAGES)[:-1], r"is truncated: its header declares shape \(2, 3, 4\) \(24 values\) but "
                                            "it holds 23"),
    "trailing_bytes": (_idx(_IMAGES) + b"\0", r"has bytes after the 24 values of shape \(2, 3, 4\)"),
    "labels_for_images": (_idx(np.zeros(4, np.uint8)), "has magic number 0x00000801: 1 axis"),
    "not_idx": (b"PK\x03\x04" + bytes(40), "has magic number 0x504b0304, which is not an IDX file's"),
    "float32_type": (_idx(np.zeros((2, 3, 4), ">f4"), 0x0D), "has magic number 0x00000d03: type code 0x0d, float32"),
    "unknown_type": (_idx(_IMAGES, 0x07), "type code 0x07, values of no IDX type"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_file_is_a_user_error_naming_the_file_the_problem_and_what_is_valid(tmp_path, case, gz):
    data, problem = MALFORMED[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(UserError, match=problem) as raised:
        read_idx(str(path), 3)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert message.endswith("valid: IDX images, magic number 0x00000803 (3-axis unsigned bytes), gzipped or raw")


def test_a_damaged_gzip_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(100, np.uint8)))[:-12])  # cut inside the stream
    with pytest.raises(UserError, match=rf"^{path}: is a damaged gzip file \(.*\); valid: IDX labels, magic number "
                                        r"0x00000801"):
        read_idx(str(path), 1)


def test_a_set_reads_as_tfds_gives_mnist_images_with_a_channel_axis_and_int64_labels(tmp_path):
    arrays = _arrays(shape=(5, 7))
    data = read_idx_set(str(_write_set(tmp_path, arrays)))
    assert data.x_train.shape == (12, 5, 7, 1) and data.x_test.shape == (5, 5, 7, 1)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64 and data.num_classes == 10
    np.testing.assert_array_equal(data.x_train[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])


def test_a_raw_file_is_read_before_its_gzipped_copy(tmp_path):
    _write_set(tmp_path, gz=True)
    arrays = _arrays()
    arrays["test_labels"] = np.zeros(5, np.uint8)
    (tmp_path / FILES["test_labels"]).write_bytes(_idx(arrays["test_labels"]))
    np.testing.assert_array_equal(read_idx_set(str(tmp_path)).y_test, np.zeros(5))


@pytest.mark.parametrize(
    ("files", "file", "problem"),
    [
        ({"train_labels": _idx(np.zeros(11, np.uint8))}, "train-labels-idx1-ubyte.gz",
         "holds 11 labels for the 12 images of .*train-images-idx3-ubyte.gz; valid: one label per image"),
        ({"test_images": _idx(np.zeros((0, 28, 28), np.uint8)), "test_labels": _idx(np.zeros(0, np.uint8))},
         "t10k-images-idx3-ubyte.gz", "holds no images; valid: at least one"),
        ({"test_images": _idx(np.zeros((5, 14, 14), np.uint8))}, "t10k-images-idx3-ubyte.gz",
         r"images are \(14, 14\) but the training images \(28, 28\); valid: one image size"),
        ({"train_labels": _idx(np.full(12, 3, np.uint8))}, "train-labels-idx1-ubyte.gz",
         "holds a single class \\(3\\); valid: a classifier needs at least two"),
        ({"test_labels": _idx(np.full(5, 10, np.uint8))}, "t10k-labels-idx1-ubyte.gz",
         r"has label 10, but the classes are 0..9; valid: labels of the training classes"),
        ({"train_images": b""}, "train-images-idx3-ubyte.gz", "is empty once decompressed"),
    ],
    ids=["count_mismatch", "no_test_images", "image_sizes_differ", "single_class", "test_label_unseen", "empty"],
)
def test_a_malformed_set_is_a_user_error_naming_the_file_from_the_check_and_the_source(dataset, tmp_path, files,
                                                                                        file, problem):
    _write_set(tmp_path, **files)
    node = dataset("dataset=idx", f"dataset.path={tmp_path}")
    for run in (check_dataset, lambda node: load_splits(node, seed=0)):
        with pytest.raises(UserError, match=f"^{tmp_path / file}: {problem}"):
            run(node)


def test_a_missing_dir_file_or_path_is_a_user_error_saying_what_the_dir_must_hold(dataset, tmp_path):
    valid = ("valid: a dir with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
             "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (IDX files, gzipped or raw)")
    with pytest.raises(UserError) as raised:
        check_dataset(dataset("dataset=idx"))
    assert str(raised.value) == f"dataset.path: needs a value, e.g. dataset.path=fashion-mnist; {valid}"
    with pytest.raises(UserError) as raised:
        validate_idx_set(str(tmp_path / "absent"))
    assert str(raised.value) == f"dataset.path={tmp_path / 'absent'}: no such dir; {valid}"
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError) as raised:
        validate_idx_set(str(tmp_path))
    assert str(raised.value) == f"dataset.path={tmp_path}: lacks t10k-labels-idx1-ubyte[.gz]; {valid}"


def test_the_check_reads_a_changed_file_again(tmp_path):
    _write_set(tmp_path)
    validate_idx_set(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(3, np.uint8))))
    with pytest.raises(UserError, match="holds 3 labels for the 12 images"):
        validate_idx_set(str(tmp_path))


def test_dataset_idx_loads_the_files_in_their_order(dataset, tmp_path):
    arrays = _arrays(num_train=40)
    node = dataset("dataset=idx", f"dataset.path={_write_set(tmp_path, arrays)}", "dataset.validation=tail",
                   "dataset.val_size=10", "dataset.scaling=unit")
    splits = load_splits(node, seed=0)
    np.testing.assert_array_equal(splits.x_val[..., 0], arrays["train_images"][30:] / np.float32(255))
    np.testing.assert_array_equal(splits.y_train, arrays["train_labels"][:30])
    np.testing.assert_array_equal(splits.y_test, arrays["test_labels"])
    assert splits.name == "idx" and splits.num_classes == 10


# The book's split and scaling (Geron, Hands-On ML, ch. 10), and the default they leave as it was.

def _indexed(num_train: int = 50) -> TrainTest:
    """uint8 images whose train labels are their index, so a split's labels say which examples it holds."""
    rng = np.random.default_rng(3)
    x_train = rng.integers(0, 256, (num_train, 4, 4, 2), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 4, 4, 2), dtype=np.uint8)
    return TrainTest(x_train, np.arange(num_train), x_test, np.zeros(7, np.int64), num_train)


def test_tail_validation_is_the_last_val_size_examples_and_train_the_rest_in_order():
    splits = split_and_scale(_indexed(), name="t", val_fraction=0.1, seed=0, validation="tail", val_size=8)
    np.testing.assert_array_equal(splits.y_val, np.arange(42, 50))
    np.testing.assert_array_equal(splits.y_train, np.arange(42))
    none = split_and_scale(_indexed(), name="t", val_fraction=0.1, seed=0, validation="tail", val_size=0)
    assert none.y_val.size == 0 and none.y_train.size == 50


def test_tail_validation_does_not_depend_on_the_seed():
    first, second = (split_and_scale(_indexed(), name="t", val_fraction=0.1, seed=seed, validation="tail",
                                     val_size=8) for seed in (0, 1))
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.x_val, second.x_val)


@pytest.mark.parametrize("val_size", [50, 51])
def test_a_tail_that_leaves_no_training_example_is_a_user_error(val_size):
    with pytest.raises(UserError, match=rf"^dataset.val_size={val_size} is out of range; valid: 0..49 with "
                                        r"dataset.validation=tail \(the t train examples are 50\)"):
        split_and_scale(_indexed(), name="t", val_fraction=0.1, seed=0, validation="tail", val_size=val_size)


def test_the_tail_defaults_to_the_books_5000_examples(dataset):
    node = dataset("dataset=idx", "dataset.validation=tail")
    assert node.val_size == 5000 and node.validation == "tail" and node.scaling == "standardize"


def test_unit_scaling_divides_every_split_by_255():
    data = _indexed()
    splits = split_and_scale(data, name="t", val_fraction=0.2, seed=4, input_scaling="unit")
    np.testing.assert_array_equal(splits.x_train, data.x_train[splits.y_train].astype(np.float32) / 255)
    np.testing.assert_array_equal(splits.x_val, data.x_train[splits.y_val].astype(np.float32) / 255)
    np.testing.assert_array_equal(splits.x_test, data.x_test.astype(np.float32) / 255)
    assert splits.scaling.to_json() == {"mean": [0.0, 0.0], "std": [255.0, 255.0]}


def test_the_default_split_and_scaling_are_the_seeded_permutation_and_training_statistics_bit_for_bit():
    data = _indexed()
    splits = split_and_scale(data, name="t", val_fraction=0.2, seed=4)
    order = np.random.default_rng(4).permutation(50)
    val, train = order[:10], order[10:]
    x_train = data.x_train[train].astype(np.float32)
    mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = x_train.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(splits.y_val, val)
    np.testing.assert_array_equal(splits.x_train, (x_train - mean) / std)
    np.testing.assert_array_equal(splits.x_val, (data.x_train[val].astype(np.float32) - mean) / std)


# dataset=mnist and fashion_mnist: local files or tfds' download, the same arrays in the same order.

@pytest.fixture
def serve(monkeypatch):
    """`serve(files)`: tfds' downloader gets these bytes for these URLs in place of HTTP, checksums registered."""

    def start(files: dict[str, bytes]) -> None:
        @contextlib.contextmanager
        def open_url(url, **kwargs):
            yield types.SimpleNamespace(url=url, headers={}), [files[url]]

        monkeypatch.setattr("tensorflow_datasets.core.download.downloader._open_url", open_url)
        monkeypatch.setattr(catalogue.requests, "head", lambda url, **kwargs: None)  # the offline probe
        url_infos = {url: checksums.UrlInfo(size=len(data), checksum=hashlib.sha256(data).hexdigest(), filename=None)
                     for url, data in files.items()}
        monkeypatch.setattr(checksums, "get_all_url_infos", lambda: url_infos)

    return start


def _serve_dir(serve, directory: Path, url: str) -> None:
    """The gzipped files of an IDX set in `directory`, served at the URLs tfds downloads them from."""
    serve({urllib.parse.urljoin(url, f"{name}.gz"): (directory / f"{name}.gz").read_bytes() for name in FILES.values()})


@pytest.mark.parametrize(("name", "url"), [("fashion_mnist", mnist.FashionMNIST.URL), ("mnist", mnist.MNIST.URL)],
                         ids=["fashion_mnist", "mnist"])
def test_local_files_give_the_arrays_of_tfds_copy_of_the_same_files_in_its_order(tmp_path, serve, name, url):
    files = _write_set(tmp_path / "idx", _arrays(num_train=30, num_test=9))
    _serve_dir(serve, files, url)
    downloaded = load_tfds(f"{name}_np", str(tmp_path / "tfds"))
    local = load_idx_or_tfds(f"{name}_np", path=str(files), data_dir=str(tmp_path / "tfds"))
    for field in TrainTest._fields:
        np.testing.assert_array_equal(getattr(local, field), getattr(downloaded, field), err_msg=field)
        assert np.asarray(getattr(local, field)).dtype == np.asarray(getattr(downloaded, field)).dtype, field
    # tfds' copy is not in the files' order: it is theirs permuted by tfds' hash of each example's index.
    in_files = read_idx_set(str(files))
    assert not np.array_equal(downloaded.y_train, in_files.y_train)
    np.testing.assert_array_equal(downloaded.x_train, in_files.x_train[tfds_order(30, "train")])
    np.testing.assert_array_equal(downloaded.x_test, in_files.x_test[tfds_order(9, "test")])


def test_dataset_fashion_mnist_reads_dataset_path_else_the_installed_files_else_tfds(dataset, tmp_path, serve,
                                                                                     monkeypatch):
    given, installed = _write_set(tmp_path / "given", _arrays(num_train=20)), _write_set(tmp_path / "installed")
    tfds_dir = str(tmp_path / "tfds")
    on = ("dataset=fashion_mnist", "dataset.val_fraction=0", f"dataset.data_dir={tfds_dir}",
          f"dataset.source.installed={installed}")
    assert len(load_splits(dataset(*on, f"dataset.path={given}"), seed=0).y_train) == 20
    assert len(load_splits(dataset(*on), seed=0).y_train) == 12
    # Without local files, tfds' copy, as before: its builder downloads the files.
    _serve_dir(serve, _write_set(tmp_path / "served", _arrays(num_train=7)), mnist.FashionMNIST.URL)
    node = dataset(*on[:3], f"dataset.source.installed={tmp_path / 'not_installed'}")
    check_dataset(node)  # nothing local to check
    assert len(load_splits(node, seed=0).y_train) == 7
    assert (tmp_path / "tfds" / "fashion_mnist_np").is_dir()


def test_checking_local_files_imports_no_tensorflow_datasets(tmp_path):
    # Preflight runs the check of every job before anything runs; tfds takes seconds to import.
    code = (
        "import sys; from runner.config.compose import compose_config; from runner.data import check_dataset; "
        f"check_dataset(compose_config('dataset=fashion_mnist', 'dataset.path={_write_set(tmp_path)}').dataset); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'jax')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_bad_local_files_of_dataset_mnist_are_refused_by_the_check(dataset, tmp_path):
    _write_set(tmp_path, train_images=_idx(np.zeros((12, 28, 28), np.uint8))[:-5])
    with pytest.raises(UserError, match=rf"^{tmp_path / 'train-images-idx3-ubyte.gz'}: is truncated"):
        check_dataset(dataset("dataset=mnist", f"dataset.path={tmp_path}"))


@needs_real_fashion_mnist  # reads 30 MB; the synthetic sets above make the same claims
def test_the_real_fashion_mnist_has_its_published_counts_shapes_and_first_labels():
    data = read_idx_set(REAL_FASHION_MNIST)
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.num_classes == 10 and np.bincount(data.y_train).tolist() == [6000] * 10
    # The first examples of the files (an ankle boot, then two T-shirts; the test set opens with an ankle boot).
    assert data.y_train[:3].tolist() == [9, 0, 0] and data.y_test[:3].tolist() == [9, 2, 1]


@needs_real_fashion_mnist  # about 10 s: tfds prepares all 70,000 examples; the synthetic sets make the same claim
def test_the_real_fashion_mnist_read_locally_is_tfds_copy_of_it(tmp_path, serve):
    # Debian's .gz files hold the published bytes (get-fashion-mnist checks their MD5s), but are not the .gz files
    # whose checksums tfds registers: served here with their own, as test_local_files_give_... serves its sets.
    _serve_dir(serve, Path(REAL_FASHION_MNIST), mnist.FashionMNIST.URL)
    downloaded = load_tfds("fashion_mnist_np", str(tmp_path))
    local = load_idx_or_tfds("fashion_mnist_np", path=REAL_FASHION_MNIST, data_dir=str(tmp_path))
    for field in TrainTest._fields:
        np.testing.assert_array_equal(getattr(local, field), getattr(downloaded, field), err_msg=field)
