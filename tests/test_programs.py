"""Runs of one process whose configs differ only in the seed share their parts and compiled programs
(runner/training/programs.py: a sweep's later seeds trace and compile nothing), and each is bit for bit the run of
its seed in a fresh process."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from runner.console import Console
from runner.training import programs
from tests.conftest import compose_config, read_metrics, read_summary

# Two stages (the lowest layer frozen for the first epoch): a stage change's chain and program are shared too.
SMALL = ("model.depth=2", "model.width=16", "trainer.epochs=2", "stages=freeze_lower", "stages.frozen_epochs=1")
TIMES = ("epoch_time_s", "wall_time_s", "compile_time_s", "train_examples_per_s")


@pytest.fixture
def built(monkeypatch) -> dict[str, int]:
    """How many epoch programs, init programs and evaluation programs the runs build."""
    import runner.cli.run as run
    import runner.training.evaluate as evaluate
    import runner.training.loop as loop

    counts = {"epoch": 0, "init": 0, "evaluate": 0}

    def counting(name, make):
        def made(*args, **kwargs):
            counts[name] += 1
            return make(*args, **kwargs)
        return made

    monkeypatch.setattr(loop, "StageProgram", counting("epoch", loop.StageProgram))
    monkeypatch.setattr(run, "init_program", counting("init", run.init_program))
    monkeypatch.setattr(evaluate, "make_evaluate", counting("evaluate", evaluate.make_evaluate))
    return counts


def _train(run_dir, *overrides):
    from runner.cli.run import train_and_evaluate

    return train_and_evaluate(compose_config(*SMALL, *overrides), run_dir, Console(live=False))


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


def test_a_later_seed_builds_no_program_and_is_its_run_alone_bit_for_bit(tmp_path, tfds_dir, built):
    _train(tmp_path / "seed0", "trainer.seed=0")
    first = dict(built)
    assert first == {"epoch": 2, "init": 1, "evaluate": 2}  # a program per stage; validation's and the test's
    _train(tmp_path / "seed1", "trainer.seed=1")
    assert built == first  # nothing traced, lowered or compiled again
    programs.forget()  # as a fresh process: builds every program
    _train(tmp_path / "alone", "trainer.seed=1")
    assert built == {k: 2 * v for k, v in first.items()}
    assert _without_times(read_metrics(tmp_path / "seed1")) == _without_times(read_metrics(tmp_path / "alone"))
    shared, alone = read_summary(tmp_path / "seed1"), read_summary(tmp_path / "alone")
    assert {k: v for k, v in shared.items() if k not in TIMES} == {k: v for k, v in alone.items() if k not in TIMES}
    assert read_metrics(tmp_path / "seed0") != read_metrics(tmp_path / "seed1")  # the seed did reach the run


def test_a_config_that_differs_in_more_than_the_seed_builds_its_own(tmp_path, tfds_dir, built):
    _train(tmp_path / "elu", "trainer.seed=0")
    first = dict(built)
    _train(tmp_path / "selu", "trainer.seed=1", "activation=selu")
    assert built == {k: 2 * v for k, v in first.items()}


def test_the_last_kept_configs_parts_are_shared_and_older_ones_built_again():
    made = []

    def build(key):
        return lambda: made.append(key) or object()

    first = programs.shared_parts("a", build("a"))
    for key in range(programs.KEPT - 1):
        programs.shared_parts(key, build(key))
    assert programs.shared_parts("a", build("a")) is first and made.count("a") == 1  # still among the last KEPT
    programs.shared_parts("new", build("new"))
    programs.shared_parts(0, build(0))  # pushes out the least recently used: 1, not "a"
    assert programs.shared_parts("a", build("a")) is first
    programs.shared_parts(1, build(1))
    assert made.count(1) == 2


def test_kept_programs_belong_to_their_parts_and_parts_built_elsewhere_keep_none():
    parts = programs.shared_parts("config", lambda: object())
    assert programs.compiled(parts, "p", lambda: ["built"]) is programs.compiled(parts, "p", lambda: ["again"])
    assert programs.compiled(parts, "q", lambda: ["other"]) == ["other"]
    elsewhere = object()
    assert programs.compiled(elsewhere, "p", lambda: ["fresh"]) == ["fresh"]
    assert programs.compiled(elsewhere, "p", lambda: ["fresher"]) == ["fresher"]


def test_the_signature_tells_apart_what_a_compiled_program_fixes():
    x = jnp.zeros((4, 3), jnp.float32)
    assert programs.signature({"w": x}) == programs.signature({"w": jnp.ones((4, 3), jnp.float32)})  # values: args
    for other in ({"w": jnp.zeros((5, 3), jnp.float32)},  # shape
                  {"w": jnp.zeros((4, 3), jnp.int32)},  # dtype
                  {"v": x},  # tree structure
                  {"w": x, "b": x},
                  {"w": jnp.zeros((4, 3), jnp.float32)[None]}):
        assert programs.signature(other) != programs.signature({"w": x}), other
    # a Python float is weakly typed: another program than a float32 array's
    assert programs.signature(jnp.asarray(1.0)) != programs.signature(jnp.asarray(1.0, jnp.float32))
