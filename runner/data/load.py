"""`load_splits`: the dataset a config's `dataset` node names, as scaled train, validation and test splits.

The conf/dataset files are the registry: each names the callable that reads its data under `source`, built by
`hydra.utils.instantiate` with the file's arguments and called with the tfds data dir:

    source:
      _target_: runner.data.catalogue.load_tfds
      _partial_: true   # data_dir is supplied at run time
      name: digits

`source(data_dir=...)` returns the dataset's unscaled train and test arrays (`TrainTest`). A file may also name a
`check`, called with no arguments before anything runs (runner/cli/preflight.py), that raises UserError where the
source would: a bad local file then costs nothing on disk. Neither is imported before it is needed, so importing
this package does not import tensorflow_datasets.
"""

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner.config.checks import strip_specs
from runner.data.splits import Scaling, Splits, keep_classes, resize_images, split_and_scale
from runner.errors import UserError, first_line


def load_splits(dataset: DictConfig, *, seed: int, scaling: Scaling | None = None) -> Splits:
    """Reads the dataset's source and returns its scaled train, validation and test splits.

    Args:
      dataset: the config's `dataset` node (runner/config/compose.py, DatasetConfig): `source` reads the data from
        `data_dir`; `validation`, `val_fraction`, `val_size`, `train_subset` and `labeled_examples` shape the
        splits, `scaling` scales them; `name` names them.
      seed: seeds the permutation that picks the validation examples.
      scaling: input statistics to scale by (a reused net's); None: the training split's.

    Returns:
      float32 inputs with a trailing channel axis and int32 labels, every split scaled per channel by the
      mean and std of the final training split.
    """
    source = _build(dataset.source, "dataset.source")
    data = source(data_dir=dataset.data_dir)
    if dataset.classes is not None:
        data = keep_classes(data, list(dataset.classes), dataset.name)
    if dataset.resize is not None:
        data = resize_images(data, list(dataset.resize), dataset.name)
    return split_and_scale(data, name=dataset.name, val_fraction=dataset.val_fraction, seed=seed,
                           train_subset=dataset.train_subset, scaling=scaling,
                           labeled_examples=dataset.labeled_examples, validation=dataset.validation,
                           val_size=dataset.val_size, input_scaling=dataset.scaling)


def check_dataset(dataset: DictConfig) -> None:
    """Runs the dataset's `check`, if its conf file names one: raises UserError where its source would fail."""
    if dataset.check is not None:
        _build(dataset.check, "dataset.check")()


def _build(node: DictConfig, key: str) -> Any:
    """`hydra.utils.instantiate` without the `_valid_` declarations; a failure is the user's, named by `key`."""
    try:
        return instantiate(strip_specs(node), _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise UserError(f"{key}: {first_line(error.__cause__ or error)}") from None


def load_data(cfg: DictConfig, scaling: Scaling | None = None) -> Splits:
    """The dataset's splits (scaled by `scaling`, a reused net's, if given), checked against the batch size."""
    splits = load_splits(cfg.dataset, seed=cfg.trainer.seed, scaling=scaling)
    n = len(splits.x_train)
    if cfg.trainer.batch_size > n:
        raise UserError(f"trainer.batch_size: {cfg.trainer.batch_size} is larger than the training set "
                        f"({n} examples); use at most {n}")
    return splits
