"""Fault-suite fixtures: one nats-server and the real services as processes, for a whole module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from digits.natsserver import NatsServer
from digits.secrets import SecretBox
from tests.services import ServiceProc


class ServiceStack:
    """A nats-server with JetStream and the services started on it, sharing one file store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"  # DIGITS_DATA_ROOTS: where datasets may be read from
        self.store = root / "store"
        self.data.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(root / "jetstream").start()
        self.procs: dict[str, ServiceProc] = {}
        self.env = {
            "DIGITS_DATA_ROOTS": str(self.data),
            "DIGITS_STORE_URL": self.store.as_uri(),
            "DIGITS_SECRET_KEY": SecretBox.generate_key(),
            "DIGITS_INGEST_PROCS": "1",
            "DIGITS_VIEW_PROCS": "1",
            "DIGITS_ACK_WAIT_S": "6",
            "DIGITS_HARDWARE_S": "1",
        }

    def start(self, module: str, wait: bool = True, **env: str) -> ServiceProc:
        """Start ``python -m module`` (the stack's env, then ``env``); wait until it is healthy."""
        proc = ServiceProc(module, self.nats.url, self.root, **{**self.env, **env})
        self.procs[module] = proc
        return proc.wait_healthy(60) if wait else proc

    def dead(self) -> list[str]:
        """The services that exited or whose /healthz is not ok, each with its log's tail."""
        return [
            f"{module} (exit {p.proc.poll()}): ...{p.log()[-3000:]}"
            for module, p in self.procs.items()
            if p.proc.poll() is not None or not p.healthy()
        ]

    def close(self) -> list[str]:
        """SIGTERM every service and the server; the services that did not exit 0."""
        bad = []
        for module, proc in self.procs.items():
            code = proc.stop(60)
            if code != 0:
                bad.append(f"{module} exited {code}: ...{proc.log()[-3000:]}")
        self.nats.stop()
        return bad


@pytest.fixture(scope="module")
def service_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceStack]:
    """A ServiceStack for the module; every service it started must stop with exit code 0."""
    stack = ServiceStack(tmp_path_factory.mktemp("faults"))
    try:
        yield stack
    finally:
        bad = stack.close()
    assert not bad, bad
