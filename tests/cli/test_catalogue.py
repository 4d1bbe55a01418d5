"""Every optimizer, activation and schedule in conf/ trains through the real command line.

One `-m` sweep per group over all of the group's YAML files, so a new file joins its sweep by existing.
The rest of the config is shrunk for CPU (one epoch, one small layer, no batch norm, no dropout; the report without
plots): each sweep costs about 2.5 s of CPU a job, most of it composing and compiling.
"""

from __future__ import annotations

import math

import pytest
import yaml

from runner.config.compose import CONF_DIR
from tests.conftest import read_summary

SMALL = ("trainer.epochs=1", "model.depth=1", "model.width=16", "dataset=digits", "normalization=none",
         "regularizer=[]", "hydra.callbacks.report.plots=false")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["optimizer", "activation", "schedule"])
def test_every_choice_of_the_group_trains_one_epoch_in_a_multirun(cli, group):
    names = choices(group)
    result = cli("-m", f"{group}={','.join(names)}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = cli.run_dirs()
    assert len(run_dirs) == len(names), result.stdout[-3000:]
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        assert summary["status"] == "completed", run_dir.name
        assert math.isfinite(summary["test_loss"]), run_dir.name
    ran = [yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"][group]
           for d in run_dirs]
    assert sorted(ran) == names  # one job per choice


def test_a_catalogue_dataset_offline_fails_fast_in_one_line_and_writes_nothing(cli, tmp_path):
    """The download blocked (every request goes to a proxy that refuses it): one line, exit 2, in seconds.

    Without the reachability check tfds retries ten times with exponential backoff: 3 min 27 s of silence.
    """
    data_dir = tmp_path / "tfds_offline"
    blocked = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    cli.env = {**cli.env, **blocked, "http_proxy": blocked["HTTP_PROXY"], "https_proxy": blocked["HTTPS_PROXY"]}
    # tfds' backoff alone would take over 200 s: a run that retried never ends within the subprocess's 120 s
    result = cli("dataset=mnist", f"dataset.data_dir={data_dir}", "trainer.epochs=1", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: dataset=mnist: mnist is not prepared in") and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "dataset.data_dir" in result.stderr
    assert not (cli.cwd / "outputs").exists() or cli.run_dirs() == []
