"""From a dataset's train and test arrays to the scaled train/validation/test splits an experiment uses."""

import dataclasses
from typing import NamedTuple

import numpy as np

from runner.errors import UserError

# Floor for a channel's standard deviation, so a constant channel (e.g. a blank image border) is not divided by 0.
_MIN_STD = 1e-6


class TrainTest(NamedTuple):
    """A dataset as its source gives it: unscaled inputs (N, *example_shape, channels), integer labels 0..K-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


# eq=False: the fields are arrays, which have no single truth value to compare or hash by.
@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Scaled float32 inputs (N, *example_shape, channels) and int32 labels of the train, validation and test splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def split_and_scale(
    data: TrainTest, *, name: str, val_fraction: float, seed: int, train_subset: int | None = None
) -> Splits:
    """Carves validation from train (seeded), keeps `train_subset` examples, and scales all by train statistics.

    Args:
      data: the dataset's train and test arrays.
      name: the dataset's name, carried into the result.
      val_fraction: share of train moved to validation, in [0, 1); any share > 0 moves at least one example.
      seed: seeds the permutation that picks validation examples and orders the rest.
      train_subset: if set, keep only the first `train_subset` of the permuted remaining train examples.

    Returns:
      The splits, inputs scaled per channel to zero mean and unit std over the final training split.
    """
    num_train = len(data.y_train)
    num_val = _num_val(val_fraction, num_train)
    order = np.random.default_rng(seed).permutation(num_train)
    val, train = order[:num_val], order[num_val:]
    if train_subset is not None:
        if not 1 <= train_subset <= len(train):
            raise UserError(
                f"dataset.train_subset={train_subset} is out of range; valid: 1..{len(train)} "
                f"(the {name} train examples left after validation), or null for all"
            )
        train = train[:train_subset]

    x_train = data.x_train[train].astype(np.float32)
    statistics_axes = tuple(range(x_train.ndim - 1))  # every axis but the channel's
    # Statistics accumulate in float64; the scaling itself stays float32 to keep memory at one copy per split.
    mean = x_train.mean(axis=statistics_axes, dtype=np.float64).astype(np.float32)
    std = np.maximum(x_train.std(axis=statistics_axes, dtype=np.float64), _MIN_STD).astype(np.float32)

    def scale(x: np.ndarray) -> np.ndarray:
        return (x - mean) / std

    return Splits(
        x_train=scale(x_train),
        y_train=data.y_train[train].astype(np.int32),
        x_val=scale(data.x_train[val].astype(np.float32)),
        y_val=data.y_train[val].astype(np.int32),
        x_test=scale(data.x_test.astype(np.float32)),
        y_test=data.y_test.astype(np.int32),
        num_classes=data.num_classes,
        name=name,
    )


def _num_val(val_fraction: float, num_train: int) -> int:
    """How many train examples go to validation: a rounded share, at least 1 unless the share is 0."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"dataset.val_fraction={val_fraction} is out of range; valid: 0 <= val_fraction < 1")
    if val_fraction == 0:
        return 0
    num_val = max(1, round(val_fraction * num_train))
    if num_val >= num_train:
        raise UserError(
            f"dataset.val_fraction={val_fraction} leaves no training examples of {num_train}; valid: a smaller fraction"
        )
    return num_val
