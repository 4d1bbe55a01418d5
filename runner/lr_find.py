"""`python -m runner.lr_find [FLAGS] [OVERRIDES]`: the learning-rate range test (Smith 2017; fast.ai's lr_find).

    python -m runner.lr_find                                   # the default config
    python -m runner.lr_find --steps 300 optimizer=sgd model.depth=5
    python -m runner.lr_find --min-lr 1e-5 --max-lr 1 --out my_dir dataset=mnist1d

Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, section 3.3. The overrides are those
of `python -m runner`, checked the same way before anything runs (a mistake is one line and exit code 2, and
nothing is written). The run's own model, optimizer (its other hyperparameters), clipping, regularizers, data,
batch size and seed are used; the sweep replaces the schedule (one_cycle's momentum cycle too: the optimizer's
own momentum is used) and trains every layer (a stages=freeze_lower run's frozen stage is not replayed).

The test, its outputs and `optimizer.learning_rate=auto`: runner/training/lr_range.py.
"""


from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig

from runner.console import Console, command, error
from runner.data import load_data
from runner.errors import UserError, first_line
from runner.training.lr_range import FinderSettings, JSON, PNG, describe_result, run_range_test, write_results
from runner.training.process import exit_promptly, prepare_training_process


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other mistake (argparse prints usage too)
        raise UserError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = FinderSettings()
    parser = _Parser(prog="python -m runner.lr_find", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="config overrides, as for python -m runner (group=choice, group.key=value)")
    parser.add_argument("--min-lr", type=float, default=defaults.min_lr, help="first rate (default %(default)g)")
    parser.add_argument("--max-lr", type=float, default=defaults.max_lr, help="last rate (default %(default)g)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="steps of the test (default %(default)s)")
    parser.add_argument("--beta", type=float, default=defaults.beta,
                        help="smoothing of the moving average, in [0, 1) (default %(default)g)")
    parser.add_argument("--divergence-factor", type=float, default=defaults.divergence_factor,
                        help="stop when the smoothed loss exceeds this times its lowest (default %(default)g)")
    parser.add_argument("--out", type=Path, help="a new or empty dir for the results "
                        "(default outputs/lr_find/<date>_<time>)")
    return parser.parse_intermixed_args(argv)


def checked_config(overrides: Sequence[str]) -> DictConfig:
    """The config `python -m runner` would run with these overrides, after the same checks (one line each)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from runner.cli.preflight import Composer
    from runner.cli.relations import validate
    from runner.config.safety import check_interpolations, check_override

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise UserError(f"cannot parse overrides: {first_line(e)}") from None
    for override in parsed:
        check_override(override.input_line)
        if override.is_hydra_override():
            raise UserError(f"{override.input_line}: lr_find does not start Hydra; valid: config overrides, "
                            "and --out DIR for where the results go")
        if override.is_sweep_override():
            raise UserError(f"{override.input_line}: lr_find tests one config, not a sweep; "
                            "valid: one value per key (run it once per config)")
    composer = Composer("config")
    cfg = composer(list(overrides))
    check_interpolations(cfg, list(overrides))
    validate(cfg, composer.top_level)
    if cfg.dataset.check is not None:
        from runner.data import check_dataset

        check_dataset(cfg.dataset)
    return cfg


def check_out_dir(out: Path) -> None:
    """UserError unless `out` is new or an empty dir that can be made or written."""
    from runner.rundir.claim import RunDirClaim

    RunDirClaim(out, "--out")  # a file, or a parent that cannot be written, is refused here
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out: {out} already holds files; valid: a new or empty directory "
                        "(the finder never writes among other files)")


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Check, run the test, write its files; 0, or 2 after one line for a mistake."""
    console = Console()
    try:
        args = parse_args(argv)
        settings = FinderSettings(args.min_lr, args.max_lr, args.steps, args.beta, args.divergence_factor)
        settings.check()
        cfg = checked_config(args.overrides)
        out = args.out if args.out is not None else \
            Path("outputs/lr_find") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        check_out_dir(out)

        prepare_training_process()
        splits = load_data(cfg)
        console.info(f"lr_find: {settings.steps} steps, lr {settings.min_lr:g} to {settings.max_lr:g}, on "
                     f"{splits.name} ({len(splits.x_train)} training examples, batch {cfg.trainer.batch_size})")
        test = run_range_test(cfg, splits, settings)
        write_new_dir(out, lambda d: write_results(test, d, args.overrides, cfg.trainer.seed))
    except KeyboardInterrupt:
        error("interrupted; nothing was written")
        return 130
    console.info(f"{describe_result(test)}; {PNG} and {JSON} in {out}")
    return 0


def write_new_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Create or claim `out` (new or empty), run `write` into it; on any failure take back what was added."""
    from runner.rundir.claim import RunDirClaim

    check_out_dir(out)
    claim = RunDirClaim(out, "--out")
    claim.lock()
    try:
        write(claim.path)
    except BaseException:
        claim.undo()
        raise
    claim.release()


if __name__ == "__main__":
    exit_promptly(main())
