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

Commands a shell runs (the docs' chapters, run as printed) reach a server by `python` on their PATH (`Shim`): a
`python -m runner...` hands the server its argv, cwd, environment and its own stdin, stdout and stderr (passed as
file descriptors over a Unix socket), forwards the signals it gets to the child, and ends as the child ended (its
exit code, or dying of its signal); any other `python` is the real one (exec'd). The server of a shell serves each
connection at once and refuses (the shim then execs the real python) a command whose environment differs from its own
in more than what is read only at run time (`RUN_TIME_VARIABLES`).
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from runner.training.process import exit_promptly

# What `python -m runner` imports before it trains (runner/__main__.py, runner/cli/run.py and what they import
# lazily: the dataset's catalogue), what a multirun's report imports (pyplot: 0.47 s of each sweep's end), and the
# other commands' heavy dependencies. Importing one a command would not have imported changes
# nothing it does: none of these acts at import beyond defining itself.
PRELOAD = ("jax", "jax.numpy", "flax", "optax", "orbax.checkpoint", "tensorflow_datasets", "hydra", "omegaconf",
           "rich", "matplotlib", "matplotlib.pyplot", "scipy.special", "runner.cli.preflight", "runner.cli.run",
           "runner.cli.callbacks", "runner.data.catalogue", "runner.report.tables", "runner.report.plots",
           "runner.training.process")


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


# What a shell adds to or changes in its commands' environment (bash: PWD, OLDPWD, SHLVL, _), and what the runner
# reads only once it runs (RUNNER_MAX_EPOCHS: at composition; PYTEST_CURRENT_TEST: pytest's; XLA_FLAGS: when the
# command's first JAX operation starts XLA's backend, which the server never does). Any other difference from the
# server's environment could have changed what the server's imports did: that command is not forked.
RUN_TIME_VARIABLES = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "RUNNER_MAX_EPOCHS", "PYTEST_CURRENT_TEST",
                                "XLA_FLAGS"})

SHIM = """#!{python} -IS
# `python` for a shell's commands (tests/forkserver.py): `-m {modules}...` forked from the server at {socket}.
import json, os, signal, socket, sys

REAL, SOCKET, MODULES = {python!r}, {socket!r}, {modules!r}
args = sys.argv[1:]


def real():
    os.execv(REAL, [REAL, *args])  # argv[0] the real path: python finds its venv from there


if len(args) < 2 or args[0] != "-m" or args[1].split(".")[0] not in MODULES:
    real()
pending, child = [], None
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# What this process was started ignoring (a shell's background job ignores SIGINT): the child ignores it too.
ignored = [int(s) for s in FORWARDED if signal.getsignal(s) == signal.SIG_IGN]


def forward(signum, frame):  # to the child, once it is forked; until then, kept for it
    os.kill(child, signum) if child else pending.append(signum)


for signum in FORWARDED:
    signal.signal(signum, forward)
try:
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(SOCKET)
except OSError:
    real()
request = {{"argv": args[1:], "cwd": os.getcwd(), "env": dict(os.environ), "ignored": ignored}}
socket.send_fds(conn, [json.dumps(request).encode() + b"\\n"], [0, 1, 2])
replies = conn.makefile("rb")
reply = json.loads(replies.readline())
if "refused" in reply:
    conn.close()
    real()
child = reply["pid"]
for signum in pending:
    os.kill(child, signum)
code = json.loads(replies.readline())["returncode"]
if code < 0:  # the child died of a signal: so does this process, as the shell would have seen it
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code)
"""


class Shim:
    """A server for a shell's commands: `bin/python` in `directory` (put it first on their PATH) hands each
    `python -m MODULE...` of `modules` to a server started with `env`, which must be their environment."""

    def __init__(self, env: dict[str, str], directory: Path, modules: tuple[str, ...] = ("runner",)):
        root = Path(__file__).resolve().parent.parent
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self._socket_dir = tempfile.mkdtemp()  # a short path: a Unix socket's is at most 107 bytes
        self.socket = Path(self._socket_dir) / "server"
        self.process = subprocess.Popen([sys.executable, "-m", "tests.forkserver", "--socket", str(self.socket)],
                                        cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        shim = self.bin / "python"
        shim.write_text(SHIM.format(python=sys.executable, socket=str(self.socket), modules=modules))
        shim.chmod(0o755)
        if self.process.stdout.readline() != b"ready\n":  # its imports done: the first command need not wait
            raise RuntimeError(f"the fork server ended (exit code {self.process.wait()})")

    def close(self) -> None:
        self.process.stdin.close()  # the server stops at the end of its input; its children run on
        self.process.wait(timeout=30)
        (self.bin / "python").unlink()
        self.socket.unlink(missing_ok=True)
        os.rmdir(self._socket_dir)


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


def serve_shell(listener: socket.socket, lifeline, own_env: dict[str, str]) -> None:
    """Fork a child for each shim's connection on `listener` and tell it how the child ended, until `lifeline`
    (the server's stdin) ends; several children may run at once (a pipeline of two commands)."""
    from jax._src import xla_bridge

    children: dict[int, socket.socket] = {}
    while True:
        readable = select.select([listener, lifeline], [], [], 0.02 if children else None)[0]
        if lifeline in readable and not os.read(lifeline.fileno(), 4096):
            return
        if listener in readable:
            conn, _ = listener.accept()
            request, fds = _received(conn)
            refused = sorted(k for k in set(request["env"]) ^ set(own_env) | {
                k for k in set(request["env"]) & set(own_env) if request["env"][k] != own_env[k]}
                if k not in RUN_TIME_VARIABLES)
            if refused:
                conn.sendall(json.dumps({"refused": refused}).encode() + b"\n")
            else:
                assert threading.active_count() == 1 and not xla_bridge._backends, "the fork server started a runtime"
                pid = os.fork()
                if pid == 0:
                    for held in (listener, conn, *children.values()):
                        held.close()
                    _child(request, fds)
                children[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            for fd in fds:
                os.close(fd)  # the child's now: held here, its caller would not see the end of its output
            if refused:
                conn.close()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid)
            returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            conn.sendall(json.dumps({"returncode": returncode}).encode() + b"\n")
            conn.close()


def _received(conn: socket.socket) -> tuple[dict, list[int]]:
    """A shim's request line and the standard streams sent with it."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return json.loads(data), list(fds)


def _child(request: dict, streams: list[int] | None = None) -> None:
    """Become the command: `streams` its stdin, stdout and stderr (a shim's), else /dev/null and the request's files."""
    try:
        os.chdir(request["cwd"])
        os.environ.clear()  # the server's, bar what no import read (the caller keys its servers by the rest)
        os.environ.update(request["env"])
        if streams is None:
            stdin = os.open(os.devnull, os.O_RDONLY)  # not the server's stdin, which holds the requests
            streams = [stdin] + [os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                                 for name in ("stdout", "stderr")]
        for fd, stream in enumerate(streams):
            os.dup2(stream, fd)
            os.close(stream)
        os.write(2, _IMPORT_STDERR)
        if "ignored" in request:  # a shim's command: the signals its process ignored, as python would have them
            for signum in SHIM_SIGNALS:
                default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, signal.SIG_IGN if signum in request["ignored"] else default)
        sys.path[0] = os.getcwd()  # as `python -m` puts the cwd first
        sys.argv = ["-m", *request["argv"][1:]]
        try:
            runpy.run_module(request["argv"][0], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code
        except KeyboardInterrupt:  # as the interpreter ends on one: its traceback, then death by SIGINT
            traceback.print_exc()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
            code = 1
        exit_promptly(code)  # the interpreter's exit, as `python -m runner` ends its own (never returns)
    finally:
        os._exit(1)  # only if setting the child up failed


_IMPORT_STDERR = b""  # what the imports printed on stderr, once
# The signals a shim passes on (SHIM's FORWARDED): a shim's child takes from the shim which of them it ignores.
SHIM_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

if __name__ == "__main__":
    _OWN_ENV = dict(os.environ)  # as started, before any import could add to it
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
    if sys.argv[1:2] == ["--socket"]:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(sys.argv[2])
        listener.listen(8)
        replies.write("ready\n")
        replies.close()  # the shims' sockets say the rest
        serve_shell(listener, sys.stdin, _OWN_ENV)
    else:
        serve(sys.stdin, replies)
