"""The model registry as the gateway sees it: read from the bucket, changed only by commands.

Shared by the registry pages and the JSON routes. A change (register, promote) is published as
its command; the gateway then waits (at most ``OUTCOME_TIMEOUT_S``) for the event that carries
the command's id: ``registry.changed`` (done), ``command.rejected`` (refused, with the reason),
or nothing in time (still queued: the answer names the command id).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from flask import current_app, g

from digits import bus, events, subjects
from digits.jobs import Job, JobNotFound
from digits.registry import (
    RegisteredModel,
    Registry,
    RegistryError,
    UnknownModel,
    check_alias,
    check_name,
)
from gateway import context, ownership

OUTCOME_TIMEOUT_S = 10.0
CONFLICT_MARK = "moved:"  # a Conflict's message: the alias moved since the sender looked


class Refused(Exception):
    """A registry request refused before any command: ``code`` is its HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Outcome:
    """What became of a registry command: its HTTP status, the record or the reason."""

    code: int  # 200 changed, 400/409 rejected, 202 no answer in time
    command_id: str
    model: RegisteredModel | None = None
    reason: str = ""
    events: list[Any] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether the command was carried out."""
        return self.code == 200

    def as_json(self) -> dict[str, Any]:
        """The outcome as the JSON routes answer it."""
        found: dict[str, Any] = {"command_id": self.command_id}
        if self.code == 200:
            found["registered_model"] = record_json(self.model) if self.model else None
        elif self.code == 202:
            found["pending"] = True
            found["message"] = f"command {self.command_id} is queued; no outcome yet"
        else:
            found["error"] = self.reason
        return found


def registry() -> Registry:
    """The gateway's read-only view of the registry bucket (503 while not connected)."""
    found = context.bus_client().registry
    if found is None:
        raise Refused(503, "not connected to NATS yet")
    return found


def get(name: str) -> RegisteredModel:
    """The registered model ``name``; Refused 404 (unknown) or 400 (a bad name)."""
    try:
        return context.bus_client().call(registry().get(name))
    except UnknownModel as exc:
        raise Refused(404, str(exc)) from None
    except RegistryError as exc:
        raise Refused(400, str(exc)) from None


def list_models() -> list[RegisteredModel]:
    """Every registered model, by name."""
    return context.bus_client().call(registry().list(), timeout=30)


def record_json(model: RegisteredModel) -> dict[str, Any]:
    """A registered model as JSON (its whole record, with each version's aliases)."""
    found = msgspec.to_builtins(model)
    for version in found["versions"]:
        version["aliases"] = model.aliases_of(version["version"])
    found["latest"] = model.latest()
    return found


def summary_json(model: RegisteredModel) -> dict[str, Any]:
    """A registered model's line of the list."""
    return {
        "name": model.name,
        "owner": model.owner,
        "aliases": dict(model.aliases),
        "latest": model.latest(),
        "versions": len(model.versions),
        "follows": model.follow.dataset_id if model.follow else None,
    }


def trained_on(dataset_id: str) -> list[RegisteredModel]:
    """The registered models that follow dataset ``dataset_id`` or have a version trained on it."""
    return [
        m
        for m in list_models()
        if (m.follow and m.follow.dataset_id == dataset_id)
        or any(v.dataset_id == dataset_id for v in m.versions)
    ]


def _require_change(model: RegisteredModel) -> None:
    if not ownership.may_change(model.owner):
        raise Refused(
            403,
            f"registered model {model.name!r} belongs to {model.owner or 'nobody'}: only its"
            " owner or an admin may change it",
        )


def _int(value: Any, what: str, lo: int) -> int:
    text = str(value).strip().removeprefix("v") if value is not None else ""
    try:
        number = int(text)
    except ValueError:
        raise Refused(400, f"{what} {value!r} is not an integer") from None
    if number < lo:
        raise Refused(400, f"{what} {value!r} must be at least {lo}")
    return number


def promote(
    name: str, version: Any, alias: Any = None, expected: Any = None, reason: str = ""
) -> Outcome:
    """Move ``alias`` of ``name`` to ``version`` by hand (its owner or an admin)."""
    model = get(name)
    _require_change(model)
    number = _int(version, "version", 1)
    alias = str(alias or "").strip() or (model.rule.alias if model.rule else "production")
    try:
        check_alias(alias)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    want = None if expected in (None, "") else _int(expected, "expected", 0)
    try:
        model.version(number)
    except RegistryError as exc:
        raise Refused(400, str(exc)) from None
    holder = model.aliases.get(alias) or 0
    if holder == number and want in (None, number):  # nothing to move: no command, no event
        return Outcome(200, "", model)
    # An admin acts for the owner: the train service checks the owner's name.
    command = events.RegistryPromote(
        name=name,
        version=number,
        alias=alias,
        owner=model.owner,
        expected=want,
        reason=reason or f"promoted by {context_user()}",
    )
    return send(command, name)


def register(name: Any, job_id: Any, rule: Any = None) -> Outcome:
    """Register model job ``job_id`` under ``name`` (its owner, or an admin for the owner)."""
    try:
        check_name(name)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    job = _model_job(str(job_id or "").strip())
    if not ownership.may_change(job.owner):
        raise Refused(
            403,
            f"model {job.id} belongs to {job.owner or 'nobody'}: only its owner or an admin"
            " may register it",
        )
    try:
        existing: RegisteredModel | None = get(name)
    except Refused as exc:
        if exc.code != 404:
            raise
        existing = None
    if existing is not None and existing.owner != job.owner:
        raise Refused(
            403, f"{name!r} belongs to {existing.owner!r}; model {job.id} is {job.owner!r}'s"
        )
    link = job.extra.get("registry")
    if existing is not None and isinstance(link, dict) and link.get("name") == name:
        return Outcome(200, "", existing)  # registered already: no command, no event
    if rule is not None and not isinstance(rule, dict):
        raise Refused(400, f"rule {rule!r} is not an object (alias, metric, margin)")
    command = events.RegistryRegister(name=name, job_id=job.id, owner=job.owner, rule=rule)
    return send(command, name)


def _model_job(job_id: str) -> Job:
    if not job_id:
        raise Refused(400, "job_id is required (the model job to register)")
    try:
        job = context.bus_client().get_job(job_id)
    except JobNotFound:
        raise Refused(404, f"no model with id {job_id!r}") from None
    if job.type != "model":
        raise Refused(400, f"job {job_id} is a {job.type}, not a model")
    return job


def context_user() -> str:
    """The signed-in user's name."""
    return g.user.username


def send(command: events.Event, name: str, timeout: float | None = None) -> Outcome:
    """Publish a registry command and wait for its outcome event (at most ``timeout``).

    The wait is OUTCOME_TIMEOUT_S unless the app config's REGISTRY_OUTCOME_S says otherwise.
    """
    if timeout is None:
        timeout = float(current_app.config.get("REGISTRY_OUTCOME_S") or OUTCOME_TIMEOUT_S)
    client = context.bus_client()
    watched = [subjects.evt_registry_all(name), f"{subjects.EVT}.rejected"]
    job_id = getattr(command, "job_id", None)
    if job_id:
        watched.append(subjects.evt_job(job_id, "rejected"))
    heard = client.call(_publish_and_wait(client, command, watched, timeout), timeout + 15)
    if heard is None:
        return Outcome(202, command.event_id)
    if isinstance(heard, events.CommandRejected):
        code = 409 if CONFLICT_MARK in heard.reason else 400
        return Outcome(code, command.event_id, reason=heard.reason, events=[heard])
    model = client.call(registry().get(name))
    return Outcome(200, command.event_id, model, events=[heard])


async def _publish_and_wait(
    client: Any, command: events.Event, watched: list[str], timeout: float
) -> Any:
    """On the bus loop: listen first, publish, then the first event naming the command."""
    nc = client.nc
    assert nc is not None
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Any] = loop.create_future()

    async def heard(msg: Any) -> None:
        try:
            event = events.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        if getattr(event, "command_id", "") == command.event_id and not answer.done():
            answer.set_result(event)

    subs = [await nc.subscribe(subject, cb=heard) for subject in watched]
    try:
        await nc.flush()
        await bus.publish_event(nc.jetstream(), command)
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return None
    finally:
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
