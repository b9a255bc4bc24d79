"""Asking the view service over NATS request/reply: what the JSON routes and the pages share."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
from flask import abort

from digits.jobs import Job, JobNotFound
from digits.registry import RegistryError, is_ref
from gateway import context, ownership
from gateway.forms import FormErrors

ONE_TIMEOUT_S = 60.0
MANY_TIMEOUT_S = 300.0


def model_id(form: dict[str, Any]) -> str:
    """The form's ``job_id`` (a model job's) or registry ref, checked; a 404 or 403 otherwise.

    A ref (``name@alias``, ``name@vN``) is returned as it is, so that the view service
    follows the alias; the job it names now is checked here.
    """
    job_id = str(form.get("job_id") or "").strip()
    if not job_id:
        raise FormErrors({"job_id": ["job_id is required (the model job's id, or name@alias)"]})
    if is_ref(job_id):
        model_job(resolve_ref(job_id))
        return job_id
    return model_job(job_id).id


def resolve_ref(ref: str, use: str = "run") -> str:
    """The job id a registry ref names now (a 404 naming what is unknown, a 403 naming it)."""
    bus_client = context.bus_client()
    assert bus_client.registry is not None
    try:
        model, version = bus_client.call(bus_client.registry.resolve_version(ref))
    except RegistryError as exc:
        abort(404, description=f"model reference {ref!r}: {exc}")
    if not ownership.may_use(model.owner):
        abort(
            403,
            description=f"registered model {model.name!r} belongs to {model.owner or 'nobody'}:"
            f" only its owner or an admin may {use} it",
        )
    return version.job_id


def model_job(job_id: str, use: str = "run") -> Job:
    """The model job of ``job_id`` (a 404 naming the id), if the caller may ``use`` it (a 403)."""
    bus_client = context.bus_client()
    assert bus_client.jobs is not None
    try:
        job = bus_client.call(bus_client.jobs.get(job_id))
    except JobNotFound:
        job = None
    if job is None or job.type != "model":
        abort(404, description=f"no model with id {job_id!r}")
    ownership.require_use(job, use)
    return job


def snapshot_epoch(form: dict[str, Any]) -> float:
    """The form's ``snapshot_epoch`` (-1, the latest, when empty)."""
    text = str(form.get("snapshot_epoch") or "").strip()
    if not text:
        return -1.0
    try:
        return float(text)
    except ValueError:
        raise FormErrors({"snapshot_epoch": [f"snapshot_epoch {text!r} is not a number"]}) from None


def ask_view(subject: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Ask the view service; its error becomes a 400, no responder a 503."""
    bus_client = context.bus_client()
    nc = bus_client.nc
    if nc is None or not nc.is_connected:
        abort(503, description="not connected to NATS")
    data = msgspec.msgpack.encode(payload)
    try:
        msg = bus_client.call(nc.request(subject, data, timeout=timeout), timeout=timeout + 5)
    except nats.errors.NoRespondersError:
        abort(503, description="no view service is running to answer inference requests")
    except (TimeoutError, nats.errors.TimeoutError):
        abort(504, description=f"the view service did not answer within {timeout:g}s")
    reply = msgspec.msgpack.decode(msg.data)
    if not reply.get("ok", False):
        abort(400, description=str(reply.get("error") or "inference failed"))
    return reply
