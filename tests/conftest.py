"""Shared fixtures: a real nats-server with JetStream on free ports, a real S3 endpoint (moto)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from digits.natsserver import NatsServer
from tests.sns_local import LocalSns


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream, its store in the test's temporary directory."""
    server = NatsServer(tmp_path / "jetstream").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[nats.NATS]:
    """A client connected to the test's nats-server."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique() -> str:
    """A short unique name, so tests never collide on shared resources."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def stack(nats_server, tmp_path):
    """Start real services by module name, sharing one store; all stop (exit 0) at the end."""
    from digits.secrets import SecretBox
    from tests.services import ServiceProc

    started: list[ServiceProc] = []
    env = {
        "DIGITS_DATA_ROOTS": str(tmp_path),
        "DIGITS_STORE_URL": (tmp_path / "store").as_uri(),
        "DIGITS_SECRET_KEY": SecretBox.generate_key(),
        "DIGITS_INGEST_PROCS": "1",
        "DIGITS_ACK_WAIT_S": "6",
        "DIGITS_HARDWARE_S": "1",
    }

    def start(module: str, wait: bool = True, **overrides: str) -> ServiceProc:
        proc = ServiceProc(module, nats_server.url, tmp_path, **{**env, **overrides})
        started.append(proc)
        return proc.wait_healthy(60) if wait else proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            assert proc.stop(60) == 0, proc.log()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A real S3 endpoint over HTTP (moto's server) on a free port; its URL."""
    from moto.server import ThreadedMotoServer

    from digits.natsserver import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local() -> Iterator[LocalSns]:
    """SNS's side: the signing key, and the HTTP server of its certificate and SubscribeURL."""
    server = LocalSns()
    try:
        yield server
    finally:
        server.close()
