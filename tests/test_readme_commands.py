"""Every command of README.md and of the pages in docs/, run as printed.

A command is a line of a fenced `sh` block (a line ending in `\\` goes on to the next; `#` lines are comments), or a
`$ ` line of a plain fenced block, whose next lines are what the page shows it print. Each runs in bash exactly as
its page prints it, within its chapter: the sections, of any page, that build on one another, run in one fresh
working dir in the order `SECTIONS` lists them (page line order within a section). A command README lists that a
docs page prints too runs once, where that page prints it (README's copy is the front page's index of it). Around
it the test sets what a person's machine would have: the venv's `python` and `runner` first on PATH, HOME, the tfds
data dir and JAX's compilation cache in the test's temp dirs, and one test aid, RUNNER_MAX_EPOCHS=1
(runner/config/compose.py: `capped`), which shortens the training of every command whose result its page does not print
(`UNCAPPED` lists the others and why). Files a person brings themselves (their own inputs, another framework's
weights) are written before their chapter runs (`brought`). One thing differs, unseen by the commands: the `python`
first on PATH is tests/forkserver.py's `Shim`, which forks each `python -m runner...` from a server that has
imported what it imports (a process of its own as bash sees it: its streams, exit code, signals); any other
`python` is the venv's.

What is checked: a `$ ` command prints each line its page shows (an `error:` line is its whole stderr, exit code 2);
a command in `CHECKS` does what its page says it does (a number within TOLERANCE, the files it names, the message it
quotes); any other command exits 0. Commands this machine cannot run are in `NOT_RUN`, each with its reason;
`test_every_readme_command_is_run_or_listed` holds the pages and these tables to each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from runner.config.compose import MAX_EPOCHS_VARIABLE
from tests.conftest import ROOT, read_metrics, read_summary
from tests.forkserver import Shim

README = "README.md"
GENERATED = ("docs/book.md",)  # written by runner/book.py from its runs: a table, no commands
TOLERANCE = 0.03  # a test accuracy a page prints, against the run's: 11 of digits' 360 test examples


def pages() -> list[str]:
    """README.md, then every page of docs/ (paths relative to the repo root)."""
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    return [README] + [page for page in docs if page not in GENERATED]


@dataclasses.dataclass(frozen=True)
class Command:
    text: str  # as its page prints it (continuation lines joined by their backslash-newline)
    line: int  # the page's line number of its first line
    section: str  # the heading it is under
    printed: tuple[str, ...] = ()  # what the page shows a `$ ` command print
    page: str = README  # where it is printed, relative to the repo root

    @property
    def key(self) -> str:
        """The command without its comments, its lines joined: how the tables below name it."""
        words = " ".join(_uncommented(line).rstrip("\\").strip() for line in self.text.split("\n"))
        return " ".join(words.split())

    @property
    def comment(self) -> str:
        """The comment at the end of its last line ('' if none)."""
        last = self.text.split("\n")[-1]
        return last[len(_uncommented(last)):].lstrip(" #")


def _uncommented(line: str) -> str:
    """A shell line without its trailing comment (the pages' comments follow whitespace, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def page_commands(page: str = README, text: str | None = None) -> list[Command]:
    """The commands of a page's fenced `sh` blocks and `$ ` lines of its plain blocks, in order."""
    lines = ((ROOT / page).read_text() if text is None else text).splitlines()
    commands, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            if line.startswith("#"):
                section = line.lstrip("# ").strip()
            i += 1
            continue
        language, start = line[3:].strip(), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        block, i = lines[start:end], end + 1
        if language == "sh":
            j = 0
            while j < len(block):
                first = j
                while block[j].rstrip().endswith("\\") and not block[j].lstrip().startswith("#"):
                    j += 1
                text = "\n".join(block[first:j + 1])
                j += 1
                if _uncommented(text.split("\n")[0]).strip():
                    commands.append(Command(text, start + first + 1, section, page=page))
        elif language == "":
            prompts = [j for j, b in enumerate(block) if b.startswith("$ ")]
            for k, j in enumerate(prompts):
                upto = prompts[k + 1] if k + 1 < len(prompts) else len(block)
                commands.append(Command(block[j][2:], start + j + 1, section, tuple(block[j + 1:upto]), page))
    return commands


def documented_commands() -> list[Command]:
    """Every page's commands: README's first, then docs/ page by page."""
    return [command for page in pages() for command in page_commands(page)]


# ---- what is not run, and why ----

NOT_RUN = {
    "make test": "runs the tests but the slow tier (under 4 min)",
    "make test-slow": "runs the slow tier (5-6 min)",
    "make bench": "minutes of timing at full size (tests/test_bench.py runs `python -m runner.bench --smoke`)",
    "make book": "47 min over 3 seeds, and needs Fashion-MNIST's files (tests/test_book.py runs "
                 "`python -m runner.book --quick` where they are)",
    "pip install .": "installs into the test's own environment, and pip fetches the build backend from the network "
                     "(tests/cli/test_package.py builds the wheel offline and installs it in a fresh venv)",
    "runner optimizer=ad<Tab>": "a key press in an interactive shell; test_tab_completion_offers_what_readme_shows "
                                "asks Hydra's completion, as the Tab does, and checks what the page shows",
    "python -m runner -m hparams_search=learning_rate": "a long time: 20 Optuna trials, each compiling its own program "
                                                        "(tests/cli/test_search_cli.py runs short searches)",
    "python -m runner -m hparams_search=learning_rate optimizer=sgd": "a long time: 20 trials, as above",
    "python -m runner -m hparams_search=combined hydra.sweeper.n_trials=100": "a long time: 100 trials",
    "python -m runner -m hydra/sweeper=search 'model.width=int(interval(16, 256))'":
        "a long time: 20 trials of other widths, each compiled anew",
    "python -m runner -m hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.account=my_lab "
    "hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=240 trainer.seed=0,1,2,3":
        "needs SLURM and a gpu partition (tests/cli/test_launchers_cli.py runs the same machinery with "
        "hydra/launcher=slurm_local)",
    "srun .venv/bin/python -m runner trainer.batch_size=256": "needs SLURM: srun inside a 2-node GPU allocation",
    "JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m runner "
    "hydra.run.dir=/shared/run": "needs a second host (host0) and a shared /shared (tests/test_devices.py runs two "
                                 "processes on one machine)",
    "JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python -m runner "
    "hydra.run.dir=/shared/run": "needs a second host, as above",
}

# The pages' sections, by heading (or by (page, heading) where a heading is on several pages), and the chapter that
# runs their commands: one working dir each, the sections in this order (so "Reports" reports on the runs that
# "Resuming" made); a pretraining command runs in a chapter of its own (slow: it trains the full epochs whose result
# it prints).
SECTIONS = {
    "runner": "first steps", "The commands you type most": "first steps",  # README.md
    "Use": "first steps", "Install as a command": "first steps",  # docs/usage.md
    "Bad input, and what the runner never touches": "first steps",  # docs/safety.md
    "Every option": "first steps",  # docs/options.md
    "Resuming, and what each status means": "resume and report", "Resuming a sweep": "resume and report",
    "Reports": "resume and report",  # docs/resume.md, then docs/results.md
    "Reusing what was learned: transfer and pretraining": "transfer and use",  # docs/reuse.md
    "Using a trained net: the catalog, predictions, export": "transfer and use",
    "Comparing over seeds": "seeds",  # docs/results.md
    "Replicas: several seeds in one program": "replicas", "Many devices and hosts": "devices",  # docs/scale.md
    "Finding a learning rate": "learning rate",  # docs/tuning.md
    "Searching hyperparameters": None, "Running on many cores or a cluster": None,  # every command NOT_RUN
}
# Each command that trains costs 3-9 s on 2 cores however short its training (composing, tracing, compiling,
# checkpointing); `pytest -s` prints each command's seconds.


def _section_key(command: Command) -> tuple[str, str] | str | None:
    """The key of SECTIONS that places a command: (page, heading), else its heading; None if neither is there."""
    for key in ((command.page, command.section), command.section):
        if key in SECTIONS:
            return key
    return None


def runs_elsewhere(command: Command) -> bool:
    """README lists a command that a docs page prints too: it runs there, among what it builds on."""
    return command.page == README and any(c.key == command.key for c in documented_commands() if c.page != README)


def chapter_of(command: Command) -> str | None:
    if command.key in NOT_RUN or runs_elsewhere(command):
        return None
    if re.search(r"(^| )pretraining=", command.key):
        return "pretraining"
    key = _section_key(command)
    return SECTIONS[key] if key is not None else f"(no chapter: {command.page}, section {command.section!r})"


# ---- what a command is checked against ----

@dataclasses.dataclass
class Done:
    """A command that ran: its exit code and output, and the chapter's working dir."""

    command: Command
    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def lines(self) -> list[str]:
        return (self.stdout + self.stderr).splitlines()

    def newest_run(self, under: str = "outputs") -> Path:
        return max((self.cwd / under).rglob("summary.json"), key=lambda p: p.stat().st_mtime).parent


def readme_quote(pattern: str) -> str:
    """The text the pages quote in backticks that matches `pattern`, its line breaks as spaces."""
    text = " ".join(" ".join((ROOT / page).read_text().split()) for page in pages())
    (found,) = set(re.findall(rf"`({pattern}[^`]*)`", text))
    return found


def completed(*dirs: Path) -> None:
    for d in dirs:
        assert read_summary(d)["status"] == "completed", d


def _test_accuracy_as_printed(done: Done) -> None:
    printed = float(done.command.comment.split()[0])
    measured = read_summary(done.newest_run())["test_accuracy"]
    assert abs(measured - printed) <= TOLERANCE, (measured, printed)


def _sweep_jobs(done: Done, sweep: str, jobs: int) -> list[Path]:
    dirs = sorted(p.parent for p in done.cwd.glob(f"{sweep}/*/summary.json"))
    assert len(dirs) == jobs, dirs
    completed(*dirs)
    return dirs


def _newest_sweep(done: Done, jobs: int) -> None:
    """The newest sweep under outputs/multirun (the chapter's dir holds others): its jobs completed, its report."""
    newest = sorted(done.cwd.glob("outputs/multirun/*/*"))[-1]
    _sweep_jobs(done, newest.relative_to(done.cwd).as_posix(), jobs)
    assert (newest / "report" / "report.md").is_file(), newest


def _interrupted_run(done: Done) -> None:
    assert done.returncode == 130, done.stderr
    assert readme_quote("continue with: ") in done.stderr  # the message docs/resume.md quotes
    assert read_summary(done.cwd / "outputs/long")["status"] == "interrupted"


def _interrupted_sweep(done: Done) -> None:
    assert done.returncode == 143, done.stderr
    assert readme_quote("continue the sweep with: ") in done.stderr


def _resumed_to(epochs: int) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        run = done.cwd / "outputs/long"
        assert read_summary(run)["status"] == "completed" and read_summary(run)["epochs"] == epochs
        assert [m["epoch"] for m in read_metrics(run)] == list(range(1, epochs + 1))
    return check


def _devices(count: int) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        assert read_summary(done.newest_run())["devices"] == [f"cpu:{i}" for i in range(count)]
    return check


def _every_group_and_its_choices(shown: str) -> None:
    for group in ("activation", "clip", "dataset", "initializer", "logger", "model", "normalization", "optimizer",
                  "pretraining", "regularizer", "schedule", "stages"):
        choices = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        assert f"{group}: {', '.join(choices)}" in shown, group


def _seeds(run_dir: str | None, seeds: range) -> Callable[[Done], None]:
    """A replicas run: one member dir per seed (`seed_<s>/`, each a finished run), and replicas.json."""
    def check(done: Done) -> None:
        where = done.cwd / run_dir if run_dir else done.newest_run().parent
        assert json.loads((where / "replicas.json").read_text())["replicas"] == len(seeds)
        assert sorted(p.name for p in where.glob("seed_*")) == sorted(f"seed_{s}" for s in seeds)
        completed(*(where / f"seed_{s}" for s in seeds))
    return check


def _report(where: str, plots: bool = True) -> Callable[[Done], None]:
    def check(done: Done) -> None:
        out = done.cwd / where
        assert (out / "report.md").is_file() and (out / "report.csv").is_file()
        assert any(out.glob("*.png")) == plots
    return check


CHECKS: dict[str, Callable[[Done], None]] = {
    "make run": lambda d: completed(d.newest_run()),
    "python -m runner --help": lambda d: _every_group_and_its_choices(d.stdout),
    "python -m runner -m activation=relu,elu,selu": lambda d: _newest_sweep(d, 3),
    "python -m runner -m +experiment=practical_defaults": lambda d: _newest_sweep(d, 2),
    "mkdir -p ~/experiments && cd ~/experiments && runner optimizer=adam trainer.epochs=1":
        lambda d: completed(d.newest_run("home/experiments/outputs")),
    "python -m runner optimizer=sgd trainer.epochs=50 hydra.run.dir=outputs/long": _interrupted_run,
    "python -m runner trainer.resume=true hydra.run.dir=outputs/long": _resumed_to(50),
    "python -m runner trainer.resume=true hydra.run.dir=outputs/long trainer.epochs=80": _resumed_to(80),
    "python -m runner -m trainer.seed=0,1 activation=relu,elu trainer.checkpoint_every=1 hydra.sweep.dir=outputs/sweep":
        _interrupted_sweep,
    "python -m runner -m activation=relu,elu trainer.seed=0,1 hydra.sweep.dir=outputs/sweep trainer.resume=true":
        lambda d: _sweep_jobs(d, "outputs/sweep", 4),
    "python -m runner.report outputs/sweep": _report("outputs/sweep/report"),
    "python -m runner.report outputs/long": _report("outputs/long/report"),
    "python -m runner.report outputs/long outputs/sweep": _report("outputs/report"),
    "python -m runner.report outputs --out my_report --no-plots": _report("my_report", plots=False),
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=outputs/task_a "
    "transfer.reuse_layers=2": lambda d: "transfer: dense_0, dense_1 from " in d.stdout or pytest.fail(d.stdout),
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=outputs/task_a "
    "transfer.reuse_layers=2 transfer.unfreeze_after=5 transfer.reused_lr_scale=0.1":  # docs/reuse.md quotes its line
        lambda d: any(line.startswith(readme_quote("epoch 6: dense_0").rstrip(" .")) for line in d.lines)
        or pytest.fail(d.stdout),
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=outputs/task_a "
    "transfer.reuse_layers=2 transfer.cache=true": lambda d: "(frozen), cached" in d.stdout or pytest.fail(d.stdout),
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=torch_mlp.safetensors "
    "transfer.layout=torch": lambda d: "torch_mlp.safetensors" in d.stdout or pytest.fail(d.stdout),
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=best:digits":
        lambda d: "transfer_source" in read_summary(d.newest_run()) or pytest.fail(),
    "python -m runner.models --json > runs.json":
        lambda d: isinstance(json.loads((d.cwd / "runs.json").read_text()), list) or pytest.fail(),
    "python -m runner.predict outputs/task_a new.npz":
        lambda d: np.load(d.cwd / "predictions.npz")["probabilities"].shape == (12, 5) or pytest.fail(),
    "python -m runner.predict outputs/task_a new.npz --mc-samples 30 --out mc.npz":
        lambda d: np.load(d.cwd / "mc.npz")["probabilities_std"].shape == (12, 5) or pytest.fail(),
    "python -m runner.export outputs/task_a":
        lambda d: all((d.cwd / "outputs/task_a" / f).is_file() for f in ("model.folded.safetensors",
                                                                          "model.jax_export")) or pytest.fail(),
    "python -m runner.export outputs/task_a --dtype bfloat16":
        lambda d: "--dtype bfloat16: test accuracy" in d.stdout or pytest.fail(d.stdout),
    "python -m runner -m 'trainer.seed=range(0,5)' activation=relu,elu,selu hydra.sweep.dir=outputs/seeds":
        lambda d: (d.cwd / "outputs/seeds/report/report_groups.csv").read_text().count("\n") == 4 or pytest.fail(),
    "python -m runner.report outputs/seeds --baseline \"activation=relu\"":
        lambda d: (d.cwd / "outputs/seeds/report/report_ablation.csv").is_file() or pytest.fail(),
    "python -m runner -m 'trainer.seed=range(0,5)' activation=relu,elu "
    "'hydra.callbacks.report.baseline=\"activation=relu\"'":
        lambda d: any((d.cwd / "outputs/multirun").glob("*/*/report/report_ablation.csv")) or pytest.fail(),
    "python -m runner trainer.replicas=8 hydra.run.dir=outputs/replicas": _seeds("outputs/replicas", range(0, 8)),
    "python -m runner trainer.replicas=5 trainer.seed=10": _seeds(None, range(10, 15)),
    "python -m runner.report outputs/replicas":
        lambda d: (d.cwd / "outputs/replicas/report/report_groups.csv").is_file() or pytest.fail(),
    "python -m runner.lr_find": lambda d: any("suggest" in line for line in d.lines) or pytest.fail(d.stdout),
    "python -m runner optimizer.learning_rate=auto":
        lambda d: read_summary(d.newest_run())["learning_rate_found"] > 0 or pytest.fail(),
    "XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m runner trainer.devices=2 trainer.batch_size=64":
        _devices(2),
    "XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m runner trainer.devices=4": _devices(4),
}
PRETRAINING_RESULT = _test_accuracy_as_printed  # the pretraining commands print their test accuracy (seed 0)

UNCAPPED = {  # commands that train the epochs they name, and why (the pretraining ones too: they print results)
    "python -m runner optimizer=sgd trainer.epochs=50 hydra.run.dir=outputs/long":
        "Ctrl-C lands mid-run (after the first epoch of 50)",
    "python -m runner trainer.resume=true hydra.run.dir=outputs/long": "docs/resume.md says it continues to epoch 50",
    "python -m runner trainer.resume=true hydra.run.dir=outputs/long trainer.epochs=80": "... and then to 80",
    "python -m runner schedule=piecewise_constant trainer.epochs=4 trainer.batch_size=129":
        "the lines it prints are about its 4 epochs",
    "python -m runner dataset.classes=[5,6] dataset.train_subset=40 transfer.source=outputs/task_a "
    "transfer.reuse_layers=2 transfer.unfreeze_after=5 transfer.reused_lr_scale=0.1": "the layers unfreeze at epoch 6",
}
# Commands stopped by a signal, as their comments say, once the run dir's first epoch is written there.
SIGNALS = {
    "python -m runner optimizer=sgd trainer.epochs=50 hydra.run.dir=outputs/long": (signal.SIGINT, "outputs/long"),
    "python -m runner -m trainer.seed=0,1 activation=relu,elu trainer.checkpoint_every=1 hydra.sweep.dir=outputs/sweep":
        (signal.SIGTERM, "outputs/sweep/*"),
}


def brought(chapter: str, cwd: Path) -> None:
    """What a person brings to these commands themselves: their inputs, another framework's weights."""
    if chapter != "transfer and use":
        return
    rng = np.random.default_rng(0)
    np.savez(cwd / "new.npz", x=rng.uniform(0, 16, (12, 8, 8, 1)).astype(np.float32))
    np.savez(cwd / "mnist_images.npz", x=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8))
    from safetensors.numpy import save_file  # nn.Sequential(Linear(64, 100), ELU(), Linear(100, 100)): [out, in]

    save_file({"0.weight": rng.normal(0, 0.1, (100, 64)).astype(np.float32), "0.bias": np.zeros(100, np.float32),
               "2.weight": rng.normal(0, 0.1, (100, 100)).astype(np.float32), "2.bias": np.zeros(100, np.float32)},
              str(cwd / "torch_mlp.safetensors"))


def where(command: Command, cwd: Path) -> Path:
    """The dir a command runs in: the chapter's, but for two that need a world of their own."""
    if command.key == "make run":  # the repo's Makefile and installed venv; outputs/ in the test's dir
        here, venv = cwd / "checkout", Path(sys.prefix)
        (here / ".venv").mkdir(parents=True, exist_ok=True)
        for name in ("Makefile", "pyproject.toml"):
            (here / name).unlink(missing_ok=True)
            (here / name).symlink_to(ROOT / name)
        for name in ("bin", "lib", "pyvenv.cfg"):  # this venv, seen from .venv/ (python finds its site-packages)
            (here / ".venv" / name).unlink(missing_ok=True)
            (here / ".venv" / name).symlink_to(venv / name)
        (here / ".venv" / ".installed").touch()  # installed: it is the venv running this test
        outside_make = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        dry = subprocess.run(["make", "-n", "run"], cwd=here, capture_output=True, text=True, env=outside_make)
        assert dry.stdout.strip() == ".venv/bin/python -m runner", dry.stdout  # nothing else runs: no reinstall
        return here
    if command.key.startswith("python -m runner dataset=mnist1d transfer.source=best:digits"):
        here = cwd / "one_run"  # as the message docs/reuse.md shows says: one finished digits run under outputs/
        if not here.exists():
            shutil.copytree(cwd / "outputs/task_a", here / "outputs/task_a")
        return here
    return cwd


def run(command: Command, cwd: Path, env: dict[str, str]) -> Done:
    uncapped = command.key in UNCAPPED or chapter_of(command) == "pretraining"  # prints its test accuracy
    env = {**env, **({} if uncapped else {MAX_EPOCHS_VARIABLE: "1"})}
    here = where(command, cwd)
    if command.key not in SIGNALS:
        done = subprocess.run(["bash", "-c", command.text], cwd=here, env=env, capture_output=True, text=True,
                              timeout=900)
        return Done(command, done.returncode, done.stdout, done.stderr, here)
    sig, run_dir = SIGNALS[command.key]
    process = subprocess.Popen(["bash", "-c", command.text], cwd=here, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not any(
            m.read_text().count("\n") for m in here.glob(f"{run_dir}/metrics.jsonl")):
        time.sleep(0.02)
    os.killpg(process.pid, sig)
    stdout, stderr = process.communicate(timeout=300)
    return Done(command, process.returncode, stdout, stderr, here)


def check(done: Done) -> None:
    command = done.command
    said = f"{command.page} line {command.line}: {command.text}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n" \
           f"{done.stderr[-3000:]}"
    if command.printed and command.printed[0].startswith("error:"):
        assert done.returncode == 2 and done.stderr.splitlines() == list(command.printed), said
    elif command.printed:
        assert set(command.printed) <= set(done.lines), said
        assert done.returncode == 0, said
    if command.key in CHECKS:
        try:
            CHECKS[command.key](done)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{said}") from None
    elif chapter_of(command) == "pretraining":
        PRETRAINING_RESULT(done)
    elif not command.printed:
        assert done.returncode == 0, said


def chapters() -> dict[str, list[Command]]:
    """Each chapter's commands, in the order they run: their sections' order in SECTIONS, then page by page."""
    found: dict[str, list[Command]] = {}
    order = list(SECTIONS)
    for command in documented_commands():
        if (chapter := chapter_of(command)) is not None:
            found.setdefault(chapter, []).append(command)
    pages_ = pages()

    def place(command: Command) -> tuple[int, int, int]:
        key = _section_key(command)
        return order.index(key) if key in order else len(order), pages_.index(command.page), command.line
    return {chapter: sorted(commands, key=place) for chapter, commands in found.items()}


def environment(tmp_path: Path, tfds_dir: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    # A shell as a person has it: not inside `make test`'s make, whose MAKEFLAGS/MAKELEVEL would make `make run` a
    # sub-make that prints "make[1]: Entering directory" lines a person never sees. XLA compiles as for every command
    # the tests run (tests/conftest.py, FAST_COMPILE): the numbers the pages print hold within TOLERANCE.
    outer = (MAX_EPOCHS_VARIABLE, "RUNNER_SWEEP_ARGV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEFILES")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path / "home"), "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": os.environ["XLA_FLAGS"],
            "MPLCONFIGDIR": str(Path.home() / ".cache" / "matplotlib"),  # its font list
            "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))}


CHAPTERS = ("first steps", "resume and report", "transfer and use", "pretraining", "seeds", "replicas",
            "learning rate", "devices")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_readme_chapter_runs_as_printed(chapter, tmp_path, tfds_dir):
    env = environment(tmp_path, tfds_dir)
    commands = chapters()[chapter]
    brought(chapter, tmp_path)
    # `python -m runner...` forked from a server that has imported what it imports (tests/forkserver.py `Shim`),
    # still a process of its own as bash sees it; RUNNER_TESTS_FORK=0: the venv's python itself.
    shim = None if os.environ.get("RUNNER_TESTS_FORK", "1") == "0" else tmp_path / "forks"
    if shim is not None:
        env = {**env, "PATH": f"{shim / 'bin'}{os.pathsep}{env['PATH']}"}
        shim = Shim(env, shim)
    try:
        for command in commands:
            started = time.perf_counter()
            done = run(command, tmp_path, env)
            print(f"{time.perf_counter() - started:6.1f} s  {command.page} line {command.line}: {command.key}")  # -s
            check(done)
    finally:
        if shim is not None:
            shim.close()


def test_every_readme_command_is_run_or_listed():
    """Every command of README and docs/ runs in a chapter, or runs where a docs page prints it, or is in NOT_RUN."""
    commands = documented_commands()
    keys = {c.key for c in commands}
    unplaced = [f"{c.page} line {c.line} ({c.section}): {c.key}" for c in commands
                if chapter_of(c) is not None and chapter_of(c) not in CHAPTERS]
    assert not unplaced, "commands no chapter runs (add their section to SECTIONS, or them to NOT_RUN):\n" + \
        "\n".join(unplaced)
    for table in (NOT_RUN, CHECKS, UNCAPPED, SIGNALS):
        assert not set(table) - keys, f"no longer in README or docs/: {sorted(set(table) - keys)}"
    for key in SECTIONS:  # a heading alone names one page's section
        if isinstance(key, str):
            assert len({c.page for c in commands if c.section == key}) <= 1, f"{key!r} is on several pages"
    twice = sorted({c.key for c in commands if c.page != README and
                    sum(d.key == c.key and d.page != README for d in commands) > 1})
    assert not twice, f"printed on several docs pages (each runs once; keep one): {twice}"
    assert all(reason.strip() for reason in NOT_RUN.values())
    assert set(CHAPTERS) == set(chapters())
    for command in chapters()["pretraining"]:  # each says the test accuracy it gives
        assert re.fullmatch(r"0\.\d+", command.comment.split()[0] if command.comment else ""), command.text


def test_the_extractor_joins_continued_lines_and_reads_printed_output():
    text = "# t\n\n```sh\npython -m a x=1 \\\n    y=2   # two lines\n# a comment\nb 'c # d'  # e\n```\n\n" \
           "```\n$ f g\nerror: h\n$ i\n```\n\n```python\nimport j\n```\n"
    found = page_commands(README, text)
    assert [(c.key, c.line, c.printed) for c in found] == [
        ("python -m a x=1 y=2", 4, ()), ("b 'c # d'", 7, ()), ("f g", 11, ("error: h",)), ("i", 13, ())]
    assert found[0].comment == "two lines" and found[0].text == "python -m a x=1 \\\n    y=2   # two lines"


def test_tab_completion_offers_what_readme_shows(tmp_path):
    """What `runner optimizer=ad<Tab>` shows is what Hydra's bash completion answers for that line."""
    (command,) = [c for c in documented_commands() if c.key == "runner optimizer=ad<Tab>"]
    line = command.key.removesuffix("<Tab>")
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    answer = subprocess.run(["runner", "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert answer.stdout.split() == command.comment.split()
