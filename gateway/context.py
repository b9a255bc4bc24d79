"""What the composition root (``gateway.app``) hands the views, through ``app.extensions``.

``create_app`` builds the bus client, the user accounts, the login limiter and the record of
just-submitted jobs once and gives them to ``init_app``, as flaskr's extensions do; every view
reaches them with the functions below (for the current app), never by importing ``gateway.app``.
The artifact store is made on first use, one per app.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from flask import Flask, abort, current_app
from nats.js.kv import KeyValue

from digits import subjects
from digits.jobs import JobStore
from digits.store import Store, store_from_settings
from gateway.accounts import Accounts, LoginLimiter
from gateway.busclient import BusClient

BUS = "digits_bus"
ACCOUNTS = "digits_accounts"
LIMITER = "digits_login_limiter"
STORE = "digits_store"
PENDING = "digits_pending_jobs"
# How long a submitted job is "Initialized" before a service stores it: the bucket's TTL.
PENDING_S: float = subjects.KV_BUCKETS[subjects.KV_PENDING]["ttl"]
PENDING_BUS_TIMEOUT_S = 2.0  # a page waits at most this long for the pending bucket
PENDING_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # job ids that make a KV key as they are

log = logging.getLogger(__name__)


def init_app(
    app: Flask,
    bus: BusClient | None,
    accounts: Accounts | None,
    limiter: LoginLimiter,
    pending_jobs: Pending | None = None,
) -> None:
    """Give the app its bus client (None without NATS), accounts, limiter and pending jobs."""
    app.extensions[BUS] = bus
    app.extensions[LIMITER] = limiter
    app.extensions[PENDING] = pending_jobs or Pending()
    if accounts is not None:
        app.extensions[ACCOUNTS] = accounts


def bus_of(app: Flask | None = None) -> BusClient:
    """The app's bus client (one NATS connection, owned by a background loop thread)."""
    client = (app or current_app).extensions.get(BUS)
    if client is None:
        raise RuntimeError("the gateway has no bus client (START_BUS was off)")
    return client


def bus_client() -> BusClient:
    """The current app's bus client."""
    return bus_of(current_app)


def job_store() -> JobStore:
    """The job store, or 503 while the gateway is not connected to NATS."""
    store = bus_client().jobs
    if store is None:
        abort(503, description="not connected to NATS yet")
    return store


def accounts_of(app: Flask | None = None) -> Accounts:
    """The app's user accounts."""
    found = (app or current_app).extensions.get(ACCOUNTS)
    if found is None:
        raise RuntimeError("the gateway has no user accounts (START_BUS was off)")
    return found


def limiter_of(app: Flask | None = None) -> LoginLimiter:
    """The app's failed-login limiter."""
    return (app or current_app).extensions[LIMITER]


def artifact_store() -> Store:
    """The artifact store, opened once per app (its calls run on the bus loop)."""
    store = current_app.extensions.get(STORE)
    if store is None:
        store = store_from_settings(current_app.config["SETTINGS"])
        current_app.extensions[STORE] = store
    return store


class Pending:
    """Jobs the gateways asked for whose records the services have not stored yet.

    With a bus, a summary goes to the ``digits-pending`` bucket (its TTL ends it), so every
    gateway replica answers for a job submitted through any of them; an in-process front answers
    this gateway's own at once. While the bucket cannot be reached, the front is all there is:
    the job shows on the replica that took it, and the failure is logged.
    """

    def __init__(self, bus_client: BusClient | None = None, kv: KeyValue | None = None) -> None:
        self.bus = bus_client
        self.kv = kv
        self._jobs: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, bus_client: BusClient) -> Pending:
        """Open ``digits-pending`` through the bus client's connection."""
        assert bus_client.nc is not None
        js = bus_client.nc.jetstream()
        return cls(bus_client, bus_client.call(js.key_value(subjects.KV_PENDING)))

    def add(self, job_id: str, summary: dict[str, Any]) -> None:
        """Remember a submitted job's summary, for this gateway and the others."""
        now = time.monotonic()
        with self._lock:
            self._jobs = {k: v for k, v in self._jobs.items() if now - v[0] < PENDING_S}
            self._jobs[job_id] = (now, summary)
        if self.bus is None or self.kv is None or not PENDING_ID.match(job_id):
            return
        try:
            data = msgspec.msgpack.encode(summary)
            self.bus.call(self.kv.put(f"job.{job_id}", data), timeout=PENDING_BUS_TIMEOUT_S)
        except (OSError, nats.errors.Error) as exc:
            log.warning(
                "%s cannot be reached (%s): job %s shows only on this gateway until stored",
                subjects.KV_PENDING,
                type(exc).__name__,
                job_id,
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The summary of a recently submitted job (through any gateway), if any."""
        with self._lock:
            found = self._jobs.get(job_id)
        if found and time.monotonic() - found[0] < PENDING_S:
            return found[1]
        if self.bus is None or self.kv is None or not PENDING_ID.match(job_id):
            return None
        try:
            data = self.bus.call(self._read(f"job.{job_id}"), timeout=PENDING_BUS_TIMEOUT_S)
        except (OSError, nats.errors.Error) as exc:
            log.warning("%s cannot be reached (%s)", subjects.KV_PENDING, type(exc).__name__)
            return None
        if data is None:
            return None
        try:
            summary = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            summary = None
        if not isinstance(summary, dict) or not isinstance(summary.get("type"), str):
            log.warning("%s: ignoring an unreadable entry for job %s", subjects.KV_PENDING, job_id)
            return None
        return summary

    async def _read(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value or None


def pending() -> Pending:
    """The app's record of the jobs the gateways submitted that are not stored yet."""
    return current_app.extensions.setdefault(PENDING, Pending())
