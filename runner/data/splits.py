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
    scaling: "Scaling | None" = None  # what the inputs were scaled by
    # Training inputs whose labels were set aside (dataset.labeled_examples), scaled like the rest; for pretraining.
    x_unlabeled: np.ndarray | None = None

    @property
    def all_train_inputs(self) -> np.ndarray:
        """Every training input, labeled ones first: what unsupervised pretraining learns from."""
        return self.x_train if self.x_unlabeled is None else np.concatenate([self.x_train, self.x_unlabeled])


class Scaling(NamedTuple):
    """Per-channel input statistics: inputs are scaled to (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Scaling":
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32))


def split_and_scale(
    data: TrainTest, *, name: str, val_fraction: float, seed: int, train_subset: int | None = None,
    scaling: Scaling | None = None, labeled_examples: int | None = None, validation: str = "random",
    val_size: int = 5000, input_scaling: str = "standardize",
) -> Splits:
    """Carves validation from train, keeps `train_subset` examples, and scales all by train statistics.

    Args:
      data: the dataset's train and test arrays.
      name: the dataset's name, carried into the result.
      val_fraction: share of train moved to validation by `validation="random"`, in [0, 1); any share > 0 moves
        at least one example.
      seed: seeds the permutation that picks validation examples and orders the rest (`validation="random"`).
      train_subset: if set, keep only the first `train_subset` of the remaining train examples.
      scaling: the statistics to scale by (a reused net's, so its layers see inputs as they were trained);
        None: as `input_scaling` says.
      validation: "random": `val_fraction` of train, drawn by the seeded permutation, which also orders the rest;
        "tail": the last `val_size` train examples, the rest in their order (Geron's split of Fashion-MNIST,
        Hands-On Machine Learning, ch. 10: X_train_full[:-5000], X_train_full[-5000:]).
      val_size: how many examples `validation="tail"` moves to validation.
      input_scaling: "standardize": per channel by the mean and std of the final training split; "unit": pixel
        values / 255, to [0, 1] (the same chapter's scaling of 8-bit images).
      labeled_examples: if set, only the first `labeled_examples` of the training split keep their labels; the
        inputs of the rest become `x_unlabeled` (and count in the training statistics: they are training inputs).

    Returns:
      The splits, inputs scaled per channel, by default to zero mean and unit std over the final training split.
    """
    num_train = len(data.y_train)
    if validation == "tail":
        num_val = _num_tail(val_size, num_train, name)
        val, train = np.arange(num_train - num_val, num_train), np.arange(num_train - num_val)
    else:
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
    if labeled_examples is not None and not 1 <= labeled_examples <= len(train):
        raise UserError(
            f"dataset.labeled_examples={labeled_examples} is out of range; valid: 1..{len(train)} "
            f"(the {name} train examples left after validation), or null for all"
        )

    x_train = data.x_train[train].astype(np.float32)
    if scaling is None and input_scaling == "unit":
        channels = x_train.shape[-1]
        mean, std = np.zeros(channels, np.float32), np.full(channels, 255.0, np.float32)  # (x - 0) / 255
    elif scaling is None:
        statistics_axes = tuple(range(x_train.ndim - 1))  # every axis but the channel's
        # Statistics accumulate in float64; the scaling itself stays float32 to keep memory at one copy per split.
        mean = x_train.mean(axis=statistics_axes, dtype=np.float64).astype(np.float32)
        std = np.maximum(x_train.std(axis=statistics_axes, dtype=np.float64), _MIN_STD).astype(np.float32)
    else:
        mean, std = scaling
        if mean.shape != x_train.shape[-1:]:
            raise UserError(f"transfer.source: its inputs had {mean.size} channel(s), {name} has {x_train.shape[-1]}; "
                            "valid: a source trained on inputs with as many channels")

    def scale(x: np.ndarray) -> np.ndarray:
        return (x - mean) / std

    labeled = len(train) if labeled_examples is None else labeled_examples
    return Splits(
        x_train=scale(x_train[:labeled]),
        y_train=data.y_train[train[:labeled]].astype(np.int32),
        x_val=scale(data.x_train[val].astype(np.float32)),
        y_val=data.y_train[val].astype(np.int32),
        x_test=scale(data.x_test.astype(np.float32)),
        y_test=data.y_test.astype(np.int32),
        num_classes=data.num_classes,
        name=name,
        scaling=Scaling(mean, std),
        x_unlabeled=None if labeled_examples is None else scale(x_train[labeled:]),
    )


def keep_classes(data: TrainTest, classes: list[int], name: str) -> TrainTest:
    """Only the examples of `classes`, relabelled 0..n-1 in the order given (task B of one dataset)."""
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise UserError(f"dataset.classes: {classes} must name at least 2 distinct classes of {name}; "
                        f"valid: each in 0..{data.num_classes - 1}")
    unknown = [c for c in classes if not 0 <= c < data.num_classes]
    if unknown:
        raise UserError(f"dataset.classes: {name} has no class {unknown[0]}; valid: each in 0..{data.num_classes - 1}")
    relabel = np.full(data.num_classes, -1, np.int64)
    relabel[classes] = np.arange(len(classes))
    train, test = relabel[data.y_train] >= 0, relabel[data.y_test] >= 0
    return TrainTest(data.x_train[train], relabel[data.y_train[train]], data.x_test[test],
                     relabel[data.y_test[test]], len(classes))


def resize_images(data: TrainTest, size: list[int], name: str) -> TrainTest:
    """Images resized (bilinear, antialiased) to `size` = [H, W] once, at load."""
    if data.x_train.ndim != 4:
        raise UserError(f"dataset.resize: {name} has {data.x_train.ndim - 2}-D inputs, not images; "
                        "valid: null, or [H, W] for an image dataset")
    if len(size) != 2:
        raise UserError(f"dataset.resize: must be [H, W], got {size}")
    import jax  # only a resize needs it here

    def resize(x: np.ndarray) -> np.ndarray:
        shape = (len(x), *size, x.shape[-1])
        return np.asarray(jax.image.resize(x.astype(np.float32), shape, "bilinear", antialias=True))

    return data._replace(x_train=resize(data.x_train), x_test=resize(data.x_test))


def _num_tail(val_size: int, num_train: int, name: str) -> int:
    """How many train examples `validation="tail"` moves to validation: all of `val_size`, leaving at least one."""
    if not 0 <= val_size < num_train:
        raise UserError(f"dataset.val_size={val_size} is out of range; valid: 0..{num_train - 1} with "
                        f"dataset.validation=tail (the {name} train examples are {num_train})")
    return val_size


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
