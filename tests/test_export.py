"""`python -m runner.export`: batch norm folds into the layer before it by its formula and only where that is valid,
with the same logits for every normalization choice; the serialized program predicts in a process that imports only
jax and numpy; --dtype reports the accuracy change; a file that is not the export's own is never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors import safe_open

from runner.config.compose import CONF_DIR
from runner.export import FOLDED_FILE, MANIFEST_FILE, PROGRAM_FILE, fold_batch_norm, main
from runner.reuse.trained import build_net, read_run
from runner.training.build import build_parts
from tests.conftest import trained_run, compose_config, snapshot

NORMALIZATIONS = sorted(p.stem for p in (CONF_DIR / "normalization").glob("*.yaml"))  # every conf choice
X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)


def _net(*overrides):
    """A small net with every normalization parameter and statistic away from its initial value, as after training."""
    model = build_parts(compose_config("model.depth=3", "model.width=16", *overrides), 10, 1).model
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x))(X)
    rng = np.random.default_rng(1)

    def perturb(path, leaf):
        if "norm" not in [getattr(k, "key", None) for k in path]:
            return np.asarray(leaf)
        kind = path[-1].key
        value = rng.normal(size=leaf.shape) if kind in ("bias", "mean") else rng.uniform(0.5, 2.0, leaf.shape)
        return value.astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(perturb, dict(variables))


def _assert_same_logits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_folding_keeps_the_logits_for_every_normalization_choice(normalization, position):
    model, variables = _net(f"normalization={normalization}", f"normalization.position={position}")
    folded = fold_batch_norm(model, variables)

    _assert_same_logits(folded.model.apply(folded.variables, X), model.apply(variables, X))
    if normalization == "batch_norm" and position == "pre":  # directly after the dense layer: folded away
        assert folded.folded == model.hidden_layers and folded.kept is None
        assert folded.model.normalization is None and not folded.variables["batch_stats"]
        assert not any("norm" in block for block in folded.variables["params"].values())
    else:  # after the activation, per-example statistics, or nothing to fold: kept as it is, and said why
        assert folded.folded == () and folded.kept
        assert folded.variables is variables and folded.model is model


def test_a_convolution_folds_per_output_channel():
    model, variables = _net("model=cnn", "model.channels=[4,8]", "model.depth=1")
    folded = fold_batch_norm(model, variables)
    assert folded.folded == ("conv_0", "conv_1", "dense_2")
    _assert_same_logits(folded.model.apply(folded.variables, X), model.apply(variables, X))


def test_the_folded_layer_is_w_times_s_with_bias_b_minus_mean_times_s_plus_beta():
    model, variables = _net()
    folded = fold_batch_norm(model, variables)
    p, norm, stats = variables["params"], variables["params"]["block_1"]["norm"], variables["batch_stats"]["block_1"]
    s = norm["scale"] / np.sqrt(stats["norm"]["var"] + model.normalization.epsilon)
    np.testing.assert_allclose(folded.variables["params"]["dense_1"]["kernel"], p["dense_1"]["kernel"] * s, rtol=1e-6)
    np.testing.assert_allclose(folded.variables["params"]["dense_1"]["bias"],
                               (p["dense_1"]["bias"] - stats["norm"]["mean"]) * s + norm["bias"], rtol=1e-5,
                               atol=1e-6)


# ---- the command, on one tiny trained run ----

TINY = ("trainer.epochs=1", "model.depth=2", "model.width=16")

# Imports jax and numpy only, loads the program and writes its logits of each given input: PROGRAM X OUT [X OUT ...].
LOADER = """
import sys
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
for x, out in zip(sys.argv[2::2], sys.argv[3::2]):
    np.save(out, np.asarray(exported.call(np.load(x))))
assert not [m for m in sys.modules if m.split(".")[0] in ("runner", "flax", "optax", "hydra", "omegaconf")]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tfds_dir):
    return trained_run(tmp_path_factory, tfds_dir, "export", *TINY)


def test_the_exported_program_runs_with_only_jax_and_numpy_at_any_batch(cli, run_dir):
    result = cli(str(run_dir), module="runner.export")
    assert result.returncode == 0, result.stderr
    assert "folded batch norm into dense_0, dense_1" in result.stdout
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["input_shape"] == [8, 8, 1] and manifest["dtype"] == "float32"

    run = read_run(run_dir, "RUN_DIR")
    model, variables = build_net(run, (8, 8, 1))
    batches = (1, 13)  # the batch dimension is symbolic: one program, called at each size in one process
    raw = {n: np.random.default_rng(n).uniform(0, 16, size=(n, 8, 8, 1)).astype(np.float32) for n in batches}
    for n in batches:  # digits' range
        np.save(cli.cwd / f"x{n}.npy", raw[n])
    files = [name for n in batches for name in (f"x{n}.npy", f"logits{n}.npy")]
    done = subprocess.run([sys.executable, "-c", LOADER, str(run_dir / PROGRAM_FILE), *files],
                          cwd=cli.cwd, env=cli.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for n in batches:
        _assert_same_logits(np.load(cli.cwd / f"logits{n}.npy"), model.apply(variables, run.scale(raw[n])))

    with safe_open(str(run_dir / FOLDED_FILE), "numpy") as f:  # the folded weights, by the runner's names
        assert set(f.keys()) == {"dense_0.kernel", "dense_0.bias", "dense_1.kernel", "dense_1.bias", "head.kernel",
                                 "head.bias"}


def test_a_dtype_casts_the_weights_and_reports_the_accuracy_change(cli, run_dir):
    result = cli(str(run_dir), "--dtype", "bfloat16", module="runner.export")  # over its own earlier output

    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("--dtype")]
    assert "bfloat16: test accuracy" in line and "in float32" in line and "points" in line
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == "bfloat16" and set(manifest["test_accuracy"]) == {"float32", "bfloat16"}
    assert manifest["test_accuracy"]["float32"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())
                                                                 ["test_accuracy"], abs=1e-6)
    with safe_open(str(run_dir / FOLDED_FILE), "numpy") as f:
        assert str(f.get_tensor("dense_0.kernel").dtype) == "bfloat16"


@pytest.mark.parametrize("name", [FOLDED_FILE, PROGRAM_FILE, MANIFEST_FILE])
def test_a_users_file_in_the_way_is_never_overwritten(run_dir, tmp_path, capsys, name):
    copy = tmp_path / "run"
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name not in (FOLDED_FILE, PROGRAM_FILE, MANIFEST_FILE):
            (copy / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(run_dir)).write_bytes(path.read_bytes())
    (copy / name).write_text("my own notes")
    before = snapshot(copy)

    assert main([str(copy)]) == 2

    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and name in err and "move it away" in err, err
    assert snapshot(copy) == before


def test_a_mistake_is_one_line_and_exit_2(capsys, tmp_path):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(tmp_path), "--dtype", "float8"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "RUN_DIR" in lines[0] and "invalid choice: 'float8'" in lines[1], lines


def test_the_folded_file_is_what_export_writes_for_a_kept_normalization(tmp_path):
    """Layer norm is kept: the folded file then holds its parameters too, under their usual names."""
    model, variables = _net("normalization=layer_norm")
    folded = fold_batch_norm(model, variables)
    from runner.export import safetensors_bytes

    (tmp_path / FOLDED_FILE).write_bytes(safetensors_bytes(folded.variables, "float32", {}))
    with safe_open(str(tmp_path / FOLDED_FILE), "numpy") as f:
        assert "block_0.norm.scale" in set(f.keys())
        assert f.metadata()["layout"] == "flax"
    assert "own statistics" in folded.kept


def test_an_old_run_without_input_shape_in_its_summary_exports_by_its_dataset(run_dir, tmp_path):
    copy = tmp_path / "old"
    for path in run_dir.rglob("*"):
        if path.is_file() and path.name not in (FOLDED_FILE, PROGRAM_FILE, MANIFEST_FILE):
            (copy / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(run_dir)).write_bytes(path.read_bytes())
    summary = json.loads((copy / "summary.json").read_text())
    del summary["input_shape"]
    (copy / "summary.json").write_text(json.dumps(summary))

    assert main([str(copy)]) == 0
    assert json.loads((copy / MANIFEST_FILE).read_text())["input_shape"] == [8, 8, 1]
    assert Path(copy / PROGRAM_FILE).stat().st_size > 0
