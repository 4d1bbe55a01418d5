"""`python -m runner -m hparams_search=...` end to end: Optuna proposes trials, each trial is one run, and a trial
that fails or diverges is recorded while the study goes on.

The searches here are seeded (conf/hydra/sweeper/sampler/tpe_seeded.yaml): with seed 0, TPE's first two random
draws of a two-way choice are its first and then its second value, which is what each test relies on to see both.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import read_summary

NO_PLOTS = ("hydra.callbacks.report.plots=false",)  # the report's tables are enough here; plots cost seconds
SMALL = ("model.depth=1", "model.width=8")  # a trial's outcome, not its accuracy, is checked: one small layer
QUIET = ("A new study created", "setup plugin", "Traceback", "DeprecationWarning")  # optuna, alembic, Python


def results(cli) -> dict:
    [path] = (cli.cwd / "outputs").rglob("optimization_results.yaml")
    return yaml.safe_load(path.read_text())


def trials(cli) -> list[tuple[dict, dict]]:
    """(overrides as a dict, summary) of every trial, in the order they ran."""
    def trial_number(run_dir):  # job dirs are named by their overrides; Hydra's job number is the trial's
        return yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"]

    found = []
    for run_dir in sorted(cli.run_dirs(), key=trial_number):
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        found.append((dict(o.split("=", 1) for o in overrides), read_summary(run_dir)))
    return found


def test_an_unknown_preset_is_one_line_and_exit_2(cli):
    result = cli("-m", "hparams_search=nonexistent")
    assert result.returncode == 2
    assert result.stderr.startswith("error: hparams_search=nonexistent: unknown choice; valid: ")
    assert result.stderr.count("\n") == 1 and "learning_rate" in result.stderr
    assert not (cli.cwd / "outputs").exists()


def test_a_trial_that_fails_at_run_time_is_recorded_and_the_study_goes_on(cli):
    # batch 5000 passes the pre-run check (an int >= 1) and fails in the run: digits has 1293 training examples.
    result = cli("-m", "hparams_search=learning_rate", "trainer.batch_size=choice(5000,32)",
                 "hydra.sweeper.n_trials=2", "trainer.epochs=1", *SMALL, *NO_PLOTS)
    assert result.returncode == 1  # a sweep with a failed job
    (failed_overrides, failed), (done_overrides, done) = trials(cli)
    assert failed_overrides["trainer.batch_size"] == "5000" and failed["status"] == "failed"
    assert failed["reason"].startswith("trainer.batch_size: 5000 is larger than the training set")
    assert done_overrides["trainer.batch_size"] == "32" and done["status"] == "completed"
    # The value Optuna maximized is the completed trial's best validation accuracy, and its parameters are the best.
    best = results(cli)
    assert best["best_value"] == pytest.approx(done["best_val_accuracy"])
    assert best["best_params"] == {"optimizer.learning_rate": float(done_overrides["optimizer.learning_rate"]),
                                   "trainer.batch_size": 32}
    assert "1 job(s) failed" in result.stderr and not any(word in result.stderr for word in QUIET)
    assert (next(cli.cwd.glob("outputs/multirun/*/*")) / "report" / "report.md").exists()


def test_a_diverged_trial_does_not_stop_the_study(cli):
    result = cli("-m", "hparams_search=learning_rate", "optimizer=sgd", "optimizer.learning_rate=choice(0.05,1e6)",
                 "hydra.sweeper.n_trials=2", "trainer.epochs=1", *SMALL, *NO_PLOTS)
    assert result.returncode == 0, result.stderr  # diverging is an outcome, not a failure
    statuses = {o["optimizer.learning_rate"]: s["status"] for o, s in trials(cli)}
    assert statuses == {"0.05": "completed", "1000000.0": "diverged"}
    assert results(cli)["best_params"] == {"optimizer.learning_rate": 0.05}


def test_a_study_whose_every_trial_failed_ends_like_a_sweep_with_failed_jobs(cli):
    result = cli("-m", "hparams_search=dropout", "trainer.batch_size=5000", "hydra.sweeper.n_trials=2",
                 "trainer.epochs=1", *NO_PLOTS)
    assert result.returncode == 1
    assert "2 job(s) failed" in result.stderr and "Traceback" not in result.stderr
    assert [s["status"] for _, s in trials(cli)] == ["failed", "failed"]
    assert results(cli) == {"name": "optuna", "best_params": None, "best_value": None}
