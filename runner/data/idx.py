"""IDX files, the format of MNIST and Fashion-MNIST, read with NumPy, gzipped or raw.

An IDX file (http://yann.lecun.com/exdb/mnist/) is a magic number -- two zero bytes, a type code (0x08: unsigned
byte) and the number of axes -- then each axis' size as a big-endian 32-bit integer, then the values, row-major.
A dataset is four such files in one dir, under the names MNIST's and Fashion-MNIST's files have:

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

each raw or gzipped (told by gzip's magic bytes, not the name; `.gz` may end it). Images arrive as uint8
(N, H, W, 1) and labels as int64, as tfds' copies of mnist and fashion_mnist give them (runner/data/catalogue.py).

conf/dataset/idx.yaml names `read_idx_set` as its source (the files' order) and `validate_idx_set` as its check,
which preflight runs before anything is written. conf/dataset/mnist.yaml and fashion_mnist.yaml name
`load_idx_or_tfds`, which reads local files in tfds' order (`tfds_order`) and otherwise tfds' download, so a run
is the same whichever copy it reads. Nothing here imports tensorflow_datasets until it reads tfds' copy or order.
"""

import contextlib
import functools
import gzip
import math
import os
import struct
import zlib

import numpy as np

from runner.data.splits import TrainTest
from runner.errors import UserError

# The four files by role, as MNIST's page names them; tfds' mnist builders download the same names gzipped.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_VALID_DIR = f"a dir with {', '.join(f'{name}[.gz]' for name in FILES.values())} (IDX files, gzipped or raw)"

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
# The IDX type codes; only unsigned bytes are read (images and labels of every MNIST-format dataset).
_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
          0x0E: "float64"}
_WHAT = {1: "labels", 3: "images"}
_CHUNK = 1 << 24  # bytes read at a time: a header's claimed size is never allocated before the bytes exist


def read_idx(path: str, ndim: int) -> np.ndarray:
    """The `ndim`-axis uint8 array of an IDX file; UserError naming the file and what is wrong with it."""
    magic = _UBYTE << 8 | ndim
    valid = f"valid: IDX {_WHAT.get(ndim, f'{ndim}-axis values')}, magic number {magic:#010x} ({ndim}-axis " \
            "unsigned bytes), gzipped or raw"

    def malformed(problem: str) -> UserError:
        return UserError(f"{path}: {problem}; {valid}")

    gzipped = False
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            with (gzip.GzipFile(fileobj=raw) if gzipped else contextlib.nullcontext(raw)) as file:
                header = _read_at_most(file, 4)
                if not header:
                    raise malformed("is empty" + (" once decompressed" if gzipped else ""))
                if len(header) < 4:
                    raise malformed(f"ends after {len(header)} bytes, inside the 4-byte magic number")
                found = int.from_bytes(header, "big")
                if header[:2] != b"\0\0":
                    raise malformed(f"has magic number {found:#010x}, which is not an IDX file's (two zero bytes, "
                                    "a type code, the number of axes)")
                if header[2] != _UBYTE:
                    kind = _TYPES.get(header[2], "values of no IDX type")
                    raise malformed(f"has magic number {found:#010x}: type code {header[2]:#04x}, {kind}")
                if header[3] != ndim:
                    raise malformed(f"has magic number {found:#010x}: {header[3]} ax{'is' if header[3] == 1 else 'es'}")
                sizes = _read_at_most(file, 4 * ndim)
                if len(sizes) < 4 * ndim:
                    raise malformed(f"ends inside its header, after {4 + len(sizes)} of {4 + 4 * ndim} bytes")
                shape = struct.unpack(f">{ndim}I", sizes)
                size = math.prod(shape)
                values = _read_at_most(file, size + 1)  # one more than declared tells trailing bytes
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        problem = "is a damaged gzip file" if gzipped else "cannot be read"
        raise malformed(f"{problem} ({error})") from None
    if len(values) < size:
        raise malformed(f"is truncated: its header declares shape {shape} ({size:,} values) but it holds "
                        f"{len(values):,}")
    if len(values) > size:
        raise malformed(f"has bytes after the {size:,} values of shape {shape} that its header declares")
    return np.frombuffer(values, np.uint8).reshape(shape)


def _read_at_most(file, size: int) -> bytearray:
    """Up to `size` bytes, fewer where the file ends first; read in chunks, so memory follows the bytes there are."""
    data = bytearray()
    while len(data) < size and (chunk := file.read(min(_CHUNK, size - len(data)))):
        data += chunk
    return data


def find_idx_set(path: str | None) -> dict[str, str]:
    """The four files of the IDX set in dir `path`, by role; a raw file is taken before its .gz."""
    if path is None:
        raise UserError(f"dataset.path: needs a value, e.g. dataset.path=fashion-mnist; valid: {_VALID_DIR}")
    if not os.path.isdir(path):
        raise UserError(f"dataset.path={path}: no such dir; valid: {_VALID_DIR}")
    files, missing = {}, []
    for role, name in FILES.items():
        found = [os.path.join(path, n) for n in (name, f"{name}.gz") if os.path.isfile(os.path.join(path, n))]
        if found:
            files[role] = found[0]
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        raise UserError(f"dataset.path={path}: lacks {', '.join(missing)}; valid: {_VALID_DIR}")
    return files


def read_idx_set(path: str | None, data_dir: str | None = None, num_classes: int | None = None) -> TrainTest:
    """The train and test images (N, H, W, 1) uint8 and labels int64 of the IDX set in dir `path`, in file order.

    Args:
      path: the dir holding the four files (`FILES`, each raw or gzipped).
      data_dir: the tfds data dir every source is given; unused, the files are read where they are.
      num_classes: the dataset's class count (tfds' for mnist and fashion_mnist); None: the largest training
        label + 1.

    Returns:
      The arrays as tfds' mnist builders yield them, with the number of classes.
    """
    del data_dir  # every source is given the tfds data dir; local files are read where they are
    files = find_idx_set(path)
    arrays = {role: read_idx(file, 3 if role.endswith("images") else 1) for role, file in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise UserError(f"{files[f'{split}_labels']}: holds {len(labels):,} labels for the {len(images):,} "
                            f"images of {files[f'{split}_images']}; valid: one label per image")
        if not len(images):
            raise UserError(f"{files[f'{split}_images']}: holds no images; valid: at least one")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise UserError(f"{files['test_images']}: images are {arrays['test_images'].shape[1:]} but the training "
                        f"images {arrays['train_images'].shape[1:]}; valid: one image size")
    y_train, y_test = arrays["train_labels"].astype(np.int64), arrays["test_labels"].astype(np.int64)
    if num_classes is None:
        num_classes = int(y_train.max()) + 1
        if len(np.unique(y_train)) < 2:
            raise UserError(f"{files['train_labels']}: holds a single class ({y_train[0]}); valid: a classifier "
                            "needs at least two")
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.max() >= num_classes:
            raise UserError(f"{files[f'{split}_labels']}: has label {labels.max()}, but the classes are "
                            f"0..{num_classes - 1}; valid: labels of the training classes")
    # tfds' images keep a channel axis: (H, W, 1).
    return TrainTest(arrays["train_images"][..., None], y_train, arrays["test_images"][..., None], y_test, num_classes)


def validate_idx_set(path: str | None) -> None:
    """Raises UserError, naming the file and the problem, unless dir `path` holds an IDX set `read_idx_set` reads."""
    files = find_idx_set(path)
    _validate(tuple((file, *_stamp(file)) for file in files.values()), path)


def _stamp(file: str) -> tuple[int, int]:
    stat = os.stat(file)
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _validate(stamped_files: tuple, path: str) -> None:
    """Reads the set once per process while its files are unchanged: preflight checks every job of a sweep."""
    del stamped_files  # the cache key: the files with their size and modification time
    read_idx_set(path)


def check_idx_or_tfds(path: str | None, installed: str | None = None) -> None:
    """Raises UserError where `catalogue.load_idx_or_tfds` would on local files; tfds' download is checked when it runs."""
    local = local_dir(path, installed)
    if local is not None:
        validate_idx_set(local)


def local_dir(path: str | None, installed: str | None) -> str | None:
    """The dir to read: the user's, else the system package's when it holds the whole set, else None (tfds)."""
    if path is not None or installed is None:
        return path
    has_set = all(any(os.path.isfile(os.path.join(installed, n)) for n in (name, f"{name}.gz"))
                  for name in FILES.values())
    return installed if has_set else None
