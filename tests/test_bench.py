"""`python -m runner.bench --smoke`: every case measured and written; the limit it compares against trains."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from runner.bench.__main__ import CASES, MLP20X100, SMOKE
from runner.bench.harness import IMAGE_SHAPE, synthetic_data
from runner.bench.reference import NUM_CLASSES, init_limit, limit_forward, limit_spec, make_limit_epoch, run_once
from runner.config.compose import compose_config
from runner.training.build import build_parts


@pytest.mark.xdist_group("bench_smoke")  # the session's one smoke run (tests/conftest.py)
def test_smoke_run_writes_every_case_with_its_ratio(bench_smoke):
    done, results, path = bench_smoke
    assert [c["name"] for c in results["cases"]] == [c.name for c in CASES]
    for case in results["cases"]:
        assert case["runner_examples_per_s"] > 0 and case["limit_examples_per_s"] > 0
        assert case["ratio"] == pytest.approx(case["runner_examples_per_s"] / case["limit_examples_per_s"])
    per_step = [c for c in results["cases"] if "per_step_examples_per_s" in c]
    assert [c["name"] for c in per_step] == [c.name for c in CASES if c.per_step_loop]
    assert all(c["per_step_examples_per_s"] > 0 for c in per_step)
    chunked = [c for c in results["cases"] if "chunked_over_whole" in c]
    assert [c["name"] for c in chunked] == [c.name for c in CASES if c.chunked]
    assert results["eval_examples_per_s"] > 0 and results["peak_host_memory_mib"] > 0
    assert results["time_to_answer_mistake_s"] > 0  # `python -m runner optimizer=adamm` exited 2, one line
    assert "time to answer a mistake" in done.stdout
    assert "time_to_first_step_s" not in results  # --smoke skips the subprocess run unless asked
    assert {"jax", "devices", "cpu_count", "platform"} <= set(results["machine"])
    assert f"results in {path}" in done.stdout


@pytest.mark.parametrize("overrides", [MLP20X100, (), ("model=cnn", *SMOKE["cnn_overrides"])],
                         ids=["plain_mlp", "batch_norm_dropout_mlp", "cnn"])
def test_limit_loss_goes_down_on_learnable_data(overrides):
    cfg = compose_config(*overrides, *SMOKE["overrides"], "optimizer.learning_rate=0.01")
    spec = limit_spec(cfg)
    x, y = synthetic_data(0, 64, IMAGE_SHAPE)
    state = init_limit(jax.random.PRNGKey(0), spec, IMAGE_SHAPE)
    epoch = jax.jit(make_limit_epoch(spec, batch_size=16)).lower(state, x, y, jax.random.PRNGKey(0)).compile(
        compiler_options={"xla_backend_optimization_level": 0})

    losses = []
    for i in range(4):
        state, loss = epoch(state, x, y, jax.random.PRNGKey(i))
        losses.append(float(loss))

    assert int(state.step) == 4 * 64 // 16
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("overrides", [(), ("model=cnn", *SMOKE["cnn_overrides"])], ids=["batch_norm_mlp", "cnn"])
def test_limit_forward_equals_the_runner_model_in_training_mode(overrides):
    cfg = compose_config(*overrides, *SMOKE["overrides"], "regularizer.dropout.rate=0.0")
    spec = limit_spec(cfg)
    model = build_parts(cfg, NUM_CLASSES, 1).model
    x, _ = synthetic_data(0, 16, IMAGE_SHAPE)
    key = jax.random.PRNGKey(0)
    variables = run_once(lambda x: model.init(key, x, train=False), x)
    logits, updates = run_once(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)

    hidden = len(spec.channels) + spec.depth
    params, running = variables["params"], variables["batch_stats"]
    names = [f"conv_{i}" if i < len(spec.channels) else f"dense_{i}" for i in range(hidden)] + ["head"]
    layers = [(params[n]["kernel"], params[n]["bias"]) for n in names]
    norms = [(params[f"block_{i}"]["norm"]["scale"], params[f"block_{i}"]["norm"]["bias"]) for i in range(hidden)]
    stats = [(running[f"block_{i}"]["norm"]["mean"], running[f"block_{i}"]["norm"]["var"]) for i in range(hidden)]
    limit_logits, limit_stats = run_once(lambda p, s, x: limit_forward(spec, p, s, x, key),
                                         (layers, norms), stats, x)

    np.testing.assert_allclose(limit_logits, logits, rtol=1e-5, atol=1e-5)
    for i, (mean, var) in enumerate(limit_stats):
        np.testing.assert_allclose(mean, updates["batch_stats"][f"block_{i}"]["norm"]["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, updates["batch_stats"][f"block_{i}"]["norm"]["var"], rtol=1e-5, atol=1e-6)
