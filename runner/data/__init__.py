"""Datasets as scaled NumPy splits; the only package that imports tensorflow_datasets (catalogue.py, on first use).

Every dataset arrives as `Splits`: float32 inputs with a trailing channel axis ((N, H, W, C) images, (N, L, 1)
signals), int32 labels, a validation split carved from train by a permutation seeded by `seed` (or its tail), and
all splits scaled per channel by the mean and std of the final training split (or to [0, 1]). Each conf/dataset file
names its source with `_target_` (load.py): `load_tfds` for tfds builders, the embedded `digits` and `mnist1d`
generated offline (embedded.py), any tfds catalogue name (catalogue.py), and cifar10 through a builder that prepares
it from tfds' download without TensorFlow (catalogue_builders.py); `load_idx_or_tfds` for mnist and fashion_mnist,
local IDX files or else such a builder's copy (catalogue.py), and `read_idx_set` for any local IDX set (idx.py, the
one IDX reader, imported by both); `read_npz` for a local .npz (npz.py).
"""

from runner.data.load import check_dataset, load_data, load_splits
from runner.data.npz import validate_npz
from runner.data.splits import Splits

__all__ = ["Splits", "check_dataset", "load_data", "load_splits", "validate_npz"]
