"""Run the real services as subprocesses for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from digits.natsserver import free_port
from tests.waiting import wait_for_sync


class ServiceProc:
    """A ``python -m <module>`` child with its health port and log file."""

    def __init__(self, module: str, nats_url: str, log_dir: Path, **env: str) -> None:
        self.module = module
        self.port = free_port()
        self.log_path = log_dir / f"{module}-{self.port}.log"
        child_env = dict(os.environ)
        child_env.update(
            {
                "DIGITS_NATS_URL": nats_url,
                "DIGITS_HEALTH_PORT": str(self.port),
                "DIGITS_DATA_DIR": str(log_dir / "data"),
                "DIGITS_HEARTBEAT_S": "0.5",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module], env=child_env, stdout=out, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path of the health server: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def healthy(self) -> bool:
        """Whether /healthz answers ok."""
        try:
            status, body = self.get("/healthz")
        except (urllib.error.URLError, OSError):
            return False
        return status == 200 and json.loads(body)["status"] == "ok"

    def wait_healthy(self, timeout: float = 30.0) -> ServiceProc:
        """Wait until /healthz says ok (and the process has not died)."""

        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited: {self.log()}")
            return self.healthy()

        wait_for_sync(check, timeout)
        return self

    def log(self) -> str:
        """The child's output so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.module} ignored SIGTERM for {timeout}s") from None
