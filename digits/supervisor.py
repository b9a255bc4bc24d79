"""Supervise child processes: start, restart with backoff when they crash, stop cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised process and its restart state."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None  # None: the child writes where this process does
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = field(default=1.0)

    def start(self) -> None:
        """Start the process, its output appended to its log file (if it has one)."""
        if self.log_path is None:
            self.proc = subprocess.Popen(self.argv, env=self.env)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
                )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    @property
    def pid(self) -> int | None:
        """The running process's pid, if any."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None


class Supervisor:
    """Keeps its children running; a crashed child restarts after 1, 2, 4 ... 30 s."""

    def __init__(self, max_backoff: float = 30.0, stable_after: float = 60.0) -> None:
        self.children: list[Child] = []
        self.max_backoff = max_backoff
        self.stable_after = stable_after

    def add(self, name: str, argv: list[str], env: dict[str, str], log_path: Path | None) -> Child:
        """Add and start a child."""
        child = Child(name, argv, env, log_path)
        child.start()
        self.children.append(child)
        return child

    def poll(self) -> None:
        """Restart children that exited, with exponential backoff."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > self.stable_after:
                    child.backoff = 1.0  # it has been healthy for a while
                continue
            child.restarts += 1
            log.warning(
                "%s exited with code %s; restarting in %.0fs (restart %d)",
                child.name,
                code,
                child.backoff,
                child.restarts,
            )
            child.proc = None
            child.next_start = now + child.backoff
            child.backoff = min(child.backoff * 2, self.max_backoff)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every child, wait, then SIGKILL what is left."""
        for child in self.children:
            if child.pid is not None:
                child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                child.proc.kill()
                child.proc.wait(5)


def python_module(module: str) -> list[str]:
    """The argv that runs ``python -m module`` with this interpreter."""
    return [sys.executable, "-m", module]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
