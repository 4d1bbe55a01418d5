"""The embedded datasets, `digits` and `mnist1d`: tfds builders that generate their data offline.

Defining the classes registers them in tfds' catalogue under their `name`, so `tfds.builder("digits")` finds them
like any catalogue dataset. Both are built once into the tfds data dir (array_record) and read back from there;
the first build says so in one line, in place of tfds' "Downloading and preparing dataset Unknown size" (nothing
is downloaded).
"""

import random

import numpy as np
import tensorflow_datasets as tfds

_DIGITS_NUM_TRAIN = 1437  # of 1,797 images: an 80/20 train/test split
_DIGITS_SPLIT_SEED = 0  # fixed: the split is part of the dataset's version, not of an experiment


class _BuiltLocally:
    """Mixin for a builder that generates its data here: one line on its first build, none of tfds' own.

    tfds (dataset_builder.py, 4.9) prints through these two hooks before and after `download_and_prepare`; its
    lines speak of downloading and of sizes it cannot know for generated data.
    """

    def _log_download_bytes(self) -> None:
        print(f"building {self.name} locally into {self.data_dir} (first use only)…", flush=True)

    def _log_download_done(self) -> None:
        pass


class Digits(_BuiltLocally, tfds.core.GeneratorBasedBuilder):
    """scikit-learn's bundled 8x8 handwritten digits (values 0..16): 1,437 train and 360 test images."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: a fixed 80/20 split of sklearn.datasets.load_digits."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The UCI optical recognition of handwritten digits test set, as bundled by scikit-learn.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            citation="Alpaydin & Kaynak, Optical Recognition of Handwritten Digits, UCI ML Repository, 1998.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn: nothing to download
        # Imported here: sklearn.datasets is slow to import and only needed for the one-time build.
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(digits.target))
        images = digits.images.astype(np.float32)[..., None]
        train, test = order[:_DIGITS_NUM_TRAIN], order[_DIGITS_NUM_TRAIN:]
        return {
            "train": self._generate_examples(images[train], digits.target[train]),
            "test": self._generate_examples(images[test], digits.target[test]),
        }

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": label}


class Mnist1d(_BuiltLocally, tfds.core.GeneratorBasedBuilder):
    """MNIST-1D (Greydanus 2020) with its published default settings: 4,000 train and 1,000 test 40-step signals."""

    name = "mnist1d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: mnist1d.data.make_dataset(get_dataset_args())."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Ten 1-D digit templates, padded, scaled, translated, sheared and noised into 40 steps.",
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(40, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            citation="Greydanus & Kobak, Scaling Down Deep Learning with MNIST-1D, ICML 2024.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated procedurally: nothing to download
        data = _make_mnist1d()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, signals, labels):
        for index, (signal, label) in enumerate(zip(signals, labels)):
            yield index, {"signal": signal.astype(np.float32)[:, None], "label": label}


def _make_mnist1d() -> dict:
    """Generates MNIST-1D with the package's defaults, leaving the global NumPy and Python RNGs as they were."""
    # Imported here: mnist1d imports matplotlib.pyplot, slow and only needed for the one-time build.
    # make_dataset only computes; get_dataset is the function that downloads, and it is not used.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global RNGs (np.random.seed(42), random.seed(42)) for reproducibility.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
