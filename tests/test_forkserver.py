"""tests/forkserver.py: a command forked from the server reports what `python -m` of it reports, as a process of
its own (the definition: subprocess.run, with the same argv, cwd and environment)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.forkserver import ForkServer

# A module the command runs: what it sees of its process, then the ending its first argument asks for.
PROBE = '''
import json, os, signal, sys
print(json.dumps({"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "cwd": os.getcwd(),
                  "path0": sys.path[0], "probe": os.environ.get("PROBE"),
                  "test": os.environ.get("PYTEST_CURRENT_TEST"), "stdin": sys.stdin.read(),
                  "name": __name__}))
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
    assert forked.stdout == alone.stdout
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
