"""`python -m runner trainer.devices=...` on a process with 4 (forced CPU) devices: what is refused, and how."""

from __future__ import annotations

import pytest

from tests.conftest import snapshot
from tests.test_devices import forced_devices_env


@pytest.mark.parametrize("overrides, message", [
    (("trainer.devices=4", "trainer.batch_size=30"),
     "error: trainer.batch_size: 30 does not divide over the 4 devices of trainer.devices=4; valid: a multiple of 4 "
     "(e.g. 28 or 32), or trainer.devices=N for an N that divides 30"),
    (("trainer.batch_size=30",),  # auto: every device of the process
     "error: trainer.batch_size: 30 does not divide over the 4 devices of trainer.devices=auto; valid: a multiple"),
    (("trainer.devices=8",),
     "error: trainer.devices: 8, but this process has 4 device(s) (cpu:0, cpu:1, cpu:2, cpu:3); valid: auto or an "
     "integer in [1, 4]"),
])
def test_a_device_mistake_found_at_run_time_is_one_line_exit_2_and_nothing_written(cli, tfds_dir, overrides, message):
    cli.env = forced_devices_env(tfds_dir)
    before = snapshot(cli.cwd)
    result = cli(*overrides)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
    assert snapshot(cli.cwd) == before  # the run dir Hydra made is taken back


def test_a_device_setting_that_is_neither_auto_nor_a_count_is_refused_before_jax_starts(cli):
    result = cli("trainer.devices=all")
    assert result.returncode == 2
    assert result.stderr == "error: trainer.devices: must be auto or an integer >= 1, got 'all'\n"
    assert not (cli.cwd / "outputs").exists()
