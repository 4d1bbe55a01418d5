"""Every optimizer, activation and schedule in conf/ trains through the real command line.

One `-m` sweep for the three groups, every choice of each in a job: job i takes the i-th choice of every group
(cycling through the shorter groups), each job an experiment file of a `-cd` dir (`+experiment=...`, as a user adds
their own), so the groups' 27 choices train in 10 jobs, and a new file joins the sweep by existing.
The rest of the config is shrunk for CPU (one epoch, one small layer, no batch norm, no dropout; the report without
plots; programs compiled for a short compile, as every command line of the tests: tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import yaml

from runner.config.compose import CONF_DIR
from tests.conftest import Runner, read_summary

GROUPS = ("optimizer", "activation", "schedule")
SMALL = ("trainer.epochs=1", "model.depth=1", "model.width=16", "dataset=digits", "normalization=none",
         "regularizer=[]", "hydra.callbacks.report.plots=false")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def catalogue_sweep(tmp_path_factory, tfds_dir) -> tuple[list[dict], list[dict]]:
    """One multirun in which every choice of GROUPS trains: each job's choices (as Hydra recorded them) and its
    summary."""
    cli = Runner(tmp_path_factory.mktemp("catalogue"), tfds_dir)
    names = {group: choices(group) for group in GROUPS}
    jobs = max(len(n) for n in names.values())
    (cli.cwd / "conf" / "experiment").mkdir(parents=True)
    for i in range(jobs):
        overrides = "".join(f"  - override /{group}: {n[i % len(n)]}\n" for group, n in names.items())
        (cli.cwd / "conf" / "experiment" / f"every_choice_{i}.yaml").write_text(
            f"# @package _global_\ndefaults:\n{overrides}")
    experiments = ",".join(f"every_choice_{i}" for i in range(jobs))
    result = cli("-m", "-cd", "conf", f"+experiment={experiments}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = cli.run_dirs()
    assert len(run_dirs) == jobs, result.stdout[-3000:]
    ran = [yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"] for d in run_dirs]
    return ran, [read_summary(d) for d in run_dirs]


@pytest.mark.xdist_group("catalogue_sweep")
@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_of_the_group_trains_one_epoch_in_a_multirun(catalogue_sweep, group):
    ran, summaries = catalogue_sweep
    for job, summary in zip(ran, summaries):
        assert summary["status"] == "completed" and summary["epochs"] == 1, job
        assert math.isfinite(summary["test_loss"]), job
    assert sorted({job[group] for job in ran}) == choices(group)  # every choice ran in a job


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
