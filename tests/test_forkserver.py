"""tests/forkserver.py: a command forked from the server reports what `python -m` of it reports, as a process of
its own (the definition: subprocess.run, with the same argv, cwd and environment); one a shell runs through the
`Shim` reports to the shell what the real `python` would have (the definition: the same shell command without it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from tests.forkserver import ForkServer, Shim

# A module the command runs: what it sees of its process, then the ending its first argument asks for.
PROBE = '''
import json, os, signal, sys
print(json.dumps({"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "cwd": os.getcwd(),
                  "path0": sys.path[0], "probe": os.environ.get("PROBE"),
                  "test": os.environ.get("PYTEST_CURRENT_TEST"), "stdin": sys.stdin.read(),
                  "name": __name__, "ppid": os.getppid()}))
print("on stderr", file=sys.stderr)
ending = sys.argv[1]
if ending == "raise":
    raise ValueError("raised")
if ending == "message":
    sys.exit("a message")
if ending == "kill":
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if ending == "os_exit":
    sys.stdout.flush()
    os._exit(7)
sys.exit(int(ending))
'''

ENDINGS = ["0", "3", "raise", "message", "kill", "os_exit"]


@pytest.fixture(scope="module")
def server():
    env = {**os.environ, "PROBE": "server"}
    server = ForkServer(env)
    yield server, env
    server.close()


def seen(stdout: str) -> dict:
    """What the probe saw of its process, bar its parent (the server's pid, for a forked one)."""
    first, _, rest = stdout.partition("\n")
    return {**{k: v for k, v in json.loads(first).items() if k != "ppid"}, "rest": rest}


def without_traceback_paths(text: str) -> str:
    """A traceback's frames name runpy's functions, which differ between `python -m` and run_module."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("  "))


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_forked_command_reports_what_its_own_process_reports(server, tmp_path, ending):
    server, env = server
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**env, "PYTEST_CURRENT_TEST": "another test"}  # what may differ from the server's env
    forked = server.run(["probe", ending, "x y"], tmp_path, env, timeout=60)
    alone = subprocess.run([sys.executable, "-m", "probe", ending, "x y"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert forked.returncode == alone.returncode
    assert seen(forked.stdout) == seen(alone.stdout)
    assert without_traceback_paths(forked.stderr) == without_traceback_paths(alone.stderr)
    assert '"test": "another test"' in forked.stdout and '"name": "__main__"' in forked.stdout


def test_a_command_past_its_timeout_is_killed_and_raises_as_subprocess_does(server, tmp_path):
    server, env = server
    (tmp_path / "sleeper.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        server.run(["sleeper"], tmp_path, env, timeout=2)
    # and the server goes on serving
    (tmp_path / "probe.py").write_text(PROBE)
    assert server.run(["probe", "0"], tmp_path, env, timeout=60).returncode == 0


def test_a_busy_server_leaves_the_command_to_its_own_process(server, tmp_path):
    server, env = server
    with server.lock:  # another thread's command in flight
        assert server.run(["probe", "0"], tmp_path, env, timeout=60) is None


# ---- a shell's commands, through the Shim ----

@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """The shell environment of the commands below, PATH starting at the shim, and the Shim serving it."""
    where = tmp_path_factory.mktemp("shim")
    env = {**os.environ, "PROBE": "server", "PATH": f"{where / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    shim = Shim(env, where, modules=("probe",))
    yield shim, env
    shim.close()


def in_bash(command: str, cwd, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          **kwargs)


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_shells_command_through_the_shim_reports_what_the_real_python_reports(shell, tmp_path, ending):
    shim, env = shell
    (tmp_path / "probe.py").write_text(PROBE)
    command = f"python -m probe {ending} 'x y'"
    forked = in_bash(command, tmp_path, env, input="typed")
    real = in_bash(command, tmp_path, {**env, "PATH": env["PATH"].split(os.pathsep, 1)[1]}, input="typed")
    assert json.loads(forked.stdout.partition("\n")[0])["ppid"] == shim.process.pid  # forked by the server
    assert forked.returncode == real.returncode
    assert seen(forked.stdout) == seen(real.stdout)
    assert without_traceback_paths(forked.stderr) == without_traceback_paths(real.stderr)
    assert '"stdin": "typed"' in forked.stdout


SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


def sleeping(env, tmp_path, sigint: str) -> Iterator[subprocess.Popen]:
    """`python -m probe` (SLEEPER) from bash, through the shim and then by the real python, each started with SIGINT
    `sigint` (SIG_DFL as from a terminal; SIG_IGN as a background job's, which a shell cannot undo) in a session
    of its own, once it printed that it started."""
    (tmp_path / "probe.py").write_text(SLEEPER)
    start = [sys.executable, "-c", f"import os, signal, sys; signal.signal(signal.SIGINT, signal.{sigint}); "
             "os.execvp(sys.argv[1], sys.argv[1:])", "bash", "-c", "python -m probe"]
    for path in (env["PATH"], env["PATH"].split(os.pathsep, 1)[1]):  # through the shim, then the real python
        process = subprocess.Popen(start, cwd=tmp_path, env={**env, "PATH": path}, stdout=subprocess.PIPE, text=True,
                                   start_new_session=True)
        assert process.stdout.readline() == "started\n"
        yield process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_shells_command_reaches_the_forked_child_and_ends_the_shell_as_it_ended_it(shell, tmp_path,
                                                                                                   signum):
    endings = []
    for process in sleeping(shell[1], tmp_path, "SIG_DFL"):
        started = time.perf_counter()
        os.killpg(process.pid, signum)  # as a terminal's Ctrl-C or a scheduler's stop: the whole group
        endings.append(process.wait(timeout=30))
        assert time.perf_counter() - started < 10  # not the sleep's end
    assert endings[0] == endings[1] and endings[0] < 0  # Python's death by SIGINT, or SIGTERM's default


def test_a_command_started_ignoring_sigint_ignores_it_when_forked_as_the_real_python_does(shell, tmp_path):
    endings = []
    for process in sleeping(shell[1], tmp_path, "SIG_IGN"):
        os.killpg(process.pid, signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # still sleeping
            process.wait(timeout=1)
        os.killpg(process.pid, signal.SIGTERM)
        endings.append(process.wait(timeout=30))
    assert endings == [-signal.SIGTERM, -signal.SIGTERM]


def test_a_command_whose_environment_differs_is_run_by_the_real_python(shell, tmp_path):
    shim, env = shell
    (tmp_path / "probe.py").write_text(PROBE)
    done = in_bash("PROBE=mine python -m probe 0", tmp_path, env)
    assert done.returncode == 0 and '"probe": "mine"' in done.stdout
    assert json.loads(done.stdout.partition("\n")[0])["ppid"] != shim.process.pid
    other = in_bash("python -c 'print(6 * 7)'", tmp_path, env)  # not -m of its modules: the real python too
    assert other.stdout == "42\n"
