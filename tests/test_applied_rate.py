"""One truth for the applied learning rate (runner/optim.py: rate_inputs, applied_rate): metrics.jsonl's `lr` of
each epoch is lr_trace.jsonl's first entry of that epoch, for every optimizer and every schedule, across a stage
change (stages=freeze_lower: a fresh optimizer state continues the schedule's count, FTRL's own count too)."""

from __future__ import annotations

import numpy as np
import pytest

from runner.config import CONF_DIR
from runner.console import Console
from tests.conftest import compose_config, read_metrics, sample

SHORT = ("model.depth=2", "model.width=16", "trainer.epochs=3", "trainer.batch_size=256", "stages=freeze_lower",
         "stages.frozen_epochs=1")
OPTIMIZERS = sorted(p.stem for p in (CONF_DIR / "optimizer").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))
CASES = [(o, "exponential") for o in OPTIMIZERS] + [("adam", s) for s in SCHEDULES if s != "exponential"]


def lr_trace(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "lr_trace.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("optimizer, schedule", sample(CASES, fast=[("ftrl", "exponential")]))
def test_metrics_lr_is_the_traces_first_rate_of_each_epoch_across_a_stage_change(optimizer, schedule, tmp_path,
                                                                                  tfds_dir):
    from runner.run import train_and_evaluate

    extra = ["schedule.decay_every=1"] if schedule == "exponential" else []
    cfg = compose_config(*SHORT, f"optimizer={optimizer}", f"schedule={schedule}", *extra)
    train_and_evaluate(cfg, tmp_path, Console(live=False))
    metrics, trace = read_metrics(tmp_path), lr_trace(tmp_path)
    assert [m["epoch"] for m in metrics] == [t["epoch"] for t in trace] == [1, 2, 3]
    assert [m["lr"] for m in metrics] == [t["lr"][0] for t in trace]
    if schedule == "exponential":  # the schedule goes on across the stage change: epoch 2 starts 10x lower
        assert np.isclose(trace[1]["lr"][0], trace[0]["lr"][0] / 10, rtol=1e-5)
