"""Every file the runner reads, each malformed every way it can be: one line naming the file and what is wrong.

The table is every kind of file (a run dir's summary.json, metrics.jsonl, .hydra/config.yaml, .hydra/overrides.yaml,
input_scaling.json and model.safetensors, read to resume a run or to reuse its net; a user's .npz, IDX and -cd conf
files) times every malformation (empty, cut off, the wrong type, the wrong shape, not text). Each row is checked
where the file is read, in this process (the command line prints a UserError as its one line and exits 2,
tests/cli/test_bad_input.py); the few rows that need the real command line run it. A run's own model.safetensors,
given by itself, transfers as its run dir does. A torn checkpoint falls back to an older one in one line, or ends
in one.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.cli.preflight import Composer, preflight
from runner.data.idx import read_idx
from runner.data.npz import read_npz
from runner.errors import UserError
from runner.net import weights
from runner.reuse.transfer import graft, read_source, reused_layers
from runner.rundir.records import read_metrics, read_summary
from runner.training.checkpoint import Checkpoints
from tests.conftest import Runner, snapshot

TINY = ("model.depth=2", "model.width=8", "trainer.epochs=1", "trainer.checkpoint_every=1", "dataset.train_subset=64")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir) -> Path:
    """A finished run dir: a 2-layer net with batch norm (blocks with running statistics), one checkpoint."""
    runner = Runner(tmp_path_factory.mktemp("trained"), tfds_dir)
    result = runner(*TINY, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    return runner.cwd / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(".runner.lock")))


def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.numpy import save

    return save(tensors)


def _idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, type_code, array.ndim, *array.shape) + array.tobytes()


def _npz(path: Path, **changes) -> None:
    arrays = {"x_train": np.zeros((20, 4, 4), np.uint8), "y_train": np.arange(20) % 3,
              "x_test": np.zeros((5, 4, 4), np.uint8), "y_test": np.arange(5) % 3}
    np.savez(path, **{**arrays, **changes})


def _cut(path: Path) -> None:
    """The file as a full disk or a copy cut short leaves it: its first half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each reader, as the runner calls it on the file at `path` (in run dir `run` where it is one of a run's files).
def _resume(run: Path, path: Path) -> None:
    preflight(["trainer.resume=true", f"hydra.run.dir={run}"])


def _transfer(run: Path, path: Path) -> None:
    read_source(OmegaConf.create({"source": str(run), "layout": "flax"}))


def _transfer_file(run: Path, path: Path) -> None:
    read_source(OmegaConf.create({"source": str(path), "layout": "flax"}))


# (file in the run dir, malformation) -> (how to malform it, the reader, words the one line must hold)
RUN_FILES = {
    ("summary.json", "empty"): (lambda p: p.write_text(""), lambda r, p: read_summary(p), ["empty"]),
    ("summary.json", "cut off"): (_cut, lambda r, p: read_summary(p), ["not JSON"]),
    ("summary.json", "wrong type"): (lambda p: p.write_text("[1, 2]"), lambda r, p: read_summary(p),
                                     ["a list, not a JSON object"]),
    ("summary.json", "not text"): (lambda p: p.write_bytes(b"\xff\xfe{"), lambda r, p: read_summary(p), ["not text"]),
    ("metrics.jsonl", "cut off"): (_cut, lambda r, p: read_metrics(p), ["line 1", "cut off"]),
    ("metrics.jsonl", "wrong type"): (lambda p: p.write_text('"epoch 1"\n'), lambda r, p: read_metrics(p),
                                      ["line 1", "a string"]),
    ("metrics.jsonl", "wrong shape"): (lambda p: p.write_text('{"epoch": 1, "val_loss": [1]}\n'),
                                       lambda r, p: read_metrics(p), ["line 1", "a list for val_loss"]),
    (".hydra/config.yaml", "empty"): (lambda p: p.write_text(""), _resume, ["empty", "valid"]),
    (".hydra/config.yaml", "cut off"): (lambda p: p.write_text("dataset: {name: dig"), _resume, ["not YAML", "line 1"]),
    (".hydra/config.yaml", "wrong type"): (lambda p: p.write_text("- 1\n- 2\n"), _resume, ["holds a list"]),
    (".hydra/config.yaml", "not text"): (lambda p: p.write_bytes(b"\xff\xfe\x00"), _resume, ["not text"]),
    (".hydra/config.yaml", "wrong shape"): (lambda p: p.write_text("trainer: {epochs: 1}\n"), _transfer,
                                            ["has no model node"]),
    (".hydra/config.yaml", "cut off (transfer)"): (lambda p: p.write_text("model: [dense"), _transfer, ["not YAML"]),
    (".hydra/overrides.yaml", "empty"): (lambda p: p.write_text(""), _resume, ["empty", "[] for none"]),
    (".hydra/overrides.yaml", "cut off"): (lambda p: p.write_text("- model.depth=2\n- 'model.wi"), _resume,
                                           ["not YAML"]),
    (".hydra/overrides.yaml", "wrong type"): (lambda p: p.write_text("model.depth: 2\n"), _resume,
                                              ["holds a mapping, not a list of overrides"]),
    (".hydra/overrides.yaml", "wrong shape"): (lambda p: p.write_text("- 2\n"), _resume,
                                               ["entry 1 (2) is not an override"]),
    (".hydra/overrides.yaml", "a choice no longer there"): (lambda p: p.write_text("- optimizer=gone\n"), _resume,
                                                           ["optimizer=gone: unknown choice", "adam"]),
    ("input_scaling.json", "empty"): (lambda p: p.write_text(""), _transfer, ["empty", "valid"]),
    ("input_scaling.json", "cut off"): (_cut, _transfer, ["not JSON"]),
    ("input_scaling.json", "wrong type"): (lambda p: p.write_text('{"mean": "0", "std": [1]}'), _transfer,
                                           ["its mean is a string"]),
    ("input_scaling.json", "wrong shape"): (lambda p: p.write_text('{"mean": [0, 0], "std": [1]}'), _transfer,
                                            ["2 means but 1 stds"]),
    ("input_scaling.json", "not finite"): (lambda p: p.write_text('{"mean": [NaN], "std": [1]}'), _transfer,
                                           ["not a finite number"]),
    ("model.safetensors", "empty"): (lambda p: p.write_text(""), _transfer, ["not a readable safetensors file"]),
    ("model.safetensors", "cut off"): (_cut, _transfer, ["not a readable safetensors file"]),
    ("model.safetensors", "wrong type"): (lambda p: p.write_bytes(b"PK\x03\x04 an npz"), _transfer,
                                          ["not a readable safetensors file"]),
    ("model.safetensors", "no tensors"): (lambda p: p.write_bytes(_safetensors_bytes({})), _transfer,
                                          ["holds no tensors"]),
    ("model.safetensors", "wrong shape"): (
        lambda p: p.write_bytes(_safetensors_bytes({**weights.load(p), "dense_0.bias": np.zeros(3, np.float32)})),
        _transfer, ["dense_0.kernel has shape (64, 8) but its bias (3,)"]),
    ("model.safetensors", "wrong shape (given by itself)"): (
        lambda p: p.write_bytes(_safetensors_bytes({**weights.load(p), "dense_0.bias": np.zeros(3, np.float32)})),
        _transfer_file, ["dense_0.kernel has shape (64, 8) but its bias (3,)"]),
    ("model.safetensors", "no head"): (
        lambda p: p.write_bytes(_safetensors_bytes({k: v for k, v in weights.load(p).items() if k != "head.bias"})),
        _transfer, ["has no head.bias"]),
    ("model.safetensors", "wrong dtype"): (
        lambda p: p.write_bytes(_safetensors_bytes({**weights.load(p), "head.bias": np.zeros(10, np.int32)})),
        _transfer, ["head.bias has dtype int32"]),
}


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
@pytest.mark.parametrize("name,malformation", RUN_FILES, ids=[" ".join(k) for k in RUN_FILES])
def test_a_malformed_file_of_a_run_dir_is_one_line_naming_it(trained, tmp_path, name, malformation):
    malform, read, words = RUN_FILES[name, malformation]
    run = _copy(trained, tmp_path)
    path = run / name
    malform(path)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as refused:
        read(run, path)
    line = str(refused.value)
    assert "\n" not in line and str(path) in line, line
    for word in words:
        assert word in line, (word, line)
    assert snapshot(tmp_path) == before  # read, never written


# A user's data file (dataset=npz, dataset=idx), malformed: (how to write it, the reader, words)
DATA_FILES = {
    ("npz", "empty"): (lambda p: p.write_bytes(b""), read_npz, ["empty"]),
    ("npz", "cut off"): (lambda p: (_npz(p), _cut(p)), read_npz, ["not a readable .npz"]),
    ("npz", "wrong type"): (lambda p: p.write_bytes(np.lib.format.magic(1, 0) + b"..."), read_npz,
                            ["not a readable .npz"]),
    ("npz", "wrong shape"): (lambda p: _npz(p, y_train=np.zeros((20, 2), int)), read_npz,
                             ["y_train has shape (20, 2)"]),
    ("npz", "damaged member"): (lambda p: p.write_bytes(_damaged_npz(p)), read_npz, ["x_train", "CRC"]),
    ("idx", "empty"): (lambda p: p.write_bytes(b""), lambda p: read_idx(str(p), 1), ["is empty"]),
    ("idx", "cut off"): (lambda p: p.write_bytes(_idx(np.arange(10, dtype=np.uint8))[:-3]),
                         lambda p: read_idx(str(p), 1), ["truncated"]),
    ("idx", "wrong type"): (lambda p: p.write_bytes(_idx(np.zeros(3, np.float32), 0x0D)),
                            lambda p: read_idx(str(p), 1), ["float32"]),
    ("idx", "wrong shape"): (lambda p: p.write_bytes(_idx(np.zeros((2, 2, 2), np.uint8))),
                             lambda p: read_idx(str(p), 1), ["3 axes"]),
    ("idx", "damaged gzip"): (lambda p: p.write_bytes(gzip.compress(_idx(np.zeros(9, np.uint8)))[:-6]),
                              lambda p: read_idx(str(p), 1), ["damaged gzip"]),
}


def _damaged_npz(path: Path) -> bytes:
    """A compressed .npz with one byte of x_train's data flipped: its zip member fails its CRC."""
    np.savez_compressed(path, x_train=np.arange(4000, dtype=np.int32).reshape(1000, 4), y_train=np.arange(1000) % 2,
                        x_test=np.zeros((5, 4)), y_test=np.arange(5) % 2)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("kind,malformation", DATA_FILES, ids=[" ".join(k) for k in DATA_FILES])
def test_a_malformed_data_file_is_one_line_naming_it(tmp_path, kind, malformation):
    write, read, words = DATA_FILES[kind, malformation]
    path = tmp_path / f"data.{kind}"
    write(path)
    with pytest.raises(UserError) as refused:
        read(path)
    line = str(refused.value)
    assert "\n" not in line and str(path) in line, line
    for word in words:
        assert word in line, (word, line)


# A conf file of the user's under -cd DIR: (file, what it holds, words); every one is read before anything runs.
CONF_FILES = {
    ("optimizer/mine.yaml", "empty"): ("", ["empty", "_target_", "conf/optimizer/"]),
    ("optimizer/mine.yaml", "cut off"): ("_target_: optax.sgd\nlearning_rate: [0.1", ["not YAML", "line 2"]),
    ("optimizer/mine.yaml", "wrong type"): ("- optax.sgd\n- 0.1\n", ["holds a list, not a mapping"]),
    ("optimizer/mine.yaml", "wrong shape"): ("learning_rate: 0.1\n", ["names no callable (no _target_)"]),
    ("optimizer/mine.yaml", "not text"): (b"\xff\xfe_target_", ["not text"]),
    ("experiment/mine.yaml", "cut off"): ("# @package _global_\ntrainer: {epochs: 3", ["not YAML"]),
    ("config.yaml", "cut off"): ("defaults:\n  - optimizer: [adam\n", ["not YAML"]),
    ("config.yaml", "another primary config"): ("defaults:\n  - optimizer: sgd\n",
                                                ["not read", "silently ignored", "+experiment=NAME"]),
}


@pytest.mark.parametrize("name,malformation", CONF_FILES, ids=[" ".join(k) for k in CONF_FILES])
def test_a_malformed_conf_file_under_cd_is_one_line_naming_it(tmp_path, name, malformation):
    text, words = CONF_FILES[name, malformation]
    path = tmp_path / "conf" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as refused:
        Composer("config", str(tmp_path / "conf"))
    line = str(refused.value)
    assert "\n" not in line and str(path) in line, line
    for word in words:
        assert word in line, (word, line)


def test_a_conf_dir_holding_a_copy_of_the_primary_config_and_good_choices_is_accepted(tmp_path):
    from runner.config.compose import CONF_DIR

    (tmp_path / "optimizer").mkdir()
    shutil.copy(CONF_DIR / "config.yaml", tmp_path / "config.yaml")  # `cp -r conf mine`: changes nothing
    (tmp_path / "optimizer" / "tuned.yaml").write_text("defaults: [adam]\nlearning_rate: 0.01\n")
    composer = Composer("config", str(tmp_path))
    assert composer(["optimizer=tuned"]).optimizer.learning_rate == 0.01


# Every group's unknown choice is the same line with the valid choices: a list group, a `+` choice, a group the
# defaults list does not hold, a choice of the user's own dir among them.
@pytest.mark.parametrize("override,line", [
    ("logger=[nosuch]", "logger=nosuch: unknown choice; valid: csv, jsonl, mine, mlflow, tensorboard"),
    ("logger=[jsonl,nosuch]", "logger=nosuch: unknown choice; valid: csv, jsonl, mine, mlflow, tensorboard"),
    ("regularizer=[l2,nosuch]", "regularizer=nosuch: unknown choice; valid: alpha_dropout, augmentation, "),
    ("+pretraining=nosuch", "pretraining=nosuch: unknown choice; valid: autoencoder, auxiliary, none, rbm"),
    ("experiment=nosuch", "experiment=nosuch: unknown choice; valid: activations, "),
    ("experiment=fast", "experiment=fast: experiment has no default choice to override; valid: +experiment=fast"),
    ("logger=[mine,nosuch]", "logger=nosuch: unknown choice; valid: csv, jsonl, mine, mlflow, tensorboard"),
])
def test_every_groups_unknown_choice_is_the_same_line_with_the_valid_choices(tmp_path, override, line):
    (tmp_path / "logger").mkdir()
    (tmp_path / "logger" / "mine.yaml").write_text("# @package logger.mine\n_target_: runner.training.loggers.JsonlLogger\n")
    with pytest.raises(UserError) as refused:
        preflight(["-cd", str(tmp_path), override, f"hydra.run.dir={tmp_path / 'out'}"])
    assert str(refused.value).startswith(line), str(refused.value)
    assert not (tmp_path / "out").exists()


# What only the real command line shows: no traceback, one line, exit 2, nothing written.
@pytest.mark.parametrize("file,text,args,words", [
    ("optimizer/broken.yaml", "_target_: optax.sgd\nlearning_rate: [0.1\n", ["optimizer=broken"], ["not YAML"]),
    ("config.yaml", "defaults: [\n", [], ["config.yaml", "not YAML"]),
    (None, None, ["logger=[nosuch]"], ["logger=nosuch: unknown choice; valid: csv, jsonl"]),
], ids=["broken group file", "broken primary config", "list group"])
def test_on_the_command_line_a_malformed_conf_file_is_one_line_and_exit_2(cli, file, text, args, words):
    conf = cli.cwd / "conf"
    conf.mkdir()
    if file:
        (conf / file).parent.mkdir(parents=True, exist_ok=True)
        (conf / file).write_text(text)
    result = cli("-cd", str(conf), *args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    for word in [*words, *([str(conf / file)] if file else [])]:
        assert word in line, (word, line)
    assert not (cli.cwd / "outputs").exists()


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
def test_the_refused_resume_names_changed_choices_not_their_declarations(trained, tmp_path):
    run = _copy(trained, tmp_path)
    with pytest.raises(UserError) as refused:
        preflight(["trainer.resume=true", f"hydra.run.dir={run}", "optimizer=sgd", "regularizer=[l2]"])
    line = str(refused.value)
    assert "optimizer (optax.adam -> optax.sgd)" in line and "regularizer.l2 ((absent) -> " in line, line
    assert "_valid_" not in line and "optimizer.b1" not in line, line


# A run's own weights file by itself gives the same transfer as its run dir.
def _fresh(*overrides):
    import jax

    from runner.config.compose import compose_config
    from runner.training.build import build_parts
    from runner.training.train import create_train_state

    cfg = compose_config(*overrides)
    parts = build_parts(cfg, num_classes=3, steps_per_epoch=1)
    return cfg, parts, create_train_state(jax.random.PRNGKey(7), parts, np.zeros((1, 8, 8, 1), np.float32))


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
def test_a_runs_weights_file_by_itself_transfers_as_its_run_dir_does(trained, tmp_path):
    cfg, parts, state = _fresh("model.depth=2", "model.width=8")
    elsewhere = Path(shutil.copy(trained / "model.safetensors", tmp_path / "copy.safetensors"))
    sources = {name: read_source(OmegaConf.create({**OmegaConf.to_container(cfg.transfer), "source": str(path)}))
               for name, path in [("dir", trained), ("file", trained / "model.safetensors"), ("copy", elsewhere)]}
    grafted = {}
    for name, source in sources.items():
        reused = reused_layers(cfg.transfer, source, parts.model.hidden_layers)  # default: all the source has
        assert reused == ("dense_0", "dense_1"), name  # its head is no hidden layer
        grafted[name] = graft(state.params, state.batch_stats, source, reused)
    flat = {name: weights.flat_weights(*trees) for name, trees in grafted.items()}
    for name in ("file", "copy"):
        assert flat[name].keys() == flat["dir"].keys()
        for key in flat["dir"]:
            np.testing.assert_array_equal(flat[name][key], flat["dir"][key], err_msg=f"{name}: {key}")
    stored = weights.load(trained / "model.safetensors")
    for key in ("dense_0.kernel", "block_1.norm.scale", "block_1.norm.mean"):  # the blocks come along too
        np.testing.assert_array_equal(flat["file"][key], stored[key])
    np.testing.assert_array_equal(flat["file"]["head.kernel"], np.asarray(state.params["head"]["kernel"]))
    # the scaling beside the file (its run dir's) comes with it; a copy elsewhere has none to bring
    np.testing.assert_array_equal(sources["file"].scaling.mean, sources["dir"].scaling.mean)
    assert sources["copy"].scaling is None


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
def test_a_runs_weights_file_that_does_not_fit_names_the_tensors_or_the_source(trained):
    source = read_source(OmegaConf.create({"source": str(trained / "model.safetensors"), "layout": "flax"}))
    cfg, parts, wide = _fresh("model.depth=2", "model.width=16")
    reused = reused_layers(cfg.transfer, source, parts.model.hidden_layers)
    with pytest.raises(UserError, match=r"dense_0 of .*model.safetensors kernel has shape \(64, 8\), this model's "
                                        r"dense_0.kernel \(64, 16\)"):
        graft(wide.params, wide.batch_stats, source, reused)
    with pytest.raises(UserError) as refused:  # more hidden layers than this model, reuse_layers not set
        reused_layers(OmegaConf.create({"reuse_layers": None}), source, ("dense_0",))
    assert str(refused.value).startswith(f"transfer.source: {trained / 'model.safetensors'} has 2 layers to reuse")
    assert "valid: transfer.reuse_layers=1..1" in str(refused.value)
    with pytest.raises(UserError, match="transfer.layout=torch: .* is a runner's weights file"):
        read_source(OmegaConf.create({"source": str(trained / "model.safetensors"), "layout": "torch"}))


# Checkpoints: orbax's own files, torn or emptied. The newest usable one is restored with one line saying which
# was not; none usable is one line.
def _checkpoints(tmp_path, epochs=(1, 2)) -> Path:
    saving = Checkpoints(tmp_path / "checkpoints", keep=3)
    for epoch in epochs:
        saving.save(epoch, {"state": {"w": np.full(3, epoch, np.float32)}}, {"epoch": epoch})
    saving.close()
    return tmp_path / "checkpoints"


def _restore(directory: Path, shape=(3,)):
    warned: list[str] = []
    checkpoints = Checkpoints(directory, keep=3)
    try:
        trees, meta = checkpoints.restore_latest(lambda meta: {"state": {"w": np.zeros(shape, np.float32)}},
                                                 warned.append)
    finally:
        checkpoints.close()
    return trees, meta, warned


def _truncate_all(d: Path) -> None:
    for f in d.rglob("*"):
        if f.is_file():
            f.write_bytes(b"")


CHECKPOINT_DAMAGE = {
    "emptied": (lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in list(d.iterdir())], None),
    "every file cut to nothing": (_truncate_all, "its meta/metadata is empty"),
    "its record cut off": (lambda d: (d / "meta" / "metadata").write_text('{"epo'), "its meta/metadata is not JSON"),
    "its record the wrong type": (lambda d: (d / "meta" / "metadata").write_text("[2]"), "not a JSON object"),
    "its arrays' index torn": (lambda d: (d / "state" / "_METADATA").write_text("{"), "state/_METADATA is missing"),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_in_one_line(tmp_path, capfd, damage):
    directory = _checkpoints(tmp_path)
    malform, problem = CHECKPOINT_DAMAGE[damage]
    malform(directory / "2")
    capfd.readouterr()
    trees, meta, warned = _restore(directory)
    assert meta["epoch"] == 1 and trees["state"]["w"].tolist() == [1, 1, 1]
    assert len(warned) == 1 and warned[0].startswith("checkpoint of epoch 2 is unusable ("), warned
    assert warned[0].endswith("resuming from epoch 1") and (problem is None or problem in warned[0]), warned
    assert capfd.readouterr().err == ""  # orbax's own logs of the torn files are not shown as well


def test_no_usable_checkpoint_or_another_shape_is_one_line(tmp_path, capfd):
    directory = _checkpoints(tmp_path)
    with pytest.raises(UserError) as refused:
        _restore(directory, shape=(4,))
    line = str(refused.value)
    assert line.startswith(f"trainer.resume: no usable checkpoint in {directory} (checkpoint 2: ") and "\n" not in line
    assert "does not match the config: w saved as (3,), the config makes (4,)" in line
    _truncate_all(directory)
    capfd.readouterr()
    with pytest.raises(UserError, match="checkpoint 2: its meta/metadata is empty; checkpoint 1: its meta"):
        _restore(directory)
    assert capfd.readouterr().err == ""


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
def test_resuming_a_run_whose_checkpoints_are_all_torn_is_one_line_and_exit_2(cli, trained):
    run = _copy(trained, cli.cwd)
    _truncate_all(run / "checkpoints")
    before = snapshot(run)
    result = cli("trainer.resume=true", f"hydra.run.dir={run}", "trainer.epochs=2")
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: trainer.resume: no usable checkpoint"), lines
    assert snapshot(run) == before  # .hydra/ too: Hydra's rewrite of it is taken back


@pytest.mark.xdist_group("trained")  # one worker makes the module's run once
def test_the_report_on_a_run_dir_whose_summary_is_not_json_is_one_line_and_exit_2(trained, tmp_path, capsys):
    from runner.report.tables import main

    run = _copy(trained, tmp_path)
    (run / "summary.json").write_text("status: completed\n")
    capsys.readouterr()
    assert main([str(run), "--no-plots"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no run could be read: {run / 'summary.json'}: not JSON (Expecting value: line 1 column 1)"]
    assert not (run / "report").exists()
