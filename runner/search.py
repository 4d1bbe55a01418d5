"""The Optuna sweeper of `hparams_search=...` (conf/hydra/sweeper/search.yaml): hydra-optuna-sweeper's, made quiet
and made to end a study whose every trial failed the way any sweep with failed jobs ends.

The plugin asks Optuna for trials, runs each as a job through the launcher and tells Optuna the value the job
returned (the runner returns its best validation accuracy; a failed job returns None, a failed trial). Two things
differ here. Optuna's and alembic's INFO lines ("A new study created in memory", a line for each of alembic's
plugins) stay off the console: the sweeper's own lines say which study, sampler and best parameters. And when no
trial completed, Optuna has no best trial to report; instead of a traceback the study writes
optimization_results.yaml with no best parameters, the report is written and the command exits 1 naming the jobs
(runner/__main__.py), each with its reason in its summary.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as PluginSweeper
from omegaconf import OmegaConf

RESULTS_FILE = "optimization_results.yaml"  # the plugin's name for it, in the sweep dir
_NO_TRIAL_COMPLETED = "No trials are completed yet"  # optuna's message when a study has no best trial
log = logging.getLogger(__name__)


class OptunaSweeper(PluginSweeper):
    """hydra_plugins.hydra_optuna_sweeper's sweeper, quiet, and ending cleanly when every trial failed."""

    def __init__(self, **params: Any) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # before the plugin imports optuna, which imports it
        super().__init__(**params)
        import optuna  # imported by now: the plugin's implementation module imports it

        optuna.logging.set_verbosity(optuna.logging.WARNING)

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
