"""Performance scheduling wired into a real run: the epoch-end decision scales the next epoch's steps."""

from __future__ import annotations


from tests.conftest import read_metrics


def test_plateau_halves_the_applied_rate_after_each_epoch_without_improvement(cli):
    # rtol=0.9: only a 90% drop of the validation loss counts as an improvement, so after epoch 1 none does.
    result = cli("schedule=plateau", "schedule.patience=1", "schedule.factor=0.5", "schedule.rtol=0.9",
                 "optimizer.learning_rate=0.001", "trainer.epochs=4", "model.depth=1", "model.width=8",
                 "dataset.train_subset=64", "hydra.run.dir=outputs/p")
    assert result.returncode == 0, result.stderr
    rates = [m["lr"] for m in read_metrics(cli.cwd / "outputs" / "p")]
    assert rates == [0.001, 0.001, 0.0005, 0.00025]
