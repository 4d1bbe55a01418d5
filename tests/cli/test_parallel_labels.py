"""The jobs of a hydra/launcher=parallel sweep share the terminal: each of their lines starts with its job's label
(runner/console.py: job_label), so interleaved lines still say whose they are."""

from __future__ import annotations

import re



def test_each_parallel_jobs_lines_start_with_its_number_and_overrides(cli):
    done = cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "activation=relu,elu",
               "trainer.epochs=2", "hydra.callbacks.report.plots=false", "hydra.sweep.dir=outputs/sw")
    assert done.returncode == 0, done.stderr
    labelled = {}
    for line in done.stdout.splitlines():
        if match := re.match(r"\[#(\d) (activation=\w+),trainer\.epochs=2\] (.*)", line):
            labelled.setdefault((match[1], match[2]), []).append(match[3])
    assert set(labelled) == {("0", "activation=relu"), ("1", "activation=elu")}, done.stdout
    for lines in labelled.values():  # each job's own epochs and results, under its own label
        assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
        assert any(line.startswith("results in ") for line in lines)
    assert not [line for line in done.stdout.splitlines() if line.startswith("epoch ")]  # none unlabelled
