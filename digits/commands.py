"""Handlers of the job commands (abort, delete, edit): plain functions in one registry."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, events, uploads
from digits.jobs import ABORTED, STATUS_NAMES, TERMINAL, JobError, JobStore
from digits.store import Store

log = logging.getLogger(__name__)

JobCommand = events.JobAbort | events.JobDelete | events.JobEdit


async def abort(jobs: JobStore, cmd: events.JobAbort) -> None:
    """Abort a job that has not finished."""
    job = await jobs.get(cmd.job_id)
    if job.status in TERMINAL:
        raise JobError(f"job {job.id} is already {STATUS_NAMES[job.status]}")
    await jobs.set_status(cmd.job_id, ABORTED, cmd.reason or "aborted by request")


async def delete(jobs: JobStore, cmd: events.JobDelete) -> None:
    """Delete a job record, unless another job depends on it."""
    await jobs.delete(cmd.job_id)


async def edit(jobs: JobStore, cmd: events.JobEdit) -> None:
    """Change a job's name, group or notes."""
    await jobs.edit(cmd.job_id, name=cmd.name, group=cmd.group, notes=cmd.notes)


HANDLERS: dict[type, Callable[[JobStore, JobCommand], Awaitable[None]]] = {
    events.JobAbort: abort,
    events.JobDelete: delete,
    events.JobEdit: edit,
}


async def handle_job_command(
    js: JetStreamContext, jobs: JobStore, msg: Msg, store: Store | None = None
) -> None:
    """Decode a job command and carry it out; a refusal is published as command.rejected."""
    cmd = events.decode(msg.data, JobCommand)  # malformed: the worker dead-letters it
    try:
        job = await jobs.get(cmd.job_id)
        await HANDLERS[type(cmd)](jobs, cmd)
        if isinstance(cmd, events.JobDelete) and store is not None:
            # The record is gone; its files follow (datasets/<id>/ or models/<id>/), and its
            # uploads unless another job uses them.
            await store.delete_prefix(f"{job.type}s/{cmd.job_id}/")
            await uploads.release(store, jobs, job)
    except JobError as exc:
        log.info("%s %s rejected: %s", events.tag_of(type(cmd)), cmd.job_id, exc)
        await reject(js, cmd, str(exc))


async def reject(js: JetStreamContext, cmd: events.Event, reason: str) -> None:
    """Publish command.rejected for ``cmd`` (once per command, by its event id)."""
    rejected = events.CommandRejected(
        command_type=events.tag_of(type(cmd)),
        command_id=cmd.event_id,
        reason=reason,
        job_id=getattr(cmd, "job_id", None),
    )
    await bus.publish(
        js, events.subject_for(rejected), events.encode(rejected), msg_id=f"rejected:{cmd.event_id}"
    )
