"""What the JSON API and the pages share: the bus client, the job store, publishing, sealing."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, abort, current_app, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from digits import bus, events, subjects
from digits.jobs import JobStore
from digits.secrets import SECRET_FIELDS, SecretBox, SecretStore, seal_form
from gateway.busclient import BusClient
from gateway.forms import FormErrors

PENDING_S = 300.0  # how long a job this gateway submitted is "Initialized" before it is stored


def bus_client() -> BusClient:
    """The app's bus client (one NATS connection, owned by a background loop thread)."""
    from gateway.app import bus_of

    return bus_of(current_app)


def job_store() -> JobStore:
    """The job store, or 503 while the gateway is not connected to NATS."""
    store = bus_client().jobs
    if store is None:
        abort(503, description="not connected to NATS yet")
    return store


def publish(event: events.Event) -> None:
    """Publish a command or fact on the bus (waits for the stream's ack)."""
    client = bus_client()
    assert client.nc is not None
    client.call(bus.publish_event(client.nc.jetstream(), event), timeout=15)


def sealed(form: dict[str, Any], owner: str) -> dict[str, Any]:
    """The form with its credentials moved into the secret store: commands carry a reference."""
    if not any(form.get(k) for k in SECRET_FIELDS):
        return form
    key = current_app.config["SETTINGS"].secret_key
    if not key:
        message = "the gateway has no DIGITS_SECRET_KEY, so credentials cannot be stored"
        raise FormErrors({k: [message] for k in SECRET_FIELDS if form.get(k)})
    client = bus_client()
    assert client.nc is not None

    async def seal() -> dict[str, Any]:
        kv = await client.nc.jetstream().key_value(subjects.KV_SECRETS)
        return await seal_form(SecretStore(kv, SecretBox(key)), form, owner=owner)

    return client.call(seal(), timeout=15)


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
    return current_app.extensions.setdefault("digits_pending_jobs", Pending())


def json_http_error(exc: HTTPException) -> ResponseReturnValue:
    """An HTTP error as JSON, with its code."""
    return jsonify({"error": exc.description or exc.name}), exc.code or 500


def json_form_errors(exc: FormErrors) -> ResponseReturnValue:
    """Invalid form fields: 400 with the messages per field."""
    return jsonify({"errors": exc.errors}), 400


def json_errors(bp: Blueprint) -> None:
    """Make a JSON blueprint answer HTTP errors and form errors as JSON."""
    bp.register_error_handler(HTTPException, json_http_error)
    bp.register_error_handler(FormErrors, json_form_errors)
