"""Every file in conf/ composes, validates and builds into the object its group promises.

Choices are found by globbing conf/<group>/*.yaml, so a new file is tested as soon as it exists.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from runner.cli.relations import validate
from runner.config.checks import SPEC_KEY, parse_spec
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from runner.techniques.regularizers import Regularizer
from runner.techniques.schedules import Schedule
from runner.training.build import build_parts, build_model, build_regularizer, build_schedule, instantiate
from runner.training.optim import build_optimizer
from tests.conftest import compose_config, compose_shared

STEPS_PER_EPOCH = 10
# Every config group; experiment/ holds presets, composed with `+experiment=` below; hydra/ configures Hydra.
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra"))
# Groups whose files need one value the user must supply (their YAML comments say so).
REQUIRED = {("dataset", "tfds"): ("dataset.name=kmnist",), ("dataset", "npz"): ("dataset.path=/data/my.npz",)}


def choices(group: str) -> list[str]:
    """The choices of a config group: its YAML files (schema files live in the ConfigStore, not here)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Groups chosen as a list (regularizer=[l2,dropout], logger=[jsonl,csv]), from the defaults list.
LIST_GROUPS = {group for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
               if isinstance(entry, dict) for group, choice in entry.items() if isinstance(choice, list)}


def select(group: str, name: str) -> str:
    """The override that selects one choice: `group=[name]` for a list group."""
    return f"{group}=[{name}]" if group in LIST_GROUPS else f"{group}={name}"


def group_cases(*groups: str) -> list:
    return [pytest.param(g, n, id=f"{g}={n}") for g in groups for n in choices(g)]


def _compose(group: str, name: str, *overrides: str):
    """compose_config's config, by compose_shared: each choice composed once for the module's tests, the values
    (`model.depth=2`) applied to a copy."""
    return compose_shared(select(group, name), *REQUIRED.get((group, name), ()), *overrides)


def _run_model(model, shape=(4, 8, 8, 1)):
    """The model initialized and applied in training mode on a small batch: (variables, logits)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    variables = model.init(rngs, x, train=False)
    logits, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                            mutable=["batch_stats"])
    return variables, logits


def _init_model(cfg):
    return _run_model(build_model(cfg, num_classes=10, regularizer=build_regularizer(cfg)))


PARAMS = {"dense": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.zeros(2)}}
GRADS = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2) / 6 - 0.4, "bias": jnp.array([0.3, -0.2])}}


def test_every_group_of_the_defaults_list_has_a_choice():
    assert {"dataset", "model", "initializer", "activation", "normalization", "regularizer", "optimizer",
            "schedule", "trainer"} <= set(GROUPS)
    for group in GROUPS:
        assert choices(group), f"conf/{group}/ has no YAML file"


@pytest.mark.parametrize("group, name", group_cases(*GROUPS))
def test_every_choice_composes_and_passes_validation(group, name):
    cfg = _compose(group, name)
    validate(cfg)
    if group in LIST_GROUPS:
        assert list(cfg[group]) == [name]  # the `# @package <group>.<name>` line puts it under its name
    elif group == "dataset" and (group, name) not in REQUIRED:
        assert cfg[group].name == name


@pytest.mark.parametrize("group, name", group_cases("initializer"))
def test_every_initializer_makes_arrays_of_the_requested_shape(group, name):
    init = instantiate(_compose(group, name).initializer, "initializer")
    w = init(jax.random.PRNGKey(0), (30, 20), jnp.float32)
    assert w.shape == (30, 20) and w.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(w))) and float(jnp.std(w)) > 0


@pytest.mark.parametrize("group, name", group_cases("activation", "normalization", "model"))
def test_every_activation_normalization_and_model_builds_and_runs(group, name):
    variables, logits = _init_model(_compose(group, name, "model.depth=2", "model.width=16"))
    assert logits.shape == (4, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    if group == "normalization":
        has_norm = any("norm" in block for block in variables["params"].values() if isinstance(block, dict))
        assert has_norm == (_compose(group, name).normalization.layer is not None)


@pytest.mark.parametrize("group, name", group_cases("regularizer"))
def test_every_regularizer_builds_a_regularizer_record(group, name):
    regularizer = build_regularizer(_compose(group, name))
    assert isinstance(regularizer, Regularizer)
    hooks = [hook for hook in regularizer if hook is not None]
    assert (not hooks) == (name == "none"), "only regularizer=none may plug no hook into the step"


@pytest.mark.parametrize("group, name", group_cases("optimizer"))
def test_every_optimizer_builds_a_chain_that_updates_params(group, name):
    cfg = _compose(group, name)
    optimizer = build_optimizer(cfg.optimizer, build_schedule(cfg, STEPS_PER_EPOCH))
    assert isinstance(optimizer, optax.GradientTransformation)
    state = optimizer.init(PARAMS)
    params = PARAMS
    for _ in range(2):
        updates, state = jax.jit(optimizer.update)(GRADS, state, params)
        params = optax.apply_updates(params, updates)
    leaves = jax.tree.leaves(params)
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in leaves)
    assert any(not np.allclose(p, q) for p, q in zip(leaves, jax.tree.leaves(PARAMS)))


@pytest.mark.parametrize("group, name", group_cases("schedule"))
def test_every_schedule_gives_a_finite_rate_from_first_to_last_step(group, name):
    cfg = _compose(group, name, "trainer.epochs=20")
    schedule = build_schedule(cfg, STEPS_PER_EPOCH)
    assert isinstance(schedule, Schedule)
    total = STEPS_PER_EPOCH * 20
    for step in (0, 1, total // 2, total):
        lr = float(schedule.learning_rate_at(jnp.asarray(step)))
        assert math.isfinite(lr) and lr >= 0, f"lr({step}) = {lr}"
        if schedule.momentum_at is not None:
            assert 0 <= float(schedule.momentum_at(jnp.asarray(step))) < 1
    assert float(schedule.learning_rate_at(jnp.asarray(total // 2))) > 0
    if schedule.plateau is not None:
        _, state = schedule.plateau.update(None, schedule.plateau.init(PARAMS), value=1.0)
        assert float(state.scale) == 1.0


@pytest.mark.parametrize("overrides", [
    ("schedule=one_cycle", "schedule.warmup_fraction=0.8", "schedule.final_fraction=0.5"),
], ids=["one_cycle_knots"])
def test_a_bad_value_found_while_building_is_a_user_error(overrides):
    # validate() cannot see these; the factory raises UserError, and building must let it through unwrapped
    # so that `python -m runner` prints one line and exits 2. (Piecewise lengths are a relation validate checks:
    # tests/test_relations.py.)
    cfg = compose_config(*overrides)
    validate(cfg)
    with pytest.raises(UserError):
        build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH)


def _callable_nodes(node, where):
    """(where, node) for every mapping in a conf file that names a callable or declares ranges."""
    if isinstance(node, dict):
        if "_target_" in node or SPEC_KEY in node:
            yield where, node
        for key, child in node.items():
            if isinstance(child, dict) and key != SPEC_KEY:
                yield from _callable_nodes(child, f"{where}.{key}")


CONF_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml")  # launchers and sweepers: typed by the plugins' own schemas
                    if not {"experiment", "hydra"} & set(p.relative_to(CONF_DIR).parts) and p.parent != CONF_DIR)


@pytest.mark.parametrize("path", CONF_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in CONF_FILES])
def test_every_parameter_declares_a_valid_range_that_its_default_satisfies(path):
    # The rule behind the pre-run check: no parameter of a conf file goes unchecked.
    for where, node in _callable_nodes(yaml.safe_load(path.read_text()) or {}, path.stem):
        specs = node.get(SPEC_KEY) or {}
        for key, value in node.items():
            if key.startswith("_") or (isinstance(value, dict) and "_target_" not in value):
                continue
            assert key in specs, f"{where}.{key} has no range under {SPEC_KEY}"
        for key, spec in specs.items():
            accepts = parse_spec(spec)
            if key in node:
                assert accepts(node[key]), f"{where}.{key}: default {node[key]!r} outside {spec!r}"


# Presets in conf/experiment/.

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_the_chapters_presets_exist():
    assert {"practical_defaults", "sparse", "fast"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_builds(name):
    cfg = compose_shared(f"+experiment={name}")
    validate(cfg)
    parts = build_parts(cfg, num_classes=10, steps_per_epoch=STEPS_PER_EPOCH)
    variables, logits = _run_model(parts.model)
    assert bool(jnp.all(jnp.isfinite(logits)))
    optimizer = parts.optimizer

    @jax.jit  # one program: op by op, the chain's few ops on each of a deep net's leaves cost seconds
    def first_update(params):
        return optimizer.update(jax.tree.map(jnp.ones_like, params), optimizer.init(params), params)[0]

    updates = first_update(variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_experiment_files_start_with_the_global_package_and_a_run_me_comment():
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path.name
        assert lines[1].startswith("# to run this: python -m runner "), path.name
        assert f"+experiment={path.stem}" in lines[1].split(), path.name


def test_practical_defaults_is_the_chapters_default_table():
    cfg = compose_shared("+experiment=practical_defaults")
    assert cfg.initializer._target_ == "jax.nn.initializers.he_normal"
    assert cfg.activation._target_ == "jax.nn.elu"
    assert cfg.normalization.layer._target_ == "flax.linen.BatchNorm"
    assert list(cfg.regularizer) == ["dropout"]
    assert cfg.optimizer._target_ == "optax.adam"
    assert cfg.schedule._target_ == "runner.techniques.schedules.constant"


def test_sparse_selects_ftrl_with_l1_and_the_l1_penalty_without_normalization_or_dropout():
    cfg = compose_shared("+experiment=sparse")
    assert cfg.optimizer._target_ == "runner.techniques.optimizers.ftrl"
    assert cfg.optimizer.l1 > 0
    assert list(cfg.regularizer) == ["l1"] and cfg.regularizer.l1.strength > 0
    assert cfg.normalization.layer is None
    regularizer = build_regularizer(cfg)
    assert regularizer.hidden_dropout is None and regularizer.input_dropout is None


def test_fast_selects_leaky_relu_he_normal_and_adam_without_normalization():
    cfg = compose_shared("+experiment=fast")
    assert cfg.activation._target_ == "jax.nn.leaky_relu"
    assert cfg.normalization.layer is None
    assert cfg.initializer._target_ == "jax.nn.initializers.he_normal"
    assert cfg.optimizer._target_ == "optax.adam"
    variables, _ = _init_model(cfg)
    assert "batch_stats" not in variables


def test_an_experiment_is_overridden_by_the_command_line():
    cfg = compose_config("+experiment=sparse", "optimizer.l1=0.5", "normalization=layer_norm")
    assert cfg.optimizer.l1 == 0.5
    assert cfg.normalization.layer._target_ == "flax.linen.LayerNorm"
