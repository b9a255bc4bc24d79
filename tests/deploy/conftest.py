"""Fixtures for the deploy tests: passwords for deploy/nats/accounts.conf, a 3-node cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy.cluster import Cluster
from tests.deploy.natsconf import password_env


@pytest.fixture
def passwords(monkeypatch) -> dict[str, str]:
    """Fresh NATS_*_PASSWORD variables, set for the nats-server processes this test starts."""
    env = password_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def cluster(tmp_path, passwords) -> Iterator[Cluster]:
    """A running 3-node JetStream cluster on loopback with the deploy accounts and users."""
    nodes = Cluster(tmp_path / "cluster")
    try:
        yield nodes.start()
    finally:
        nodes.stop()
