"""What the composition root (``gateway.app``) hands the views, through ``app.extensions``.

``create_app`` builds the bus client, the user accounts and the login limiter once and gives them
to ``init_app``, as flaskr's extensions do; every view reaches them with the functions below (for
the current app), never by importing ``gateway.app``. The artifact store and the record of
just-submitted jobs are made on first use, one per app.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, abort, current_app

from digits.jobs import JobStore
from digits.store import Store, store_from_settings
from gateway.accounts import Accounts, LoginLimiter
from gateway.busclient import BusClient

BUS = "digits_bus"
ACCOUNTS = "digits_accounts"
LIMITER = "digits_login_limiter"
STORE = "digits_store"
PENDING = "digits_pending_jobs"
PENDING_S = 300.0  # how long a job this gateway submitted is "Initialized" before it is stored


def init_app(
    app: Flask, bus: BusClient | None, accounts: Accounts | None, limiter: LoginLimiter
) -> None:
    """Give the app its bus client (None without NATS), accounts and login limiter."""
    app.extensions[BUS] = bus
    app.extensions[LIMITER] = limiter
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
    """Jobs this gateway asked for whose records the services have not stored yet."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, summary: dict[str, Any]) -> None:
        """Remember a submitted job's summary."""
        now = time.monotonic()
        with self._lock:
            self._jobs = {k: v for k, v in self._jobs.items() if now - v[0] < PENDING_S}
            self._jobs[job_id] = (now, summary)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The summary of a recently submitted job, if any."""
        with self._lock:
            found = self._jobs.get(job_id)
        return found[1] if found and time.monotonic() - found[0] < PENDING_S else None


def pending() -> Pending:
    """This app's record of the jobs it submitted that are not stored yet."""
    return current_app.extensions.setdefault(PENDING, Pending())
