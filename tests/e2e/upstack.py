"""A `digits up` process for end-to-end tests, and how to ask it whether it is healthy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import psutil

from digits import natsauth
from digits.natsserver import free_port


def cmdline(proc: psutil.Process) -> str:
    """A process's command line ('' once it has exited)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def health(port: int) -> dict | None:
    """The gateway's /healthz.json, or None while it is not answering."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz.json", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Stack:
    """A `digits up` process in a data dir."""

    def __init__(self, data_dir, log_path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port, self.nats_port = free_port(), free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "digits.cli",
                    "up",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(self.port),
                    "--nats-port",
                    str(self.nats_port),
                    *extra,
                ],
                stdout=out,
                env={**os.environ, **(env or {})},
                stderr=subprocess.STDOUT,
            )

    def all_alive(self) -> dict | None:
        """The health report once NATS and all four services are alive."""
        if self.proc.poll() is not None:
            raise AssertionError(f"digits up exited: {self.log_path.read_text()}")
        report = health(self.port)
        return report if report and report["status"] == "ok" else None

    def children(self) -> list[psutil.Process]:
        """Every process `digits up` started (services and nats-server)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self) -> int:
        """Ctrl-C, as a person would; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)

    def nats_url(self, user: str = "admin") -> str:
        """A URL that signs in to the stack's (locked) NATS as ``user``."""
        return natsauth.user_url(self.data_dir, user)

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"
