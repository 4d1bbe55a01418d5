"""The Optuna search presets (conf/hparams_search/) and the runner's sweeper (runner/cli/search.py), without training:
each preset composes into a search that maximizes with a seeded TPE sampler, and searches only keys that exist,
over values their declared ranges accept."""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from omegaconf import OmegaConf, open_dict

from runner.cli.preflight import preflight
from runner.cli.search import RESULTS_FILE, OptunaSearch, check_search
from runner.config.checks import SPEC_KEY, parse_spec
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from tests.conftest import compose_config

PRESETS = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))
SWEEPER = "hydra_plugins.runner_plugins.SearchSweeper"


@functools.lru_cache(maxsize=None)
def composed(*overrides: str):
    return compose_config(*overrides)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def search_space(name: str) -> dict:
    """The preset's searched keys, each parsed as the sweeper parses it: a ChoiceSweep or an IntervalSweep."""
    params = compose_config(f"hparams_search={name}", hydra=True).hydra.sweeper.params
    parser = OverridesParser.create()
    return {key: parser.parse_override(f"{key}={value}").value() for key, value in params.items()}


def declared_range(cfg, key: str) -> str:
    """The valid range a key declares: its node's `_valid_`, or its schema field's metadata."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key)
    if SPEC_KEY in parent and name in parent[SPEC_KEY]:
        return parent[SPEC_KEY][name]
    fields = {f.name: f for f in dataclasses.fields(OmegaConf.get_type(parent))}
    return fields[name].metadata["valid"]


def test_the_asked_for_presets_exist():
    assert {"learning_rate", "dropout", "activation", "optimizer", "initializer", "combined"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_seeded_tpe_search_maximizing_over_twenty_trials(name):
    cfg = compose_config(f"hparams_search={name}", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == SWEEPER
    assert sweeper.direction == "maximize"  # the runner returns the best validation accuracy
    assert sweeper.n_trials == 20 and sweeper.max_failure_rate == 1.0
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert sweeper.params  # something to search


def test_a_preset_passes_the_pre_run_check_and_its_trial_count_is_an_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invocation = preflight(["-m", "hparams_search=learning_rate", "hydra.sweeper.n_trials=10"])
    assert invocation.multirun and not any(tmp_path.iterdir())  # checked, nothing written
    assert compose_config("hparams_search=learning_rate", "hydra.sweeper.n_trials=10",
                          hydra=True).hydra.sweeper.n_trials == 10


@pytest.mark.parametrize("sampler, target", [("random", "RandomSampler"), ("grid", "GridSampler")])
def test_another_sampler_replaces_the_seeded_tpe_whole(sampler, target):
    cfg = compose_config("hparams_search=activation", f"hydra/sweeper/sampler={sampler}", hydra=True)
    assert cfg.hydra.sweeper.sampler._target_ == f"optuna.samplers.{target}"


def test_an_unknown_preset_is_one_line_naming_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight(["-m", "hparams_search=nonexistent"])
    message = str(refused.value)
    assert message.startswith("hparams_search=nonexistent: unknown choice; valid: ") and "\n" not in message
    assert message.split("valid: ")[1].split(", ") == PRESETS
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_searches_keys_that_exist_over_values_their_ranges_accept(name):
    # A misspelt key or an out-of-range bound would fail only inside every trial, after the search has started.
    spaces = search_space(name)
    for key, space in spaces.items():
        if "." not in key:  # a group: every choice is one of its conf files
            assert isinstance(space, ChoiceSweep) and set(space.list) <= set(choices(key)), key
            continue
        # A key of a group the preset also chooses is checked in each choice (every optimizer's learning_rate).
        group = key.split(".")[0]
        configs = [composed(f"{group}={c}") for c in spaces[group].list] if group in spaces else [composed()]
        for cfg in configs:
            accepts = parse_spec(declared_range(cfg, key))
            values = [space.start, space.end] if isinstance(space, IntervalSweep) else space.list
            assert all(accepts(v) for v in values), (key, values, declared_range(cfg, key))


@pytest.mark.parametrize("name, group", [("activation", "activation"), ("initializer", "initializer"),
                                         ("optimizer", "optimizer"), ("combined", "activation"),
                                         ("combined", "initializer"), ("combined", "optimizer")])
def test_a_preset_that_chooses_a_group_offers_every_file_of_it(name, group):
    # conf/<group>/ is the catalogue: a new choice joins the search, or this test names the preset to add it to.
    assert sorted(search_space(name)[group].list) == choices(group)


def test_the_learning_rate_is_searched_on_a_log_scale_over_three_decades():
    space = search_space("learning_rate")["optimizer.learning_rate"]
    assert isinstance(space, IntervalSweep) and "log" in space.tags
    assert (space.start, space.end) == (1e-4, 1e-1)


class _FailingStudy:
    """Stands in for the plugin's sweeper: its study ends as optuna's does."""

    def __init__(self, error: Exception, sweep_dir):
        self.error = error
        self.sweeper = SimpleNamespace(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))

    def sweep(self, arguments):
        raise self.error


class _Search(OptunaSearch, _FailingStudy):
    pass


def failing_search(error: Exception, sweep_dir) -> _Search:
    """The runner's sweep over a failing study; made without OptunaSearch.__init__, which only quiets optuna's
    logger (importing optuna, seconds on a busy machine)."""
    search = _Search.__new__(_Search)
    _FailingStudy.__init__(search, error, sweep_dir)
    return search


def test_a_study_whose_every_trial_failed_records_no_best_parameters_and_ends(tmp_path):
    failing_search(ValueError("No trials are completed yet."), tmp_path).sweep([])
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / RESULTS_FILE)) == {
        "name": "optuna", "best_params": None, "best_value": None}


def test_any_other_error_of_a_study_is_raised(tmp_path):
    with pytest.raises(ValueError, match="GridSampler"):
        failing_search(ValueError("GridSampler only supports discrete distributions."), tmp_path).sweep([])
    assert not any(tmp_path.iterdir())


# check_search: what the plugin would find only once the sweep had started, refused in one line before.

def searching(*overrides: str, **params: str):
    """The learning-rate preset's composed config (with Hydra's node), its search space added to or replaced."""
    cfg = compose_config("hparams_search=learning_rate", *overrides, hydra=True)
    with open_dict(cfg):
        cfg.hydra.sweeper.params.update({key.replace("__", "."): value for key, value in params.items()})
    return cfg


REFUSED_SEARCHES = [
    # (config, command-line overrides, words the one line must contain)
    (lambda: searching("hydra.sweeper.n_trials=0"), [], ["hydra.sweeper.n_trials", "an integer >= 1", "got 0"]),
    (lambda: searching("hydra.sweeper.n_jobs=0"), [], ["hydra.sweeper.n_jobs", "an integer >= 1"]),
    (lambda: searching(optimizer__learning_rate="tag(log, interval(1e-1, 1e-4))"), [],
     ["hydra.sweeper.params.optimizer.learning_rate", "low 0.1 is above high 0.0001", "low <= high"]),
    (lambda: searching(optimizer__learning_rate="interval(a, 0.1)"), [],
     ["hydra.sweeper.params.optimizer.learning_rate", "cannot parse 'interval(a, 0.1)'", "valid"]),
    (lambda: searching(optimizer__learning_rate="interval(1e-4, inf)"), [], ["finite numbers"]),
    (lambda: searching(optimizer__learning_rate="tag(log, interval(0, 0.1))"), [], ["log scale", "low > 0"]),
    (lambda: searching(trainer__batch_size="range(64, 16)"), [], ["trainer.batch_size", "start 64 is above stop 16"]),
    (lambda: searching(), ["model.width=int(interval(256, 16))"], ["model.width", "low 256 is above high 16"]),
    (lambda: searching("dataset.val_fraction=0"), [],
     ["hydra.sweeper", "best validation accuracy", "dataset.val_fraction=0", "valid"]),
]


@pytest.mark.parametrize("case", range(len(REFUSED_SEARCHES)))
def test_a_search_optuna_cannot_run_is_one_line_before_anything_runs(case):
    make, overrides, words = REFUSED_SEARCHES[case]
    with pytest.raises(UserError) as refused:
        check_search(make(), overrides)
    line = str(refused.value)
    assert "\n" not in line
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_and_a_command_line_search_pass(name):
    check_search(compose_config(f"hparams_search={name}", hydra=True),
                 ["model.width=int(interval(16, 256))", "optimizer=sgd,adam", "hydra.sweeper.n_trials=3"])


def test_a_config_without_optuna_is_not_checked():
    check_search(compose_config(hydra=True), ["model.width=interval(5, 1)"])  # the basic sweeper: not Optuna's
