"""tfds datasets by builder name, the embedded ones and the catalogue's (mnist, cifar10, ...), read into NumPy arrays.

`load_tfds` is the source the tfds-backed conf/dataset files name. tfds reads without TensorFlow only from
array_record files, through `as_data_source`, so every dataset is prepared in that format. Preparing a catalogue
dataset downloads it and, in tfds 4.9, also needs TensorFlow (its builders read the downloads with tf.io.gfile and
encode images with tf.image); reading a prepared copy does not. conf/dataset/mnist.yaml, fashion_mnist.yaml and
cifar10.yaml therefore name our own builders (`mnist_np`, ... in catalogue_builders.py), which prepare the same
downloads, checked against the same checksums.
"""

import contextlib
import logging
import socket
import urllib.error
from collections.abc import Iterator, Sequence

import numpy as np
import requests
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing
from etils import epath

from runner.data import catalogue_builders, embedded  # noqa: F401  (defining builders registers them with tfds)
from runner.data import idx
from runner.data.splits import TrainTest
from runner.errors import UserError

# What to choose instead: the conf/dataset files are the list of choices, and `--help` prints it.
_VALID = "a tfds catalogue name, or one of the dataset= choices (python -m runner --help), e.g. dataset=digits"
_OFFLINE = "or use a dataset that needs no network, e.g. dataset=digits (python -m runner --help lists them)"

# The dataset= choice that prepares each of our builders (for the offline message's how-to).
_CHOICE = {"mnist_np": "dataset=mnist", "fashion_mnist_np": "dataset=fashion_mnist", "cifar10_np": "dataset=cifar10"}
_PROBE_TIMEOUT_S = 5  # seconds the reachability check waits for the dataset's host

# Examples decoded per __getitems__ call: one call per example is slow, one call for all holds every decoded dict.
_READ_CHUNK = 4096

# What a failed download raises, at the top of its exception chain or below it.
_NETWORK_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    urllib.error.URLError,
)

tfds.disable_progress_bar()  # tfds' tqdm bars would interleave with the runner's own console output


def load_tfds(name: str, data_dir: str | None) -> TrainTest:
    """Reads the train and test splits of tfds dataset `name`, preparing it in `data_dir` first if needed.

    Args:
      name: a tfds builder name: a catalogue dataset (`kmnist`), an embedded one (`digits`), or one of ours that
        prepares a catalogue dataset without TensorFlow (`mnist_np`).
      data_dir: the tfds data dir; None means tfds' default ($TFDS_DATA_DIR, else ~/tensorflow_datasets).

    Returns:
      The unscaled train and test arrays, images (N, H, W, C) and signals (N, L, 1), with the number of classes.
    """
    with _quiet_logs():
        builder = _make_builder(name, data_dir)
        input_key, label_key = _supervised_keys(name, builder)
        builder = _prepare(name, data_dir, builder)
        available = set(builder.info.splits)
        # Splits are unknown only where tfds.testing.mock_data stands in for the data; it serves any split then.
        if available and not {"train", "test"} <= available:
            raise UserError(
                f"tfds dataset {name} has splits {sorted(available)}; valid: a dataset with train and test splits"
            )
        try:
            sources = builder.as_data_source(split={"train": "train", "test": "test"})
        except NotImplementedError as error:  # a copy prepared in another format, e.g. TensorFlow's tfrecord
            raise UserError(
                f"tfds dataset {name} in {builder.data_dir_root} was prepared as {builder.info.file_format.value}, "
                "which needs TensorFlow to read; valid: a copy prepared with --file_format=array_record, "
                "or another data_dir"
            ) from error
        x_train, y_train = _read_split(sources["train"], builder.info.features, input_key, label_key)
        x_test, y_test = _read_split(sources["test"], builder.info.features, input_key, label_key)
    return TrainTest(x_train, y_train, x_test, y_test, builder.info.features[label_key].num_classes)


def _make_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """tfds' builder for `name` in `data_dir` (None: tfds' default, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.DatasetNotFoundError:
        raise UserError(f"tfds dataset {name} is not a known dataset; valid: {_VALID}") from None


def _supervised_keys(name: str, builder: tfds.core.DatasetBuilder) -> tuple[str, str]:
    """The input and label feature names, checked to be fixed-shape numeric inputs and class labels."""
    keys = builder.info.supervised_keys
    not_classification = f"tfds dataset {name} is not a classification dataset this runner can train on"
    if not keys or not all(isinstance(key, str) for key in keys[:2]):
        raise UserError(f"{not_classification} (no single input and label); valid: {_VALID}")
    input_key, label_key = keys[:2]
    features = builder.info.features
    if not isinstance(features[label_key], tfds.features.ClassLabel):
        raise UserError(f"{not_classification} ({label_key!r} is not a class label); valid: {_VALID}")
    shape, dtype = getattr(features[input_key], "shape", None), getattr(features[input_key], "np_dtype", None)
    if (
        not isinstance(shape, tuple)
        or None in shape
        or not 1 <= len(shape) <= 3
        or dtype is None
        or not np.issubdtype(dtype, np.number)
    ):
        raise UserError(
            f"{not_classification} ({input_key!r} is {dtype} of shape {shape}); "
            f"valid: a dataset of fixed-shape numeric signals or images: {_VALID}"
        )
    return input_key, label_key


def _prepare(name: str, data_dir: str | None, builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """Builds or downloads the dataset unless a complete copy exists, and returns a builder reading that copy.

    tfds writes into an `incomplete.*` dir and renames it into place when done, so a build cut short is never
    taken for a complete copy; whatever partial output this build leaves on failure is removed here.
    """
    if not builder.is_prepared():
        _check_reachable(name, builder)
    partial_before = _partial_outputs(builder)
    try:
        builder.download_and_prepare()
    except BaseException as error:
        # tfds removes its own incomplete.* dir on failure, but not the .tmp.* dirs of unfinished downloads.
        for path in _partial_outputs(builder) - partial_before:
            if path.is_dir():
                path.rmtree(missing_ok=True)
            else:
                path.unlink(missing_ok=True)
        if not isinstance(error, Exception):  # KeyboardInterrupt and the like: stop as asked
            raise
        # A parallel job (another run of a sweep) may have finished the same build first, so tfds could not rename
        # this build into place: the other copy is complete.
        if builder.is_prepared():
            return _make_builder(name, data_dir)
        if any(isinstance(cause, _NETWORK_ERRORS) for cause in _chain(error)):
            raise _offline(name, builder) from error
        if any(isinstance(cause, ModuleNotFoundError) and cause.name == "tensorflow" for cause in _chain(error)):
            raise UserError(
                f"tfds dataset {name} is not prepared in {builder.data_dir_root}, and tfds needs TensorFlow (not "
                f"installed) to prepare it: run once where it is, `tfds build {name} --file_format=array_record "
                f"--data_dir={builder.data_dir_root}`, {_OFFLINE}"
            ) from error
        raise
    return builder


def _check_reachable(name: str, builder: tfds.core.DatasetBuilder) -> None:
    """Fails at once, as an offline download would, when the dataset's first download URL cannot be reached.

    tfds retries a failed download 10 times with exponential backoff: offline, that is minutes of silence before
    the same error. One request with a short timeout answers first; any HTTP answer counts as reachable.
    """
    ours = getattr(builder, "download_urls", None)  # catalogue_builders.py's builders say what they download
    urls = list(ours.values()) if ours else list(builder.url_infos or {})  # tfds' own register their URLs
    if not urls:  # a builder that does not say what it downloads: tfds' own attempt will tell
        return
    try:
        requests.head(urls[0], timeout=_PROBE_TIMEOUT_S, allow_redirects=False)
    except _NETWORK_ERRORS as error:
        raise _offline(name, builder) from error


def _offline(name: str, builder: tfds.core.DatasetBuilder) -> UserError:
    choice = _CHOICE.get(name, f"dataset=tfds dataset.name={name}")
    how = f"python -m runner {choice} dataset.data_dir=DIR"
    shown = choice.split("=", 1)[1] if name in _CHOICE else name  # what the user typed, not our builder's name
    return UserError(
        f"{choice}: {shown} is not prepared in {builder.data_dir_root} and could not be downloaded: it needs network "
        f"once to download (or prepare it where there is network with `{how} trainer.epochs=1`, copy DIR here and "
        f"set dataset.data_dir to the copy), {_OFFLINE}"
    )


def _partial_outputs(builder: tfds.core.DatasetBuilder) -> set[epath.Path]:
    """What unfinished tfds builds leave: `incomplete.*` dataset and extraction dirs, `*.tmp.*` download dirs."""
    downloads = epath.Path(builder.data_dir_root) / "downloads"
    # The paths tfds uses: <data_dir>/<name>[/<config>]/incomplete.*, downloads/[<name>/]*.tmp.*,
    # downloads/extracted/incomplete.*.
    candidates = [*epath.Path(builder.data_dir).parent.glob("*"), *downloads.glob("*"), *downloads.glob("*/*")]
    return {path for path in candidates if path.name.startswith("incomplete.") or ".tmp." in path.name}


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then the exceptions it was raised from: tfds re-raises what its download threads and imports raise."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _read_split(
    source: Sequence[dict], features: tfds.features.FeaturesDict, input_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """All inputs and labels of one split, decoded a chunk at a time; (L,) signals get a trailing channel axis.

    Inputs of two or more axes are kept as stored: tfds images are (H, W, C), mnist1d's signals (L, 1).
    """
    inputs = np.empty((len(source), *features[input_key].shape), features[input_key].np_dtype)
    labels = np.empty(len(source), np.int64)
    for start in range(0, len(source), _READ_CHUNK):
        stop = min(start + _READ_CHUNK, len(source))
        examples = source.__getitems__(list(range(start, stop)))
        inputs[start:stop] = np.stack([example[input_key] for example in examples])
        labels[start:stop] = [example[label_key] for example in examples]
    return (inputs[..., None] if inputs.ndim == 2 else inputs), labels


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Hides the INFO and WARNING logs of tfds (absl) and of its downloads' retries (urllib3).

    They advise tfds' own developers (install OpenCV, a variant folder lacks its json) or repeat each retry of a
    download; what a runner user must know arrives as an exception.
    """
    loggers = [logging.getLogger("absl"), logging.getLogger("urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_idx_or_tfds(name: str, path: str | None, data_dir: str | None, installed: str | None = None) -> TrainTest:
    """An mnist-format tfds dataset from local IDX files if there are any, else from tfds' download.

    Args:
      name: the tfds builder that downloads and prepares the dataset (`fashion_mnist_np`, catalogue_builders.py).
      path: the user's dir of IDX files (`dataset.path`); read if given.
      data_dir: the tfds data dir, for tfds' copy.
      installed: where a system package puts the files (Debian's dataset-fashion-mnist: /usr/share/datasets/
        fashion-mnist); read if `path` is None and it holds all four.

    Returns:
      The arrays of tfds' copy, in tfds' order, with tfds' number of classes, from whichever copy is there.
    """
    local = idx.local_dir(path, installed)
    if local is None:
        return load_tfds(name, data_dir)
    num_classes = tfds.builder(name, data_dir=data_dir).info.features["label"].num_classes
    data = idx.read_idx_set(local, num_classes=num_classes)
    train, test = tfds_order(len(data.y_train), "train"), tfds_order(len(data.y_test), "test")
    return TrainTest(data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test], num_classes)


def tfds_order(count: int, split: str) -> np.ndarray:
    """The file index of each example of a split, in the order tfds' copy of an mnist-format dataset holds them.

    tfds' mnist builders (tensorflow_datasets/image_classification/mnist.py, and ours in catalogue_builders.py)
    yield the files' examples keyed by their index; tfds' writer stores a split sorted by the md5 hash of its key
    salted with the split's name (tensorflow_datasets/core/writer.py, hashing.py), and shards keep that order.
    """
    hasher = hashing.Hasher(split)
    return np.array(sorted(range(count), key=hasher.hash_key), dtype=np.int64)
