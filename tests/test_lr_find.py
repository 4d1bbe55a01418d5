"""The learning-rate range test (runner/training/lr_range.py; its command line, runner/lr_find.py): its rate
sequence, smoothing, stop rule and suggestion against their definitions; the finder's optimizer applying lr_t at step t; `optimizer.learning_rate=auto` recorded in the
run dir; the command line end to end and its one-line refusals."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from runner.cli.preflight import preflight
from runner.config.checks import describe, parse_spec
from runner.config.compose import CONF_DIR
from runner.errors import UserError
from runner.lr_find import main
from runner.rundir.resumed import resumed_overrides
from runner.training.lr_range import (FinderSettings, finder_parts, lr_sequence, record_found_rate,
                                      resolve_auto_learning_rate, run_range_test, smoothed_rates, suggest,
                                      track_losses)
from runner.training.train import create_train_state, make_train_step
from tests.conftest import compose_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ema_by_hand(losses, beta):
    """Bias-corrected EMA: avg_t = beta avg_{t-1} + (1 - beta) loss_t, avg_{-1} = 0,
    smoothed_t = avg_t / (1 - beta^(t+1))."""
    avg, out = 0.0, []
    for t, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (t + 1)))
    return np.array(out)


# ---- definitions ----

def test_lr_sequence_is_geometric_from_min_lr_to_max_lr():
    lrs = lr_sequence(1e-7, 10.0, 250)
    assert len(lrs) == 250 and lrs[0] == 1e-7
    assert lrs[-1] == pytest.approx(10.0, rel=1e-12)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (10.0 / 1e-7) ** (1 / 249), rtol=1e-12)  # one constant ratio
    np.testing.assert_allclose(lrs, [1e-7 * 1e8 ** (t / 249) for t in range(250)], rtol=1e-12)


def test_smoothing_is_the_bias_corrected_exponential_moving_average():
    rng = np.random.default_rng(0)
    losses = 2.3 * np.exp(-np.arange(120) / 40) + 0.2 * rng.random(120)
    for beta in (0.0, 0.9, 0.98):
        smoothed, stop = track_losses(losses, beta, divergence_factor=1e9)
        assert int(stop) == -1
        np.testing.assert_allclose(np.asarray(smoothed), ema_by_hand(losses, beta), rtol=2e-5)


def test_stops_at_the_first_smoothed_loss_above_factor_times_the_lowest_before_it():
    # beta = 0: smoothed = loss. Lowest 0.5 (step 1); 1.9 <= 4 * 0.5; 2.1 > 2.0 stops at step 4.
    smoothed, stop = track_losses([1.0, 0.5, 0.6, 1.9, 2.1, 0.1, 0.1], beta=0.0, divergence_factor=4.0)
    assert int(stop) == 4
    np.testing.assert_allclose(np.asarray(smoothed[:5]), [1.0, 0.5, 0.6, 1.9, 2.1], rtol=1e-6)
    assert np.isnan(np.asarray(smoothed[5:])).all()  # after the stop nothing is judged, not even a lower loss


def test_stops_with_beta_where_a_numpy_transcription_of_the_rule_stops():
    losses = np.concatenate([np.linspace(2.3, 0.5, 60), 0.5 * 1.25 ** np.arange(1, 60)])
    by_hand = ema_by_hand(losses, 0.98)
    expected = next(t for t in range(1, len(losses)) if by_hand[t] > 4 * by_hand[:t].min())
    smoothed, stop = track_losses(losses, 0.98, 4.0)
    assert int(stop) == expected
    np.testing.assert_allclose(np.asarray(smoothed[: expected + 1]), by_hand[: expected + 1], rtol=2e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_the_test_at_its_step(bad):
    smoothed, stop = track_losses([2.0, 1.8, bad, 0.5], beta=0.98, divergence_factor=4.0)
    assert int(stop) == 2
    assert np.isnan(np.asarray(smoothed[3]))


def test_a_smoothed_loss_describes_the_weighted_geometric_mean_rate_of_its_window():
    lrs, beta = lr_sequence(1e-6, 1.0, 80), 0.9
    rates = smoothed_rates(lrs, beta)
    for t in range(80):
        w = beta ** np.arange(t + 1)  # the EMA's weights on steps t, t-1, ..., 0
        expected = math.exp(np.sum(w * np.log(lrs[t::-1])) / w.sum())
        assert rates[t] == pytest.approx(expected, rel=1e-10)
    assert smoothed_rates(lrs, 0.0) == pytest.approx(lrs)  # no smoothing, no lag


def test_suggestion_is_a_tenth_of_the_rate_of_the_lowest_smoothed_loss():
    rates = lr_sequence(1e-6, 1.0, 61)  # 10 per decade: rates[40] = 1e-2
    smoothed = (np.log10(rates) + 2) ** 2 + 1.0  # lowest at 1e-2
    smoothed[50:] = np.nan  # a stopped tail is ignored
    suggestion, lowest = suggest(rates, smoothed)
    assert lowest == pytest.approx(1e-2, rel=1e-12)
    assert suggestion == 1e-3
    assert suggest(rates[:3], [3.0, 2.0, 2.5])[0] == float(f"{rates[1] / 10:.3g}")  # 3 significant digits


def test_no_suggestion_when_no_smoothed_loss_is_finite():
    with pytest.raises(UserError, match="not finite at the first step"):
        suggest(np.array([1e-7]), np.array([np.nan]))


def test_the_finders_optimizer_applies_lrs_t_at_step_t():
    cfg = compose_config("optimizer=sgd", "optimizer.learning_rate=auto", "regularizer=[]", "clip=none")
    lrs = lr_sequence(1e-3, 1.0, 5)
    tx = finder_parts(cfg, num_classes=10, lrs=lrs).optimizer
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for t in range(5):
        grads = {"w": jnp.full(3, float(t + 1))}
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -lrs[t] * (t + 1), rtol=1e-6)  # plain SGD: -lr_t g


def _hand_written_range_test(cfg, x, y, lrs):
    """Each step's loss (before its update) of `make_train_step` over the run's batches, one step at a time: epoch
    e (1-based) shuffled by permutation(fold_in(data_key, e)), the last partial batch dropped, lr_t the table's."""
    parts = finder_parts(cfg, num_classes=10, lrs=lrs)
    batch = cfg.trainer.batch_size
    init_key, data_key, _ = jax.random.split(jax.random.PRNGKey(cfg.trainer.seed), 3)
    state = create_train_state(init_key, parts, jnp.asarray(x[:batch]))
    step, losses, epoch = jax.jit(make_train_step(parts)), [], 0
    while len(losses) < len(lrs):
        epoch += 1
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), len(x)))
        for indices in order[: len(x) // batch * batch].reshape(-1, batch)[: len(lrs) - len(losses)]:
            state, metrics = step(state, jnp.asarray(x[indices]), jnp.asarray(y[indices]))
            losses.append(float(metrics["loss"]))
    return np.array(losses)


@pytest.mark.parametrize("max_lr, stops", [(1e-2, False), (1e4, True)])
def test_the_finders_step_losses_are_a_hand_written_loop_of_the_train_step_and_end_at_the_stop(max_lr, stops):
    """The test runs in the run's loop (7 steps an epoch, 17 steps: 3 epochs, the last one partly); its losses are
    those of the hand-written loop with the table's rates, and where the rule stops the test, the steps the loop
    took after the stop (the rest of that epoch) are dropped."""
    cfg = compose_config("model.depth=1", "model.width=16", "trainer.batch_size=16", "regularizer=[]",
                         "optimizer=sgd", "optimizer.learning_rate=auto")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 120).astype(np.int32)
    settings = FinderSettings(min_lr=1e-3, max_lr=max_lr, steps=17, beta=0.5)
    test = run_range_test(cfg, SimpleNamespace(x_train=x, y_train=y, num_classes=10), settings)
    by_hand = _hand_written_range_test(cfg, x, y, lr_sequence(1e-3, max_lr, 17))
    smoothed, stop = track_losses(by_hand, 0.5, settings.divergence_factor)
    assert (test.stop_step is not None) == stops and (test.stop_step or -1) == int(stop)
    kept = 17 if test.stop_step is None else test.stop_step + 1
    assert len(test.losses) == len(test.smoothed) == len(test.lrs) == kept
    np.testing.assert_allclose(test.losses, by_hand[:kept], rtol=1e-5)
    np.testing.assert_allclose(test.smoothed, np.asarray(smoothed)[:kept], rtol=1e-5)


# ---- the `auto or > 0` range ----

def test_auto_or_a_positive_number_accepts_exactly_auto_and_numbers_above_zero():
    check = parse_spec("auto or > 0")
    assert all(check(v) for v in ("auto", 1e-9, 0.001, 3))
    assert not any(check(v) for v in ("Auto", "fast", "", 0, -0.1, None, math.inf, math.nan, True, ["auto"]))
    assert describe("auto or > 0") == "auto or a number > 0"


def test_every_optimizer_takes_auto_for_its_learning_rate():
    for path in sorted((CONF_DIR / "optimizer").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["_valid_"]["learning_rate"] == "auto or > 0", path.name


def test_preflight_accepts_auto_and_refuses_other_words_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preflight(["optimizer=ftrl", "optimizer.learning_rate=auto"])
    with pytest.raises(UserError) as refused:
        preflight(["optimizer.learning_rate=automatic"])
    assert str(refused.value) == "optimizer.learning_rate: must be auto or a number > 0, got 'automatic'"
    assert not any(tmp_path.iterdir())


# ---- optimizer.learning_rate=auto in a run dir ----

def _saved_run(run_dir, *overrides):
    """A run dir as Hydra leaves it before the job runs: .hydra/config.yaml and overrides.yaml."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_config(*overrides), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")


def test_the_found_rate_replaces_auto_in_the_saved_config_so_resume_recomposes_it(tmp_path):
    _saved_run(tmp_path, "optimizer=sgd", "optimizer.learning_rate=auto", "trainer.epochs=2")
    record_found_rate(tmp_path, 0.0123)
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").optimizer.learning_rate == 0.0123
    saved = list(OmegaConf.load(tmp_path / ".hydra" / "overrides.yaml"))
    assert saved == ["optimizer=sgd", "trainer.epochs=2", "optimizer.learning_rate=0.0123"]
    # What `trainer.resume=true` does with the dir: recompose the saved overrides and compare with config.yaml.
    merged = resumed_overrides(tmp_path, ["trainer.epochs=3"], lambda job: compose_config(*job))
    assert compose_config(*merged).optimizer.learning_rate == 0.0123


def test_a_config_with_a_number_is_left_as_it_is(tmp_path):
    cfg = compose_config("optimizer.learning_rate=0.01")
    assert resolve_auto_learning_rate(cfg, splits=None, run_dir=tmp_path, console=None) == (cfg, {})
    assert not any(tmp_path.iterdir())


def test_auto_trains_at_the_suggestion_and_records_it_in_the_run_dir(tmp_path, tfds_dir):
    from runner.console import Console
    from runner.data import load_data

    overrides = ("optimizer.learning_rate=auto", "model.depth=1", "model.width=16", "dataset.train_subset=256")
    _saved_run(tmp_path, *overrides)
    cfg = compose_config(*overrides)
    resolved, summary = resolve_auto_learning_rate(cfg, load_data(cfg), tmp_path, Console(live=False))
    found = json.loads((tmp_path / "lr_find.json").read_text())["suggestion"]
    assert resolved.optimizer.learning_rate == found == summary["learning_rate_found"] > 0
    assert cfg.optimizer.learning_rate == "auto"  # Hydra's config object is not changed under it
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").optimizer.learning_rate == found
    assert (tmp_path / "lr_find.png").read_bytes().startswith(PNG_SIGNATURE)


# ---- the command line ----

def test_the_command_line_writes_a_readable_png_and_the_json(cli):
    # 64 examples in batches of 32: 40 steps cycle through 20 shuffled epochs.
    overrides = ["dataset.train_subset=64", "model.depth=1", "model.width=16"]
    result = cli("--steps", "40", "--min-lr", "1e-5", "--out", "found", *overrides, module="runner.lr_find")
    assert result.returncode == 0, result.stderr
    out = cli.cwd / "found"
    png = (out / "lr_find.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 0
    import matplotlib.image

    image = matplotlib.image.imread(out / "lr_find.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    record = json.loads((out / "lr_find.json").read_text())
    steps = len(record["lrs"])
    assert steps == (40 if record["stop_step"] is None else record["stop_step"] + 1)
    np.testing.assert_allclose(record["lrs"], lr_sequence(1e-5, 10.0, 40)[:steps], rtol=1e-12)
    assert len(record["losses"]) == len(record["smoothed"]) == len(record["smoothed_lrs"]) == steps
    assert record["overrides"] == overrides and record["settings"]["steps"] == 40
    [line] = [ln for ln in result.stdout.splitlines() if "suggested learning rate" in ln]
    assert f"suggested learning rate {record['suggestion']:g} " in line
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]


def test_a_mistake_on_the_command_line_is_one_line_and_exit_code_2(cli):
    result = cli("optimizer=adamm", module="runner.lr_find")
    assert result.returncode == 2
    assert result.stderr.startswith("error: optimizer=adamm: unknown choice") and result.stderr.count("\n") == 1
    assert not any(cli.cwd.iterdir())


@pytest.mark.parametrize("argv, words", [
    (["--steps", "1"], "--steps: must be an integer >= 2, got 1"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--min-lr", "0"], "--min-lr: must be a number > 0"),
    (["--min-lr", "nan"], "--min-lr: must be a number > 0"),
    (["--min-lr", "1", "--max-lr", "0.1"], "--max-lr: must be above --min-lr"),
    (["--beta", "1"], "--beta: must be a number in [0, 1)"),
    (["--divergence-factor", "1"], "--divergence-factor: must be a number > 1"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-m", "optimizer=sgd"], "unrecognized arguments: -m"),
    (["optimizer.learning_rate=fast"], "optimizer.learning_rate: must be auto or a number > 0"),
    (["optimizer=sgd,adam"], "optimizer=sgd,adam: lr_find tests one config, not a sweep"),
    (["hydra.run.dir=x"], "hydra.run.dir=x: lr_find does not start Hydra"),
    (["optimizer._target_=optax.sgd"], "optimizer._target_: _target_ cannot be set"),
    (["trainer.batch_size=100000"], "trainer.batch_size: 100000 is larger than the training set"),
])
def test_bad_finder_input_is_refused_in_one_line_and_nothing_is_written(argv, words, tmp_path, monkeypatch, capsys,
                                                                        tfds_dir):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {words}") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_an_out_dir_that_holds_files_is_never_written_into(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: {tmp_path} already holds files") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert main(["--out", str(tmp_path / "notes.txt")]) == 2  # a file


def test_default_settings_are_the_documented_ones():
    assert FinderSettings() == FinderSettings(min_lr=1e-7, max_lr=10.0, steps=250, beta=0.98, divergence_factor=4.0)
    FinderSettings().check()
