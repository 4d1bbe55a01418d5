"""What preflight answers a key the chosen config lacks: what to type instead (runner/cli/preflight.py)."""

from __future__ import annotations

import pytest

from hydra.types import RunMode

from runner.cli.preflight import preflight
from runner.errors import UserError


@pytest.mark.parametrize("args,line", [
    (["optimizer=sgd", "optimizer.momentum=0.9"],
     "optimizer.momentum: optimizer=sgd does not set it; it is an optional argument there: "
     "add it with +optimizer.momentum=0.9"),
    (["optimizer.momentum=0.9"],
     "optimizer.momentum: optimizer=adam has no momentum; optimizer=momentum, optimizer=nesterov set it: choose one"),
    (["schedule.decay_every=5"], "schedule.decay_every: schedule=constant has no decay_every; schedule=exponential"),
    (["schedule.rate=5"], "schedule.rate: no such key; schedule=constant takes no settings"),
    (["trainer.epoch=3"], "trainer.epoch: no such key; did you mean epochs?; valid keys under trainer: "),
    (["model.depht=3"], "model.depht: no such key; did you mean depth?; valid keys under model: channels, depth"),
])
def test_a_key_the_choice_lacks_is_answered_with_what_to_type(args, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        preflight(args)
    assert str(refused.value).startswith(line), refused.value
    assert not any(tmp_path.iterdir())


def test_the_suggested_plus_form_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preflight(["optimizer=sgd", "+optimizer.momentum=0.9", f"hydra.run.dir={tmp_path / 'run'}"])


def test_a_conf_file_of_ones_own_without_declared_ranges_gets_one_warning_per_parameter(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "optimizer").mkdir(parents=True)
    (tmp_path / "mine" / "optimizer" / "lion.yaml").write_text("_target_: optax.lion\nlearning_rate: 0.001\n"
                                                               "b1: 0.9\n_valid_: {b1: '[0, 1)'}\n")
    preflight(["-cd", "mine", "-m", "optimizer=lion", "trainer.seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"])
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: optimizer.learning_rate has no declared range")


def test_every_built_in_choice_declares_every_parameters_range():
    from omegaconf import OmegaConf

    from runner.config.checks import unchecked_parameters
    from runner.config.compose import CONF_DIR

    for path in sorted(CONF_DIR.glob("*/*.yaml")):  # each choice's own node, as its conf file writes it
        if path.parent.name not in ("experiment", "hparams_search"):
            assert unchecked_parameters(OmegaConf.load(path)) == [], path


def test_an_undeclared_parameter_of_a_callable_is_found_at_any_depth():
    from omegaconf import OmegaConf

    from runner.config.checks import unchecked_parameters

    node = OmegaConf.create({"layer": {"_target_": "f", "a": 1, "b": 2, "_valid_": {"a": "> 0"}}, "plain": {"c": 3}})
    assert unchecked_parameters(node) == ["layer.b"]


@pytest.mark.parametrize("args", [["trainer.epochs=2"], ["trainer.epochs=-1"], ["optimizer=nope"],
                                  ["-m", "activation=relu,elu"]], ids=" ".join)
def test_the_checks_before_a_run_import_no_jax(args, tmp_path):
    """A mistake, `--help` and a plain run's checks answer in well under a second: nothing before the run builds
    what JAX would (runner/cli/relations.py builds only for a run that reuses layers or has no validation split)."""
    import subprocess
    import sys

    code = ("import sys\nfrom runner.errors import UserError\nfrom runner.cli.preflight import preflight\n"
            f"try:\n    preflight({args!r})\nexcept UserError:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"



@pytest.mark.parametrize("argv", [[], ["-m", "activation=relu,elu"], ["-cd", "mine", "-cn", "sweeps"],
                                  ["-cd", "mine", "-cn", "sweeps", "-m", "trainer.seed=0,1"]])
def test_the_hydra_mode_preflight_hands_on_is_the_one_hydra_would_compose(argv, tmp_path, monkeypatch):
    # runner/__main__.py known_hydra_mode answers Hydra's get_mode with it instead of a second composition.
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    from runner.config.compose import CONF_DIR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()  # a primary config of one's own that makes every run a sweep
    (tmp_path / "mine" / "sweeps.yaml").write_text("defaults: [config, _self_]\nhydra:\n  mode: MULTIRUN\n")
    invocation = preflight(argv)
    search_path = create_config_search_path(str(CONF_DIR))
    if "-cd" in argv:  # where Hydra's --config-dir puts it
        search_path.prepend("command-line", f"file://{tmp_path / 'mine'}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2("runner", search_path)
        overrides = [a for a in invocation.argv[argv.index("-cn") + 2 if "-cn" in argv else 0:] if a != "-m"]
        composed = hydra.get_mode(config_name=argv[argv.index("-cn") + 1] if "-cn" in argv else "config",
                                  overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    assert invocation.hydra_mode == (composed,)
    assert composed == (RunMode.MULTIRUN if "-cd" in argv else None)
