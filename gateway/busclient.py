"""The gateway's one NATS connection, owned by a background event-loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from digits import bus, events, subjects
from digits.config import Settings
from digits.jobs import Job, JobStore
from digits.registry import Registry
from gateway.jobcache import ACTIVE, JobCache, JobSummary, Listing
from gateway.live import LiveHub

log = logging.getLogger(__name__)

T = TypeVar("T")
EXPECTED_SERVICES = ("gateway", "ingest", "train", "view")


class BusClient:
    """Runs an asyncio loop in a daemon thread; Flask views submit coroutines to it."""

    def __init__(self, settings: Settings, name: str = "gateway") -> None:
        self.settings = settings
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.nc: NATS | None = None
        self.jobs: JobStore | None = None
        self.registry: Registry | None = None
        self.job_cache: JobCache | None = None
        self.live = LiveHub()
        self.started_at = time.time()
        self._seen: dict[tuple[str, str], tuple[float, events.Heartbeat]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="digits-bus", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> BusClient:
        """Start the loop thread and connect; raises if NATS cannot be reached in time."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"no NATS connection to {', '.join(self.settings.nats_urls)}")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._connect())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _connect(self) -> None:
        self.nc = await bus.connect(self.settings, f"{self.name}-gateway")
        js = self.nc.jetstream()
        await bus.ensure_streams(js, self.settings.replicas)
        kv = await bus.ensure_kv(js, self.settings.replicas)
        self.jobs = JobStore(js, kv[subjects.KV_JOBS])
        self.registry = Registry(kv[subjects.KV_REGISTRY])  # read only: changes are commands
        self.job_cache = await JobCache(kv[subjects.KV_JOBS]).start()
        await self.live.start(self.nc)
        await self.nc.subscribe(f"{subjects.HEARTBEAT}.>", cb=self._on_heartbeat)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = events.decode(msg.data, events.Heartbeat)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("ignoring malformed heartbeat on %s", msg.subject)
            return
        with self._lock:
            self._seen[(beat.service, beat.instance)] = (time.time(), beat)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the bus loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"bus call timed out after {timeout}s") from None

    def list_jobs(self) -> list[JobSummary] | list[Job]:
        """Every job, newest first: from the watched cache, else read from the bucket."""
        assert self.jobs is not None
        found = self.call(self.job_cache.list()) if self.job_cache is not None else None
        return found if found is not None else self.call(self.jobs.list())

    def listing(self, kind: str, offset: int = 0, limit: int = 50) -> Listing:
        """A page of the jobs of type ``kind``, with counts and the active jobs (one bus call)."""
        assert self.jobs is not None
        found = None
        if self.job_cache is not None:
            found = self.call(self.job_cache.listing(kind, offset, limit))
        if found is not None:
            return found
        every = self.call(self.jobs.list(), timeout=60)  # not in sync: read the whole bucket
        of_kind = [j for j in every if j.type == kind]
        counts = {t: sum(j.type == t for j in every) for t in {j.type for j in every}}
        active = [j for j in every if j.status in ACTIVE]
        names = {j.id: j.name for j in every if j.type == "dataset"}
        return Listing(of_kind[offset : offset + limit], len(of_kind), counts, active, names)

    def dependents(self, job_id: str) -> list[JobSummary] | list[Job]:
        """The jobs that depend on ``job_id``, newest first (from the cache when in sync)."""
        assert self.jobs is not None
        found = self.list_jobs()
        return [j for j in found if job_id in j.depends_on]

    def pick(
        self, kind: str, where: Callable[[Any], bool], limit: int
    ) -> tuple[list[JobSummary] | list[Job], int]:
        """The newest ``limit`` jobs of type ``kind`` passing ``where``, and how many pass."""
        assert self.jobs is not None
        found = None
        if self.job_cache is not None:
            found = self.call(self.job_cache.pick(kind, where, limit))
        if found is not None:
            return found
        passing = [j for j in self.call(self.jobs.list(), 60) if j.type == kind and where(j)]
        return passing[:limit], len(passing)

    def get_job(self, job_id: str) -> Job:
        """The job's record (JobNotFound): from the watched cache, else read from the bucket."""
        assert self.jobs is not None
        found = self.call(self.job_cache.get(job_id)) if self.job_cache is not None else None
        return found if found is not None else self.call(self.jobs.get(job_id))

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now."""
        return bool(self.nc and self.nc.is_connected)

    def health(self) -> dict[str, Any]:
        """NATS state and every service heard from, with liveness by heartbeat age."""
        now = time.time()
        services: dict[str, dict[str, Any]] = {
            name: {"alive": False, "instances": []} for name in EXPECTED_SERVICES
        }
        services["gateway"]["instances"].append(
            {
                "instance": self.name,
                "alive": self.connected,
                "age_s": 0.0,
                "started_at": self.started_at,
            }
        )
        services["gateway"]["alive"] = self.connected
        with self._lock:
            seen = list(self._seen.values())
        for last, beat in seen:
            if beat.service == "gateway" and beat.pid == os.getpid():
                continue  # this gateway is listed above
            age = now - last
            alive = age <= 3 * beat.interval_s
            entry = services.setdefault(beat.service, {"alive": False, "instances": []})
            entry["instances"].append(
                {
                    "instance": beat.instance,
                    "host": beat.host,
                    "pid": beat.pid,
                    "alive": alive,
                    "age_s": round(age, 1),
                    "started_at": beat.started_at,
                    "handled": beat.handled,
                    "failed": beat.failed,
                    "in_flight": beat.in_flight,
                }
            )
            entry["alive"] = entry["alive"] or alive
        all_alive = all(services[name]["alive"] for name in EXPECTED_SERVICES)
        return {
            "status": "ok" if self.connected and all_alive else "degraded",
            "nats": {
                "connected": self.connected,
                "url": str(self.nc.connected_url.geturl())
                if self.connected and self.nc and self.nc.connected_url
                else None,
            },
            "services": services,
        }

    def close(self) -> None:
        """Drain the connection and stop the loop thread."""
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            if self.job_cache is not None:
                await self.job_cache.stop()
            if self.nc is not None and not self.nc.is_closed:
                try:
                    await asyncio.wait_for(self.nc.drain(), 5)
                except (TimeoutError, nats.errors.Error):
                    await self.nc.close()

        try:
            self.call(_close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive() and not self.loop.is_closed():
                self.loop.close()
