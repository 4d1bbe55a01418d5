"""A fork server for the tests' `python -m runner...` commands: each command is still a process of its own, forked
from one that has already imported what every command imports.

A command started by `python -m` spends ~1.5 s of CPU importing jax, flax, optax, orbax, tfds, Hydra and the
runner before it reads its first argument; the tests start some 400 of them. The server (one per pytest worker
and environment) imports those once and forks a child for each command. The child is what `python -m MODULE
ARGS` would be from there on: its own pid, the command's cwd, environment, argv, sys.path[0] and standard streams
(files the caller reads), the module run as `__main__` by runpy, the exit code of `sys.exit` or of its own
`os._exit`, and a signal's death reported as subprocess reports it (-N). What it shares with the server was set
before any command: modules imported under the same environment (the caller keys its servers by environment,
bar pytest's PYTEST_CURRENT_TEST, which the child takes from the command as it takes the rest), no thread and no JAX backend started (so forking is safe; checked before each fork),
and what those imports printed on stderr, which each child prints first, as a fresh process would.

Protocol, a line of JSON each way: {"argv", "cwd", "env", "stdout", "stderr"} in; {"pid"} once forked, then
{"returncode"} when the child has ended.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from runner.training.process import exit_promptly

# What `python -m runner` imports before it trains (runner/__main__.py, runner/cli/run.py and what they import
# lazily), and the other commands' heavy dependencies. Importing one a command would not have imported changes
# nothing it does: none of these acts at import beyond defining itself.
PRELOAD = ("jax", "jax.numpy", "flax", "optax", "orbax.checkpoint", "tensorflow_datasets", "hydra", "omegaconf",
           "rich", "matplotlib", "scipy.special", "runner.cli.preflight", "runner.cli.run", "runner.cli.callbacks",
           "runner.report.tables", "runner.training.process")


class ForkServer:
    """The client: a server for one environment, started at its first command."""

    def __init__(self, env: dict[str, str]):
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], cwd=root, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.pending = b""

    def run(self, argv: list[str], cwd: Path, env: dict[str, str],
            timeout: float) -> subprocess.CompletedProcess | None:
        """`python -m *argv` in `cwd` as subprocess.run(capture_output=True, text=True) reports it; None when the
        server is busy with another thread's command (the caller starts a process of its own)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
                request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
                self.process.stdin.write((json.dumps(request) + "\n").encode())
                self.process.stdin.flush()
                pid = self._reply(None)["pid"]
                ended = self._reply(timeout)
                if ended is None:
                    os.kill(pid, signal.SIGKILL)
                    self._reply(None)
                    raise subprocess.TimeoutExpired([sys.executable, "-m", *argv], timeout,
                                                    out.read_bytes(), err.read_bytes())
                return subprocess.CompletedProcess([sys.executable, "-m", *argv], ended["returncode"],
                                                   out.read_text(), err.read_text())
        finally:
            self.lock.release()

    def _reply(self, timeout: float | None) -> dict | None:
        """The server's next line, read from its pipe without a buffer that select cannot see; None on timeout."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            if not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit code {self.process.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()  # its loop ends at the end of its input
        self.process.wait(timeout=30)


def serve(requests, replies) -> None:
    from jax._src import xla_bridge

    for line in requests:
        request = json.loads(line)
        # Forking is safe only from a process with one thread and no XLA runtime; a command never runs in the server.
        assert threading.active_count() == 1 and not xla_bridge._backends, "the fork server started a runtime"
        pid = os.fork()
        if pid == 0:
            replies.close()  # the server's end of the protocol: no command's to hold
            _child(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        replies.write(json.dumps({"returncode": returncode}) + "\n")
        replies.flush()


def _child(request: dict) -> None:
    try:
        os.chdir(request["cwd"])
        os.environ.clear()  # the server's, bar what no import read (the caller keys its servers by the rest)
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)  # not the server's stdin, which holds the requests
        os.dup2(stdin, 0)
        os.close(stdin)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.write(2, _IMPORT_STDERR)
        sys.path[0] = os.getcwd()  # as `python -m` puts the cwd first
        sys.argv = ["-m", *request["argv"][1:]]
        try:
            runpy.run_module(request["argv"][0], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
        exit_promptly(code)  # the interpreter's exit, as `python -m runner` ends its own (never returns)
    finally:
        os._exit(1)  # only if setting the child up failed


_IMPORT_STDERR = b""  # what the imports printed on stderr, once

if __name__ == "__main__":
    # The protocol has the server's stdin and a dup of its stdout; fd 1 and 2 are the children's to take.
    replies = os.fdopen(os.dup(1), "w")
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 1)
    with tempfile.TemporaryFile() as imports_stderr:
        os.dup2(imports_stderr.fileno(), 2)
        for name in PRELOAD:
            __import__(name)
        sys.stdout.flush()
        sys.stderr.flush()
        imports_stderr.seek(0)
        _IMPORT_STDERR = imports_stderr.read()
    os.dup2(nowhere, 2)
    serve(sys.stdin, replies)
