"""The benchmarks' one harness.

Every bench in this folder runs the same way: ``arguments`` builds its parser (each has
``--quick``), ``start`` begins the run, a ``Stack`` starts a nats-server with JetStream on free
ports and the project's services as child processes (and stops them all on any exit),
``Timer``, ``summary`` and ``versus``/``ratios`` turn measurements into figures against the
baseline measured in the same run, and ``finish``/``emit`` print the one JSON object that is the
last line on stdout (``run_json`` reads it back from a bench's own child process). Readable
progress lines go to stderr (``say``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from digits import bus
from digits.config import Settings
from digits.natsserver import NatsServer, free_port
from digits.supervisor import Child, Supervisor, child_env, python_module

STOP_TIMEOUT_S = 30.0  # a service's grace after SIGTERM before it is killed
HEALTHY_TIMEOUT_S = 120.0  # how long a service may take to answer /healthz ok


def say(text: str) -> None:
    """Print one human-readable line to stderr."""
    print(text, file=sys.stderr, flush=True)


# --- the run: arguments, clock, the JSON line -------------------------------------------------


def arguments(doc: str, quick: str) -> argparse.ArgumentParser:
    """A bench's parser, described by the first line of ``doc``, with ``--quick`` (``quick`` says
    what it does)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def start() -> Timer:
    """Begin a run: warnings to stderr, SIGTERM as SystemExit (so every child is stopped and
    every temporary directory removed), and the run's clock."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_term)
    return Timer()


def emit(result: Mapping[str, Any]) -> int:
    """Print ``result`` as one JSON object, the last line on stdout; exit status 0."""
    print(json.dumps(result), flush=True)
    return 0


def finish(result: dict[str, Any], timer: Timer) -> int:
    """Add the run's ``elapsed_s`` to ``result``, say it, and ``emit`` it."""
    result["elapsed_s"] = round(timer.seconds, 1)
    say(f"done in {result['elapsed_s']} s")
    return emit(result)


def run_json(
    argv: Sequence[str], what: str, timeout: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``argv`` (a bench's child process) and return the JSON object of its last stdout line."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=child_env(dict(env or {})),
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"{what} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


# --- timing and figures ------------------------------------------------------------------------


class Timer:
    """Wall-clock time (``time.perf_counter``) since it was made or last restarted."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def restart(self) -> None:
        """Start counting again from now."""
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.started

    @property
    def ms(self) -> float:
        """Milliseconds since the start."""
        return self.seconds * 1e3


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile of ``values`` (inclusive method; a lone value is every one)."""
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


_STATS = {"mean": statistics.fmean, "median": statistics.median, "max": max, "min": min}


def summary(
    values: Sequence[float], *stats: str, digits: int = 3, key: str = "{}"
) -> dict[str, float]:
    """Named statistics of ``values``, rounded to ``digits``, in the order asked: ``"p<N>"`` (a
    percentile: p50, p95, p99), ``"mean"``, ``"median"``, ``"max"``, ``"min"``; by default p50,
    p99 and mean. Each is stored under ``key.format(name)`` (e.g. ``key="{}_ms"``)."""
    out: dict[str, float] = {}
    for name in stats or ("p50", "p99", "mean"):
        value = percentile(values, int(name[1:])) if name[0] == "p" else _STATS[name](values)
        out[key.format(name)] = round(value, digits)
    return out


def show(name: str, figures: Mapping[str, float], unit: str = "ms") -> str:
    """One ``summary`` as a readable line."""
    return f"{name:24s} " + "  ".join(f"{k} {v:7.3f} {unit}" for k, v in figures.items())


def ratio(a: float, b: float) -> float:
    """a / b rounded, NaN when b is zero."""
    return round(a / b, 3) if b else float("nan")


def ratios(
    figures: Mapping[str, float] | Sequence[float],
    baseline: float | Mapping[str, float] | Sequence[float],
) -> Any:
    """Each figure over the baseline: one number for all, or the figure's own (same key in a
    mapping, same place in a list, e.g. per round)."""
    if isinstance(figures, Mapping):
        base = baseline if isinstance(baseline, Mapping) else dict.fromkeys(figures, baseline)
        return {k: ratio(v, base[k]) for k, v in figures.items()}
    base = baseline if isinstance(baseline, Sequence) else [baseline] * len(figures)
    return [ratio(v, b) for v, b in zip(figures, base, strict=True)]


def versus(
    figure: float, baseline: float, figure_key: str, baseline_key: str, digits: int = 1
) -> dict[str, float]:
    """A figure against the baseline measured in the same run: both, rounded, and ``ratio``."""
    return {
        figure_key: round(figure, digits),
        baseline_key: round(baseline, digits),
        "ratio": ratio(figure, baseline),
    }


def package_version(name: str) -> str:
    """An installed distribution's version, or "unknown"."""
    try:
        return version(name)
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


def machine(*packages: str, cpu_model: bool = True, **extra: Any) -> dict[str, Any]:
    """Cores, CPU model (unless not ``cpu_model``), Python, the versions of ``packages`` (as
    keys with ``_`` for ``-``) and ``extra`` facts."""
    facts: dict[str, Any] = {"cores": os.cpu_count()}
    if cpu_model:
        cpu = platform.processor() or "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        facts["cpu"] = cpu
    facts["python"] = platform.python_version()
    facts.update({name.replace("-", "_"): package_version(name) for name in packages})
    facts.update(extra)
    return facts


# --- the stack: nats-server and services ---------------------------------------------------------


class Service:
    """One ``python -m <service>`` child (a ``digits.supervisor.Child``) and its health port."""

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port

    @property
    def name(self) -> str:
        """The service's module."""
        return self.child.name

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The child process."""
        assert self.child.proc is not None
        return self.child.proc

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def check(self) -> None:
        """Fail, with the tail of its log, if the process has exited."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log_tail()}")

    def get(self, path: str) -> bytes | None:
        """GET a path of the health server (/healthz, /metrics); None unless it answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.read() if r.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def healthy(self) -> bool:
        """Whether /healthz answers ok."""
        body = self.get("/healthz")
        try:
            return body is not None and json.loads(body).get("status") == "ok"
        except ValueError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's output."""
        path = self.child.log_path
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """A temporary directory (``root``), a nats-server with JetStream in it on free ports, the
    project's services as child processes, and client connections. ``with Stack(prefix)``:
    on exit the services are stopped (SIGTERM, then SIGKILL), then the server, and the
    directory is removed."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.root = Path()
        self.server: NatsServer | None = None
        self.server_version = "unknown"
        self.services: list[Service] = []
        self.supervisor = Supervisor()  # never polled: a bench's services are not restarted
        self.serial = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Stack:
        self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix)
        self.root = Path(self._tmp.name)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_services()
        finally:
            try:
                if self.server is not None:
                    self.server.stop()
                    self.server = None
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()

    # the server and clients

    def start_server(self) -> NatsServer:
        """Start the nats-server (JetStream, its store in ``root/nats``) and wait until healthy."""
        self.server = NatsServer(self.root / "nats").start()
        return self.server

    @property
    def url(self) -> str:
        """The server's client URL."""
        assert self.server is not None, "start_server first"
        return self.server.url

    @property
    def settings(self) -> Settings:
        """Settings that connect to the server."""
        return Settings(nats_urls=(self.url,))

    def env(self, **extra: str) -> dict[str, str]:
        """The DIGITS_* variables that point a service (or ``Settings.from_env``) at the stack."""
        return {"DIGITS_NATS_URL": self.url, "DIGITS_DATA_DIR": str(self.root / "data"), **extra}

    @contextlib.asynccontextmanager
    async def client(self, name: str) -> AsyncIterator[NATS]:
        """A connection to the server (``digits.bus.connect``), closed on exit; it records the
        server's version in ``server_version``."""
        nc = await bus.connect(self.settings, name)
        v = nc.connected_server_version
        self.server_version = f"{v.major}.{v.minor}.{v.patch}"
        try:
            yield nc
        finally:
            await nc.close()

    # services

    def start_service(self, module: str, **env: str) -> Service:
        """Start ``python -m module`` on the stack (``env`` added), its health on a free port."""
        port = free_port()
        self.serial += 1
        child = self.supervisor.add(
            module,
            python_module(module),
            child_env(self.env(DIGITS_HEALTH_PORT=str(port), **env)),
            self.root / f"{module}-{self.serial}.log",
        )
        service = Service(child, port)
        self.services.append(service)
        return service

    async def wait_healthy(
        self, services: Sequence[Service] | None = None, timeout: float = HEALTHY_TIMEOUT_S
    ) -> None:
        """Wait until every service (by default all) answers /healthz ok; fail if one exits."""
        services = list(self.services if services is None else services)
        deadline = time.monotonic() + timeout
        while True:
            for svc in services:
                svc.check()
            healthy = await asyncio.gather(*(asyncio.to_thread(s.healthy) for s in services))
            if all(healthy):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(svc.log_tail() for svc in services)
                raise RuntimeError(f"services not healthy after {timeout:.0f} s:\n{tails}")
            await asyncio.sleep(0.05)

    def stop_services(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every service, wait (SIGKILL after ``timeout``); say which exited uncleanly."""
        try:
            self.supervisor.stop(timeout)
        finally:
            for svc in self.services:
                code = svc.proc.poll()
                if code not in (0, -signal.SIGTERM):
                    say(f"  {svc.name} pid {svc.proc.pid} exited with {code}:\n{svc.log_tail()}")
            self.supervisor.children.clear()
            self.services.clear()
