"""Config is data, and nothing escapes the run dir (runner/config/safety.py): a generated table over every key of the
composed config, at every depth, with each hostile value; the path rule on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from runner.cli.preflight import preflight
from runner.config.safety import MAX_VALUE_LENGTH, check_override, check_paths_inside
from runner.errors import UserError
from tests.conftest import compose_config, compose_shared


def leaf_keys(node, prefix: str = "") -> list[str]:
    """Every key of a config that holds a value (a list counts as one), at every depth."""
    keys = []
    for name in node.keys():
        key = f"{prefix}.{name}" if prefix else str(name)
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            keys += leaf_keys(child, key)
        else:
            keys.append(key)
    return keys


KEYS = leaf_keys(compose_config(hydra=True))
HOSTILE = {
    "a callable": "{_target_: builtins.open, _args_: [precious.txt, w]}",
    "a nested callable": "[1, {a: {_partial_: true}}]",
    "an interpolation that does not resolve": "${oc.env:RUNNER_NO_SUCH_VARIABLE}",
    "5,000 characters": "a" * 5000,
}
# Hydra's keys that name paths it writes; a relative path escaping the run dir through them is refused.
WRITTEN_PATHS = ("hydra.output_subdir", "hydra.sweep.subdir")


def test_the_table_covers_every_group_and_hydras_own_keys():
    groups = {key.split(".")[0] for key in KEYS}
    assert {"dataset", "model", "optimizer", "trainer", "transfer", "hydra"} <= groups
    assert len(KEYS) > 100 and all(k in KEYS for k in WRITTEN_PATHS)


# The text rules answer before any composition, for every key at once; an interpolation needs a composition per key,
# which preflight shares (runner.config.compose.compose_shared: one composition of the defaults, each key's value
# applied as Hydra applies it).
CASES = [(what, form) for what in HOSTILE for form in ("{key}={value}", "+{key}={value}", "++{key}={value}")
         if "interpolation" not in what] + [("an interpolation that does not resolve", "{key}={value}")]


@pytest.mark.parametrize("what,form", CASES)
def test_every_key_refuses_every_hostile_value_in_one_line_naming_it(what, form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep\n")
    wrong = []
    for key in KEYS:
        override = form.format(key=key, value=HOSTILE[what])
        try:
            preflight([override] + ([] if key == "hydra.run.dir" else [f"hydra.run.dir={tmp_path / 'run'}"]))
            wrong.append(f"{override[:80]}: accepted")
        except UserError as refused:
            if key not in str(refused) or "\n" in str(refused):
                wrong.append(f"{override[:80]}: {refused}")
    assert not wrong, "\n".join(wrong)
    assert (tmp_path / "precious.txt").read_text() == "keep\n"
    assert not (tmp_path / "run").exists()


# A path with '..' is a fine value for most keys (a data dir, a run dir the user names); each key's check is a
# composition, shared by preflight (compose_shared).
@pytest.mark.parametrize("key", KEYS)
def test_a_path_out_of_the_dir_is_refused_where_hydra_writes_through_it_and_never_a_traceback(key, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [f"{key}=../../escape"] + ([] if key == "hydra.run.dir" else [f"hydra.run.dir={tmp_path / 'run'}"])
    try:
        invocation = preflight(args)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert key != "hydra.output_subdir", f"{key}=../../escape was accepted"  # (a single run has no sweep subdir)
    assert invocation.claim is not None
    assert not (tmp_path.parent.parent / "escape").exists() or key == "hydra.run.dir"


# compose_shared, with which preflight composes (the tables above among its callers), against Hydra's own compose.
@pytest.mark.parametrize("overrides", [
    ["optimizer=adam", "+optimizer.nesterov=true", "trainer.epochs=3", "hydra.run.dir=../../escape",
     "hydra.job.name=${oc.env:HOME}"],
    ["regularizer=[l2,dropout]", "regularizer.l2.strength=-1.0", "dataset=tfds", "dataset.name=kmnist",
     "model.channels=[abc]", "transfer.source=${oc.env:RUNNER_NO_SUCH_VARIABLE}"],
])
def test_a_shared_composition_is_the_one_hydra_composes(overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (Hydra's node records the working dir)
    for hydra in (False, True):
        want, got = compose_config(*overrides, hydra=hydra), compose_shared(*overrides, hydra=hydra)
        assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(want)
        assert [OmegaConf.get_type(got, k) for k in got] == [OmegaConf.get_type(want, k) for k in want]
        assert OmegaConf.is_struct(got) and OmegaConf.is_struct(want)


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "optimizer.no_such_key=1", "trainer.early_stopping=3",
                                      "hydra.job.env_set=x", "hydra.searchpath=x"])
def test_a_shared_composition_refuses_a_value_as_hydras_compose_does(override):
    with pytest.raises(Exception) as want:
        compose_config(override)
    with pytest.raises(type(want.value)) as got:
        compose_shared(override)
    assert str(got.value) == str(want.value) and type(got.value.__cause__) is type(want.value.__cause__)


@pytest.mark.parametrize("key", WRITTEN_PATHS)
def test_a_sweeps_paths_out_of_its_dir_are_refused(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="outside"):
        preflight(["-m", "optimizer=sgd,adam", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"{key}=../../escape"])


@pytest.mark.parametrize("subdir,ok", [("job", True), ("a/b", True), ("${hydra.job.num}", True), ("x/../y", True),
                                       ("..", False), ("../sibling", False), (".", False), ("/abs/dir", False),
                                       ("a/../../b", False)])
def test_a_sweeps_job_dir_must_lie_strictly_inside_the_sweep_dir(subdir, ok, tmp_path):
    cfg = compose_config("hydra.sweep.subdir=" + subdir, hydra=True)
    if ok:
        check_paths_inside(cfg, tmp_path, multirun=True)
    else:
        with pytest.raises(UserError, match="hydra.sweep.subdir"):
            check_paths_inside(cfg, tmp_path, multirun=True)


def test_a_symlink_out_of_the_run_dir_counts_as_outside(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "meta").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside"):
        check_paths_inside(compose_config("hydra.output_subdir=meta", hydra=True), tmp_path / "run", multirun=False)


@pytest.mark.parametrize("override", ["hydra.callbacks.report.plots=false", 'hydra.callbacks.report.baseline="x=1"'])
def test_a_declared_callback_key_takes_a_new_plain_value(override):
    check_override(override, compose_config(hydra=True))


@pytest.mark.parametrize("override", ["+hydra.callbacks.mine.x=1", "~hydra.callbacks.report",
                                      "hydra.callbacks.report={plots: false}", "hydra.callbacks.report.plots=[1]",
                                      "++hydra.callbacks.report.plots=false", "+hydra.callbacks.report.new=1"])
def test_callbacks_cannot_be_added_removed_or_replaced(override):
    with pytest.raises(UserError, match="callbacks"):
        check_override(override, compose_config(hydra=True))


def test_a_value_at_the_length_limit_passes_and_one_over_is_refused():
    check_override("dataset.name=" + "a" * MAX_VALUE_LENGTH)
    with pytest.raises(UserError, match="characters"):
        check_override("dataset.name=" + "a" * (MAX_VALUE_LENGTH + 1))


@pytest.mark.parametrize("value,refused", [("${oc.env:HOME}", False), ("${trainer.batch_size}", False),
                                           ("${regularizer}", True), ("${optimizer}", True)])
def test_an_interpolation_may_give_a_value_never_a_node(value, refused, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [f"+initializer.dtype={value}", f"hydra.run.dir={tmp_path / 'run'}"]
    if refused:
        with pytest.raises(UserError, match="config node"):
            preflight(args)
    else:
        preflight(args)


def test_hydra_writes_nothing_before_the_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError):
        preflight([f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=../out"])
    assert sorted(Path(tmp_path).iterdir()) == []
