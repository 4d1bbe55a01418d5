"""Fixtures for the data tests: no network; dataset nodes composed from conf/.

The session's tfds data dir, `tfds_dir`, is in tests/conftest.py.
"""

import socket

import pytest

from tests.conftest import compose_config


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Makes every network access fail at once: these tests must run offline, where a DNS lookup can hang."""

    def refuse(*args, **kwargs):
        raise OSError("tests/data must not use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def dataset():
    """`dataset(*overrides)`: the config's dataset node, composed from conf/dataset/ as `python -m runner` would."""
    return lambda *overrides: compose_config(*overrides).dataset
