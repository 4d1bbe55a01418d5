"""What the runner's Optuna sweeper (conf/hydra/sweeper/search.yaml, chosen by every hparams_search preset) adds to
hydra-optuna-sweeper's: it is quiet, and a study whose every trial failed ends the way any sweep with failed jobs ends.

The plugin asks Optuna for trials, runs each as a job through the launcher and tells Optuna the value the job
returned (the runner returns its best validation accuracy; a failed job returns None, a failed trial). Two things
differ here. Optuna's and alembic's INFO lines ("A new study created in memory", a line for each of alembic's
plugins) stay off the console: the sweeper's own lines say which study, sampler and best parameters. And when no
trial completed, Optuna has no best trial to report; instead of a traceback the study writes
optimization_results.yaml with no best parameters, the report is written and the command exits 1 naming the jobs
(runner/__main__.py), each with its reason in its summary.json.

`check_search` refuses, before anything runs, what the plugin would find only once the sweep had started: a
trial count below 1, a search space Optuna cannot sample (an interval whose low is above its high, a bound that
is no number), and a search for the best validation accuracy of runs that hold out no validation split.

The plugin class the conf file names is in hydra_plugins/runner_plugins: Hydra instantiates sweepers only from
classes defined in the hydra_plugins package.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

RESULTS_FILE = "optimization_results.yaml"  # the plugin's name for it, in the sweep dir
# The sweepers that take trials from Optuna (conf/hydra/sweeper/search.yaml, and the plugin's own `optuna`).
OPTUNA_SWEEPERS = ("hydra_plugins.runner_plugins.SearchSweeper",
                   "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
SEARCH_SPACES = "choice(a, b, ...), range(start, stop[, step]) or interval(low, high), bounds numbers"
_NO_TRIAL_COMPLETED = "No trials are completed yet"  # optuna's message when a study has no best trial
log = logging.getLogger(__name__)
# Optuna imports alembic, which logs an INFO line for each plugin it registers; Hydra imports this module when it
# scans for plugins, before the sweeper's config (its sampler first) imports optuna.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class OptunaSearch:
    """Mixin for hydra_plugins.hydra_optuna_sweeper's OptunaSweeper: quiet, and ending cleanly when no trial completed."""

    sweeper: Any  # the plugin's implementation, which holds the sweep's config

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        import optuna  # imported by now, by the plugin

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ...", on stderr

    def sweep(self, arguments: list[str]) -> None:
        try:
            super().sweep(arguments)
        except ValueError as e:
            if _NO_TRIAL_COMPLETED not in str(e):
                raise
            sweep_dir = Path(str(self.sweeper.config.hydra.sweep.dir))
            OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": None, "best_value": None}),
                           sweep_dir / RESULTS_FILE)
            log.warning("no trial completed, so there are no best parameters; each job's summary.json says why")


def check_search(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Refuse, in one line, an Optuna search that cannot run as asked, before anything runs (the plugin would
    find it only once the sweep had started, and end in a traceback). Raises UserError.

    `cfg`: the composed config with Hydra's node (runner.config.compose.compose_config(..., hydra=True)); `overrides`: the
    command line's, whose sweeps (`'model.width=int(interval(16, 256))'`) the sweeper searches beside
    `hydra.sweeper.params`. A config whose sweeper is not Optuna's passes.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner.cli.relations import no_validation_split
    from runner.config.checks import check_value
    from runner.errors import UserError, first_line

    sweeper = OmegaConf.select(cfg, "hydra.sweeper")
    if not isinstance(sweeper, DictConfig) or sweeper.get("_target_") not in OPTUNA_SWEEPERS:
        return
    for key in ("n_trials", "n_jobs"):
        check_value(f"hydra.sweeper.{key}", sweeper.get(key), "int >= 1")
    if "dataset" in cfg and (none_left := no_validation_split(cfg.dataset)):
        raise UserError(f"hydra.sweeper: Optuna maximizes each trial's best validation accuracy, and {none_left[0]}; "
                        f"valid: {none_left[1]}")
    params = sweeper.get("params") or {}
    searched = [(f"hydra.sweeper.params.{key}", f"{key}={value}") for key, value in params.items()]
    searched += [(override.split("=", 1)[0], override) for override in overrides
                 if "=" in override and not override.lstrip("+~").startswith(("hydra.", "hydra/"))]
    parser = OverridesParser.create()
    for where, line in searched:
        text = line.split("=", 1)[1]
        try:
            override = parser.parse_override(line)
        except Exception as e:  # Hydra's grammar raises several types, each with a plain message
            raise UserError(f"{where}: cannot parse {text!r} ({first_line(e)}); valid: {SEARCH_SPACES}") from None
        problem = _space_problem(override.value()) if override.is_sweep_override() else None
        if problem:
            raise UserError(f"{where}: {text}: {problem[0]}; valid: {problem[1]}")


def _space_problem(space: Any) -> tuple[str, str] | None:
    """(what is wrong, what is valid) with a search space Optuna cannot sample (hydra_optuna_sweeper/_impl.py makes
    each a distribution), or None."""
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep

    if isinstance(space, IntervalSweep):
        low, high, valid = space.start, space.end, "interval(low, high) with finite numbers low <= high"
        if "log" in space.tags:
            valid += ", and low > 0 on a log scale"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
            return f"the bounds must be finite numbers, got {low} and {high}", valid
        if low > high:
            return f"low {low:g} is above high {high:g}", valid
        if "log" in space.tags and low <= 0:
            return f"a log scale needs low > 0, got {low:g}", valid
    if isinstance(space, RangeSweep):
        valid = "range(start, stop[, step]) with start <= stop and step > 0"
        if space.step is None or space.step <= 0:
            return f"the step must be > 0, got {space.step}", valid
        if space.start > space.stop:
            return f"start {space.start:g} is above stop {space.stop:g}", valid
    return None
