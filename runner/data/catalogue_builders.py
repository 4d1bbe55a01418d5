"""mnist, fashion_mnist and cifar10 as tfds builders that prepare without TensorFlow.

tfds' own builders for these read their downloads with tf.io.gfile and encode images with tf.image. These download
the same files from the same URLs (taken from tfds' modules), so tfds' download manager checks them against the
checksums tfds registers for those URLs (tensorflow_datasets/url_checksums/), and parse them with NumPy into uint8
Tensor features. Files are fetched with `dl_manager.download`, not `download_and_extract`: tfds' extractor needs
TensorFlow too, so gzip and tarfile read the archives. Examples keep tfds' keys (the index in file order).
"""

import tarfile
import urllib.parse

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.image_classification import cifar, mnist

from runner.data.idx import read_idx  # the one reader of IDX files, local or downloaded

# tfds' cifar10 builds its source description (url, archive prefix, batch file names) in a property that reads only
# `name`; called on the class, it gives cifar10's.
_CIFAR10 = cifar.Cifar10._cifar_info.fget(cifar.Cifar10)
_CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3  # a label byte, then the red, green and blue 32x32 planes, row-major

_MNIST_FILES = {
    "train_images": mnist._MNIST_TRAIN_DATA_FILENAME,
    "train_labels": mnist._MNIST_TRAIN_LABELS_FILENAME,
    "test_images": mnist._MNIST_TEST_DATA_FILENAME,
    "test_labels": mnist._MNIST_TEST_LABELS_FILENAME,
}


def read_cifar_batch(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 32, 32, 3) images and (N,) labels of one CIFAR-10 binary batch (data_batch_*.bin, test_batch.bin)."""
    if len(data) % _CIFAR_RECORD_BYTES:
        raise ValueError(f"a CIFAR-10 batch of {len(data)} bytes; valid: a multiple of {_CIFAR_RECORD_BYTES}")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def _read_tar_members(path: epath.PathLike, names: list[str]) -> dict[str, bytes]:
    """The named files of a .tar.gz, read in one pass: a gzip stream can only seek back by decompressing again."""
    with epath.Path(path).open("rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive if member.name in names}
    missing = sorted(set(names) - set(members))
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return members


class MnistNp(tfds.core.GeneratorBasedBuilder):
    """tfds' mnist (60,000 train and 10,000 test 28x28 digits) from the same CVDF mirror, parsed with NumPy."""

    name = "mnist_np"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: tfds' mnist downloads, images as uint8 tensors."}
    URL = mnist.MNIST.URL
    DESCRIPTION = "The MNIST database of handwritten digits."
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CITATION = mnist._MNIST_CITATION
    LABEL_NAMES = [str(digit) for digit in range(10)]  # as ClassLabel(num_classes=10) in tfds' mnist

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=mnist.MNIST_IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=self.LABEL_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    @property
    def download_urls(self) -> dict[str, str]:
        """What preparing downloads (runner/data/catalogue.py checks the first is reachable before starting)."""
        return {key: urllib.parse.urljoin(self.URL, name) for key, name in _MNIST_FILES.items()}

    def _split_generators(self, dl_manager):
        paths = dl_manager.download(self.download_urls)
        return {
            split: self._generate_examples(read_idx(str(paths[f"{split}_images"]), 3),
                                           read_idx(str(paths[f"{split}_labels"]), 1))
            for split in ("train", "test")
        }

    def _generate_examples(self, images, labels):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image[..., None], "label": label}


class FashionMnistNp(MnistNp):
    """tfds' fashion_mnist (60,000 train and 10,000 test 28x28 articles) from Zalando's files, parsed with NumPy."""

    name = "fashion_mnist_np"
    RELEASE_NOTES = {"1.0.0": "Initial release: tfds' fashion_mnist downloads, images as uint8 tensors."}
    URL = mnist.FashionMNIST.URL
    DESCRIPTION = "Zalando's article images: 28x28 grayscale, 10 classes, 60,000 train and 10,000 test."
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    CITATION = mnist._FASHION_MNIST_CITATION
    # The names of tfds' fashion_mnist (and of the dataset's README), in label order.
    LABEL_NAMES = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    ]


class Cifar10Np(tfds.core.GeneratorBasedBuilder):
    """tfds' cifar10 (50,000 train and 10,000 test 32x32 colour images) from its binary archive, parsed with NumPy."""

    name = "cifar10_np"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: tfds' cifar10 download, images as uint8 tensors."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="60,000 32x32 colour images in 10 classes: 50,000 train and 10,000 test.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
                    # The names tfds' cifar10 reads from the archive's batches.meta.txt, in label order.
                    "label": tfds.features.ClassLabel(
                        names=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            citation=cifar._CITATION,
        )

    download_urls = {"archive": _CIFAR10.url}  # what preparing downloads

    def _split_generators(self, dl_manager):
        files = {"train": _CIFAR10.train_files, "test": _CIFAR10.test_files}
        members = _read_tar_members(
            dl_manager.download(self.download_urls["archive"]), [_CIFAR10.prefix + name for names in files.values() for name in names]
        )
        splits = {}
        for split, names in files.items():
            images, labels = zip(*(read_cifar_batch(members[_CIFAR10.prefix + name]) for name in names))
            splits[split] = self._generate_examples(np.concatenate(images), np.concatenate(labels))
        return splits

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": label}
