"""The runner's Hydra plugins, named by conf/hydra/launcher/*.yaml and conf/hydra/sweeper/search.yaml.

Hydra instantiates a launcher or sweeper only from a class defined in the hydra_plugins package, and finds them by
scanning that package (hydra/core/plugins.py); so the classes are defined here, and what each adds to the plugin it
extends is in runner/scale/launchers.py and runner/cli/search.py. Importing this module is cheap: Hydra imports it on every
start, and the plugins it extends are imported by the same scan.
"""

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _JoblibLauncher
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit

from runner.cli.search import OptunaSearch
from runner.scale.launchers import ResumeOnRequeue, ThreadCapped


class ParallelLauncher(ThreadCapped, _JoblibLauncher):
    """hydra/launcher=parallel: joblib processes on this machine, each job's threads capped."""


class SlurmLauncher(ResumeOnRequeue, _submitit.SlurmLauncher):
    """hydra/launcher=slurm: one SLURM job per run; pre-empted or timed out, it resumes from its checkpoint."""


class SlurmLocalLauncher(ResumeOnRequeue, _submitit.LocalLauncher):
    """hydra/launcher=slurm_local: the same through submitit's local executor, one process per job, no SLURM."""


class SearchSweeper(OptunaSearch, _OptunaSweeper):
    """hydra/sweeper=search: Optuna, quiet, ending like any sweep when every trial failed."""
