"""Datasets as scaled NumPy splits; the only package that imports tensorflow_datasets.

Every dataset arrives as `Splits`: float32 inputs with a trailing channel axis ((N, H, W, C) images, (N, L, 1)
signals), int32 labels, a validation split carved from train by a permutation seeded by `seed`, and all splits
scaled per channel by the mean and std of the final training split. The sources: `digits` and `mnist1d`, tfds
builders generated offline (embedded.py); any tfds catalogue name (catalogue.py), mnist, fashion_mnist and cifar10
through builders that prepare them from tfds' downloads without TensorFlow (catalogue_builders.py); a local .npz
file (npz.py).
"""

from runner.data.load import load_splits
from runner.data.npz import validate_npz
from runner.data.splits import Splits

__all__ = ["Splits", "load_splits", "validate_npz"]
