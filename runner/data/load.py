"""`load_splits`: a dataset by name, as scaled train, validation and test splits."""

from runner.data.catalogue import load_tfds
from runner.data.npz import read_npz
from runner.data.splits import Splits, split_and_scale
from runner.errors import UserError


def load_splits(
    name: str,
    *,
    val_fraction: float,
    seed: int,
    data_dir: str | None = None,
    path: str | None = None,
    train_subset: int | None = None,
) -> Splits:
    """Loads dataset `name` and returns its scaled train, validation and test splits.

    Args:
      name: `digits` or `mnist1d` (embedded: generated offline into the tfds data dir on first use), `npz` (the
        file at `path`), or any tfds catalogue name (`mnist`, `fashion_mnist`, `cifar10`, ...).
      val_fraction: share of the train split held out for validation, in [0, 1).
      seed: seeds the permutation that picks the validation examples.
      data_dir: the tfds data dir; None means tfds' default ($TFDS_DATA_DIR, else ~/tensorflow_datasets).
      path: the .npz file, for `name="npz"` only.
      train_subset: if set, train on only this many of the examples left after validation.

    Returns:
      float32 inputs with a trailing channel axis and int32 labels, every split scaled per channel by the
      mean and std of the final training split.
    """
    if name == "npz":
        data = read_npz(path)
    elif path is not None:
        raise UserError(
            f"dataset.path={path} is read only with dataset=npz, not dataset.name={name}; "
            "valid: dataset=npz, or no dataset.path"
        )
    else:
        data = load_tfds(name, data_dir)
    return split_and_scale(data, name=name, val_fraction=val_fraction, seed=seed, train_subset=train_subset)
