"""Waits on the network end within 15 s with one line naming the address and the setting, exit 2, no stack dump:
an MLflow tracking server that refuses or never answers, and a JAX coordinator nothing listens on. Loopback only."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from runner.errors import UserError
from runner.scale.distributed import check_coordinator_port, launched_processes, wait_for_coordinator

# Each case checks what the one line says: the bound it waited (the runner's own 5 s or 10 s, or the user's 1 s).
# Not the wall time, which a loaded machine stretches past any bound: the subprocess's timeout only keeps a hang
# from stalling the suite.
LOOSE_S = 120


@pytest.fixture
def silent_port():
    """A loopback port that takes connections and never answers (the kernel completes the handshake)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def _one_line(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr and "Check failure" not in result.stderr, lines
    for word in words:
        assert word in lines[0], (word, lines[0])


# (how the server fails, the user's MLFLOW_HTTP_REQUEST_TIMEOUT or None): the runner's own bound waits 5 s for a
# silent server; a setting of the user's stands (1 s here).
MLFLOW_CASES = [("refused", None), ("silent", None), ("silent", "1")]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                    reason="mlflow is not installed (pip install -e '.[tracking]')")
@pytest.mark.parametrize("how, timeout", MLFLOW_CASES)
def test_an_unreachable_mlflow_server_is_one_line_within_15_s(cli, how, timeout, request):
    port = 9 if how == "refused" else request.getfixturevalue("silent_port")  # 9: discard, nothing listens
    uri = f"http://127.0.0.1:{port}"
    if timeout is not None:
        cli.env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = timeout
    result = cli("logger=[jsonl,mlflow]", f"logger.mlflow.tracking_uri={uri}", "trainer.epochs=1", timeout=LOOSE_S)
    said = ("connection refused" if how == "refused"
            else f"no answer within MLFLOW_HTTP_REQUEST_TIMEOUT={timeout or 5} s")
    _one_line(result, "logger.mlflow.tracking_uri", uri, said)
    assert not (cli.cwd / "outputs").exists()


# The default wait (10 s after the process started), and a shorter one of the user's.
@pytest.mark.parametrize("wait", [None, "1"])
def test_an_unreachable_jax_coordinator_is_one_line_within_15_s(cli, wait):
    cli.env.update(JAX_COORDINATOR_ADDRESS="127.0.0.1:9", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
    if wait is not None:
        cli.env["RUNNER_COORDINATOR_WAIT_S"] = wait
    result = cli("trainer.epochs=1", f"hydra.run.dir={cli.cwd / 'run'}", timeout=LOOSE_S)
    _one_line(result, "JAX_COORDINATOR_ADDRESS=127.0.0.1:9", "connection refused", f"{wait or 10} s after",
              "RUNNER_COORDINATOR_WAIT_S")


def test_a_coordinator_that_listens_is_joined_at_once(silent_port):
    wait_for_coordinator({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{silent_port}", "RUNNER_COORDINATOR_WAIT_S": "0"})


def test_a_coordinator_port_in_use_is_refused_for_process_0(silent_port):
    with pytest.raises(UserError, match=f"JAX_COORDINATOR_ADDRESS=127.0.0.1:{silent_port}: process 0 cannot listen"):
        check_coordinator_port({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{silent_port}"})


@pytest.mark.parametrize("address", ["node0", "node0:port", ":1234", "node0:70000"])
def test_a_coordinator_address_that_is_not_host_port_is_refused_before_jax_starts(address):
    environ = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    with pytest.raises(UserError, match=f"JAX_COORDINATOR_ADDRESS={address}: must be host:port"):
        launched_processes(environ)
