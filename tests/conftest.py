"""Shared fixtures: one tfds data dir per session, the real config composed and shrunk for CPU."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# compose_config and compose_shared: tests import them from here
from runner.config.compose import compose_config, compose_shared, register_schemas  # noqa: F401
from tests.forkserver import ForkServer

register_schemas()
# The tests' programs are small and compiling is most of their cost, so every program the tests compile (in process,
# and in the commands they run) is compiled for a short compile: XLA's backend optimizations off (-25% of the
# in-process tests' time), its CPU fusion emitters off, and one codegen part rather than parallel ones whose threads
# contend with the other worker's (these two: the whole suite in one session 1,127 -> 958 CPU-s, 10 min 2 s -> 8 min
# 36 s, measured 2026-12-07 with jax 0.10.2). The numbers differ from XLA's defaults in the last digits: runs are
# compared under the same flags, and a claim that hangs on the rounding runs under XLA's defaults, as a user's
# command compiles (USER_XLA_FLAGS); make run, make bench and make book keep XLA's defaults.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
                "--xla_cpu_parallel_codegen_split_count=1")
# The flags this process started with, the fast ones added: a worker or a test's subprocess (forced devices) that
# imports this module keeps what it was given. The user's own, as the session was started with them, are handed on
# under a name of their own: xdist's workers inherit the controller's XLA_FLAGS, the fast ones among them.
_STARTED_WITH = os.environ.get("XLA_FLAGS", "")
USER_XLA_FLAGS = os.environ.setdefault("RUNNER_TESTS_USER_XLA_FLAGS", _STARTED_WITH)
_MISSING = [flag for flag in FAST_COMPILE if flag not in _STARTED_WITH.split()]
os.environ["XLA_FLAGS"] = " ".join([_STARTED_WITH, *_MISSING]).strip()
ROOT = Path(__file__).resolve().parent.parent


# The tiers, by a rule over measured costs rather than a list: a test is slow when its setup and call took
# SLOW_SECONDS or more (tests/durations.json, written by `make test-durations` on 2 quiet cores), and so is every test
# of an xdist group whose shared fixture alone took that long (the fixture would run for any member of the group).
# `make test` runs the tests that are not slow, `make test-slow` the slow ones (CI runs both: every test), `make
# test-full` every test in one session. A test not measured yet (new, or under a second) runs in make test until it
# is measured.
DURATIONS = ROOT / "tests" / "durations.json"
# Where make test stays under 4 minutes on 2 cores with a margin: at 2 s, 154 of 1,986 tests are slow; make test
# took 2 min 56 s and CI, both tiers with the install, 9 min 6 s (at 3 s, 86 slow: 3 min 18 s and 9 min 10 s;
# durations measured 2026-12-07, under the tests' fast compile).
SLOW_SECONDS = 2.0


@functools.cache
def measured() -> dict[str, dict]:
    """Each measured test's {"setup", "call", "group"} seconds, by node id."""
    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


def slow_groups(tests: dict[str, dict], threshold: float = SLOW_SECONDS) -> set[str]:
    """The xdist groups whose shared fixture alone took `threshold` or more, by the measured `tests`."""
    return {t["group"] for t in tests.values() if t["group"] and t["setup"] >= threshold}


def is_slow(node_id: str, group: str | None, tests: dict[str, dict], threshold: float = SLOW_SECONDS,
            groups: set[str] | None = None) -> bool:
    """Whether the test `node_id` (of xdist group `group`) took `threshold` or more, by the measured `tests`
    (`groups`: their slow_groups at that threshold, if worked out already)."""
    cost = tests.get(node_id.partition("@")[0])
    groups = slow_groups(tests, threshold) if groups is None else groups
    return (cost is not None and cost["setup"] + cost["call"] >= threshold) or group in groups


@functools.cache
def _measured_slow_groups() -> frozenset[str]:
    return frozenset(slow_groups(measured()))


def pytest_itemcollected(item):
    group = item.get_closest_marker("xdist_group")
    if is_slow(item.nodeid, group.args[0] if group else None, measured(), groups=_measured_slow_groups()):
        item.add_marker(pytest.mark.slow)


def pytest_addoption(parser):
    parser.addoption("--write-durations", action="store_true",
                     help=f"write each test's setup and call seconds to {DURATIONS.relative_to(ROOT)} "
                          "(make test-durations)")


_durations: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):
        node_id, _, group = report.nodeid.partition("@")  # xdist names a grouped test <nodeid>@<group>
        entry = _durations.setdefault(node_id, {"setup": 0.0, "call": 0.0, "group": group or None})
        entry[report.when] += report.duration


def merged_durations(known: dict[str, dict], ran: dict[str, dict]) -> dict[str, dict]:
    """`known` with each test that `ran` measured anew: kept from 1 s (the slow tier's rule needs no less)."""
    merged = {k: v for k, v in known.items() if k not in ran}
    merged.update({k: {**v, "setup": round(v["setup"], 2), "call": round(v["call"], 2)}
                   for k, v in ran.items() if v["setup"] + v["call"] >= 1.0})
    return dict(sorted(merged.items()))


def pytest_sessionfinish(session):
    for server in _fork_servers.values():
        server.close()
    # Tests not run this time keep what they measured before: a run of a few files updates only theirs.
    if session.config.getoption("--write-durations") and not hasattr(session.config, "workerinput"):
        DURATIONS.write_text(json.dumps(merged_durations(measured(), _durations), indent=1) + "\n")


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which names each xdist_group test
def pytest_collection_modifyitems(config, items):
    """make test's `--dist loadgroup`, as pytest-xdist means it: xdist (3.8) names a test marked
    xdist_group("g") `<nodeid>@g`, by which its scheduler sends a group's tests to one worker, by setting
    item._nodeid, which this pytest (9.2) no longer reads (a node's id is item._id, a NodeId). Unnamed, the tests
    of a group went to any worker and each worker ran the group's shared fixture again (measured: the optimizer
    sweep of tests/test_book_parity.py twice, 88 s each). The name xdist meant, set where pytest reads it; a no-op
    without --dist loadgroup, and once xdist sets it itself."""
    import dataclasses

    for item in items:
        meant, node_id = getattr(item, "_nodeid", None), getattr(item, "_id", None)
        if not isinstance(meant, str) or meant == item.nodeid or not dataclasses.is_dataclass(node_id):
            continue
        named = dataclasses.replace(node_id, names=(*node_id.names[:-1], meant.rpartition("::")[2]), params=None)
        if str(named) == meant:
            item._id = named
    items[:] = costliest_first(items, measured())


def costliest_first(items: list, tests: dict[str, dict]) -> list:
    """The items with the costliest unit first, by the `tests` measured (tests/durations.json): a unit is an
    xdist_group (one worker runs it) or a module (its tests stay together, so its module fixtures are made once per
    worker); within a unit, as collected. xdist hands the units out in this order as workers free up, so the last
    ones are cheap and both workers finish at about the same time (collected order left a 60 s unit to the end)."""
    def unit(item) -> str:
        group = item.get_closest_marker("xdist_group")
        return f"@{group.args[0]}" if group else item.nodeid.split("::")[0]

    cost: dict[str, float] = {}
    for item in items:
        seconds = tests.get(item.nodeid.partition("@")[0], {"setup": 0.0, "call": 0.0})
        cost[unit(item)] = cost.get(unit(item), 0.0) + seconds["setup"] + seconds["call"]
    return sorted(items, key=lambda item: -cost[unit(item)])  # stable: a unit's items keep their order


@pytest.fixture(autouse=True)
def fresh_programs():
    """Each test starts without the parts and programs an earlier test's runs kept (runner/training/programs.py),
    as a fresh process would: a test that changes how parts are built gets what it built."""
    from runner.training import programs

    programs.forget()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> None:
    """One persistent cache of compiled programs per worker, for its tests and the commands they run (kept out of
    the user's home). The tests build their programs anew (fresh closures), so JAX's in-memory caches miss; an
    identical program is read back from here instead of compiled again (the in-process tests: -10% CPU)."""
    import jax

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # as runs set it: every program


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    """A tfds data dir shared by the whole session, so embedded datasets are built once."""
    path = tmp_path_factory.mktemp("tfds")
    os.environ["TFDS_DATA_DIR"] = str(path)
    return path


# One fork server per environment the tests' commands run in (tests/forkserver.py): a command forked from it skips
# the ~1.5 s of imports every `python -m runner` starts with. RUNNER_TESTS_FORK=0 starts each as a process of its own.
_fork_servers: dict[tuple, ForkServer] = {}


def fork_server(env: dict[str, str]) -> ForkServer | None:
    if os.environ.get("RUNNER_TESTS_FORK", "1") == "0":
        return None
    key = tuple(sorted((k, v) for k, v in env.items() if k != "PYTEST_CURRENT_TEST"))  # pytest's, set per test
    if key not in _fork_servers:
        _fork_servers[key] = ForkServer(env)
    return _fork_servers[key]


class Runner:
    """Runs `python -m runner` in a working dir, as a user would from a shell. A Runner whose env is left as made
    here runs its commands through the fork server of that env; one given another env starts a process each."""

    def __init__(self, cwd: Path, tfds_dir: Path):
        self.cwd, self.env = cwd, {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu"}
        self._made_env = dict(self.env)

    def __call__(self, *args: str, module: str = "runner", timeout: float = 300,
                 fork: bool = True) -> subprocess.CompletedProcess:
        """`fork=False`: a process started afresh (its own imports and hash seed), where that is the claim."""
        server = fork_server(self.env) if fork and self.env == self._made_env else None
        done = server.run([module, *args], self.cwd, self.env, timeout) if server is not None else None
        if done is not None:
            return done
        return subprocess.run([sys.executable, "-m", module, *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def run_dirs(self) -> list[Path]:
        """Every run dir under outputs/ (single runs and multirun jobs), oldest first."""
        return sorted(p.parent for p in (self.cwd / "outputs").rglob("summary.json"))


def trained_run(tmp_path_factory, tfds_dir: Path, name: str, *overrides: str) -> Path:
    """The run dir of one `python -m runner *overrides` in a fresh working dir: a module's shared finished run."""
    runner = Runner(tmp_path_factory.mktemp(name), tfds_dir)
    result = runner(*overrides, "hydra.run.dir=outputs/a")
    assert result.returncode == 0, result.stderr
    return runner.cwd / "outputs" / "a"


@pytest.fixture
def cli(tmp_path, tfds_dir) -> Runner:
    return Runner(tmp_path, tfds_dir)


@pytest.fixture(scope="session")
def bench_smoke(tmp_path_factory, tfds_dir) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`python -m runner.bench --smoke` (every section: the cases, data parallel on forced CPU devices, predictions)
    as it ended, its results.json read, and its path: tests/test_bench.py, test_bench_inference.py and
    test_devices.py each read their section, in xdist_group("bench_smoke"). Compiled as the tests compile (FAST_COMPILE;
    no number is checked against another program's), into the worker's compile cache, every program: at
    the smoke sizes the cases share programs (mlp20x100_b32 and _b128 both run batch 16), read back, not compiled
    again (-2 s)."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    done = subprocess.run([sys.executable, "-m", "runner.bench", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*/results.json")
    return done, json.loads(path.read_text()), path


VANISHING_GRADIENTS_SWEEP = ("-m", "+experiment=vanishing_gradients",
                             "experiment/vanishing_gradients=sigmoid_normal,elu_he", "trainer.epochs=1",
                             "trainer.seed=0,1,2")


@pytest.fixture(scope="session")
def vanishing_gradients_sweep(tmp_path_factory, tfds_dir) -> Path:
    """The sweep dir of `python -m runner VANISHING_GRADIENTS_SWEEP` (six jobs and the report, plots included), which
    tests/test_book_parity.py (the ordering over the seeds) and tests/cli/test_experiments.py (what the preset's
    multirun writes) both read: their tests share xdist_group("vanishing_gradients_sweep"), one worker runs it."""
    runner = Runner(tmp_path_factory.mktemp("vanishing_gradients"), tfds_dir)
    result = runner(*VANISHING_GRADIENTS_SWEEP, "hydra.sweep.dir=outputs/sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    return runner.cwd / "outputs" / "sweep"


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a dir): equal snapshots mean nothing changed."""
    root = Path(root)
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


