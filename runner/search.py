"""What the runner's Optuna sweeper (conf/hydra/sweeper/search.yaml, chosen by every hparams_search preset) adds to
hydra-optuna-sweeper's: it is quiet, and a study whose every trial failed ends the way any sweep with failed jobs ends.

The plugin asks Optuna for trials, runs each as a job through the launcher and tells Optuna the value the job
returned (the runner returns its best validation accuracy; a failed job returns None, a failed trial). Two things
differ here. Optuna's and alembic's INFO lines ("A new study created in memory", a line for each of alembic's
plugins) stay off the console: the sweeper's own lines say which study, sampler and best parameters. And when no
trial completed, Optuna has no best trial to report; instead of a traceback the study writes
optimization_results.yaml with no best parameters, the report is written and the command exits 1 naming the jobs
(runner/__main__.py), each with its reason in its summary.json.

The plugin class the conf file names is in hydra_plugins/runner_plugins: Hydra instantiates sweepers only from
classes defined in the hydra_plugins package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

RESULTS_FILE = "optimization_results.yaml"  # the plugin's name for it, in the sweep dir
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
