"""A two-stage run from the command line: the lower half of the body frozen, then everything trains."""

from __future__ import annotations

import json
import shutil

import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import read_summary

TWO_STAGES = ("stages=freeze_lower", "stages.frozen_layers=2", "model.depth=4", "stages.frozen_epochs=2",
              "trainer.epochs=4", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=4",
              "model.width=16", "dataset.train_subset=64")  # 2 steps an epoch


def _saved_state(run_dir, epoch):
    return ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(epoch) / "state")


def _without_times(path):
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in path.read_text().splitlines()]


def test_freeze_lower_holds_the_lower_layers_then_trains_them_and_resumes_across_the_boundary(cli):
    result = cli(*TWO_STAGES, "hydra.run.dir=outputs/two")
    assert result.returncode == 0, result.stderr
    run_dir = cli.cwd / "outputs" / "two"
    assert read_summary(run_dir)["status"] == "completed"
    first, second, third = (_saved_state(run_dir, e) for e in (1, 2, 3))
    for layer, block in (("dense_0", "block_0"), ("dense_1", "block_1")):
        for name in ("kernel", "bias"):  # frozen through stage one, bit for bit
            np.testing.assert_array_equal(first["params"][layer][name], second["params"][layer][name])
        for name in ("mean", "var"):
            np.testing.assert_array_equal(first["batch_stats"][block]["norm"][name],
                                          second["batch_stats"][block]["norm"][name])
        assert not np.array_equal(second["params"][layer]["kernel"], third["params"][layer]["kernel"])
    assert not np.array_equal(first["params"]["dense_2"]["kernel"], second["params"]["dense_2"]["kernel"])

    # Resumed from the last checkpoint of stage one, the run enters stage two exactly as it did unbroken.
    resumed_dir = cli.cwd / "outputs" / "resumed"
    shutil.copytree(run_dir, resumed_dir)
    for epoch in (3, 4):
        shutil.rmtree(resumed_dir / "checkpoints" / str(epoch))
    resumed = cli("trainer.resume=true", f"hydra.run.dir={resumed_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert _without_times(resumed_dir / "metrics.jsonl") == _without_times(run_dir / "metrics.jsonl")
