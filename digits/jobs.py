"""Job records in the JetStream KV bucket: status, stages, history, compare-and-swap updates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets as _random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from digits import bus, events

log = logging.getLogger(__name__)

INITIALIZED, WAITING, RUNNING, DONE, ABORTED, ERROR = "I", "W", "R", "D", "A", "E"
STATUS_NAMES = {
    INITIALIZED: "Initialized",
    WAITING: "Waiting",
    RUNNING: "Running",
    DONE: "Done",
    ABORTED: "Aborted",
    ERROR: "Error",
}
TERMINAL = frozenset({DONE, ABORTED, ERROR})
JOB_TYPES = ("dataset", "model")


class JobError(Exception):
    """A job operation that cannot be done, with a reason a user can read."""


class JobNotFound(JobError, KeyError):
    """No job record with this id."""

    def __str__(self) -> str:
        return f"no job with id {self.args[0]!r}"


class StatusEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a job's status history."""

    status: str
    at: float
    message: str = ""


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """A stage of a job (for a dataset: Parse Folder, Create DB (train), ...)."""

    name: str
    status: str = INITIALIZED
    progress: float = 0.0
    done: int = 0
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    counts: dict[str, int] = msgspec.field(default_factory=dict)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A dataset or model job as stored in the ``digits-jobs`` bucket."""

    id: str
    type: str
    name: str
    extension: str = ""
    group: str = ""
    owner: str = ""
    notes: str = ""
    form: dict[str, Any] = msgspec.field(default_factory=dict)
    status: str = INITIALIZED
    history: list[StatusEntry] = msgspec.field(default_factory=list)
    stages: list[Stage] = msgspec.field(default_factory=list)
    depends_on: list[str] = msgspec.field(default_factory=list)
    # Store keys of the uploads the job uses (an uploaded pretrained archive): they stay while
    # the record does, and go with it when it is deleted (see digits/uploads.py).
    uploads: list[str] = msgspec.field(default_factory=list)
    created_at: float = msgspec.field(default_factory=time.time)
    error: str = ""
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def status_name(self) -> str:
        """DIGITS's word for the status code."""
        return STATUS_NAMES.get(self.status, self.status)

    def stage(self, name: str) -> Stage | None:
        """The stage called ``name``, if there is one."""
        return next((s for s in self.stages if s.name == name), None)


class JobBrief(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a job record that sweeps filter on, decoded without the rest."""

    id: str
    type: str
    status: str = INITIALIZED
    depends_on: list[str] = msgspec.field(default_factory=list)
    created_at: float = 0.0


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Job).decode
_decode_brief = msgspec.msgpack.Decoder(JobBrief).decode
SCAN_IDLE_S = 5.0  # a scan that hears nothing for this long has seen every record
MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+: a TTL, max-age or purge marker


_YEAR_10000 = 253402300800.0  # the first second that strftime's %Y cannot write in 4 digits


def new_job_id(now: float | None = None) -> str:
    """A DIGITS-style job id: ``20261126-221210-3f9a`` (the time now, if ``now`` is no date)."""
    if not (now and 0 < now < _YEAR_10000):  # a command's own occurred_at: any float at all
        now = time.time()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{_random.token_hex(2)}"


class JobStore:
    """Reads and changes job records; every change is a CAS update followed by an event."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, *, max_attempts: int = 100) -> None:
        self.js = js
        self.kv = kv
        self.max_attempts = max_attempts
        self._bucket: str | None = None

    async def create(self, job: Job) -> Job:
        """Store a new job record (its id must be unused) and announce its status."""
        if job.type not in JOB_TYPES:
            raise JobError(f"job type {job.type!r} is not one of {', '.join(JOB_TYPES)}")
        if not job.history:
            job = msgspec.structs.replace(
                job, history=[StatusEntry(status=job.status, at=job.created_at)]
            )
        try:
            revision = await self.kv.create(job.id, _encode(job))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise JobError(f"a job with id {job.id!r} already exists") from None
        await self._announce(None, job, revision)
        return job

    async def get(self, job_id: str) -> Job:
        """The job record, or JobNotFound."""
        return (await self._get(job_id))[0]

    async def _get(self, job_id: str) -> tuple[Job, int]:
        try:
            entry = await self.kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise JobNotFound(job_id) from None
        except nats.js.errors.InvalidKeyError:
            raise JobNotFound(job_id) from None
        if entry.value is None:
            raise JobNotFound(job_id)
        return _decode(entry.value), entry.revision or 0

    async def _scan(self, headers_only: bool = False) -> dict[str, tuple[bytes, int]]:
        """Every live record, key -> (value, revision), read by one consumer.

        One ordered push consumer (last value per subject) streams the whole bucket: a request
        per record would make 10,000 jobs cost 10,000 round trips. Delete and purge markers
        drop their key; a record changed while the scan runs counts at its newest value seen,
        and the scan ends at the stream's last sequence as it was once the consumer existed.
        """
        if self._bucket is None:
            self._bucket = (await self.kv.status()).bucket
        stream, prefix = f"KV_{self._bucket}", f"$KV.{self._bucket}."
        found: dict[str, tuple[bytes, int]] = {}
        done = asyncio.get_running_loop().create_future()
        last_seq = 0  # set once the stream's state is read, after the consumer exists

        async def take(msg: Msg) -> None:
            seq, headers = msg.metadata.sequence.stream, msg.headers or {}
            key = msg.subject[len(prefix) :]
            gone = headers.get(KV_OP) in (KV_DEL, KV_PURGE) or MARKER_REASON in headers
            if gone or not (headers_only or msg.data):
                found.pop(key, None)
            else:
                found[key] = (msg.data, seq)
            if (last_seq and seq >= last_seq or msg.metadata.num_pending == 0) and not done.done():
                done.set_result(None)

        sub = await self.js.subscribe(
            f"{prefix}>",
            stream=stream,
            cb=take,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=headers_only,
            inactive_threshold=60,
        )
        try:
            state = (await self.js.stream_info(stream)).state
            last_seq = state.last_seq
            if state.messages and not done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(done), SCAN_IDLE_S)
                except TimeoutError:
                    pass  # removed since the stream's state was read
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return found

    async def keys(self) -> list[str]:
        """Every job id in the bucket, sorted (deleted jobs are not)."""
        return sorted(await self._scan(headers_only=True))

    async def list(
        self, where: Callable[[JobBrief], bool] | None = None, *, strict: bool = False
    ) -> list[Job]:
        """Every job (those whose brief passes ``where``, if given), newest first.

        A record that cannot be decoded is logged and skipped, or with ``strict`` raises
        JobError (for callers that must see every record, such as the upload sweep).
        """
        found = []
        for key, (value, _) in (await self._scan()).items():
            try:
                if where is None or where(_decode_brief(value)):
                    found.append(_decode(value))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if strict:
                    raise JobError(f"job record {key} cannot be decoded: {exc}") from None
                log.warning("job record %s cannot be decoded: %s", key, exc)
        return sorted(found, key=lambda j: j.created_at, reverse=True)

    async def update(self, job_id: str, mutate: Callable[[Job], Job | None]) -> Job:
        """Apply ``mutate`` by compare-and-swap, retrying on conflict; None means no change."""
        for _ in range(self.max_attempts):
            job, revision = await self._get(job_id)
            changed = mutate(job)
            if changed is None or changed == job:
                return job
            try:
                new_revision = await self.kv.update(job_id, _encode(changed), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone else changed it first: read again
            await self._announce(job, changed, new_revision)
            return changed
        raise JobError(f"job {job_id!r}: gave up after {self.max_attempts} conflicting updates")

    async def set_status(
        self, job_id: str, status: str, message: str = "", only_from: Iterable[str] | None = None
    ) -> Job:
        """Move a job to ``status`` (only from ``only_from``, if given); finished stays finished."""
        if status not in STATUS_NAMES:
            raise JobError(f"status {status!r} is not one of {', '.join(STATUS_NAMES)}")
        allowed = set(only_from) if only_from is not None else None

        def mutate(job: Job) -> Job | None:
            if job.status == status or job.status in TERMINAL:
                return None
            if allowed is not None and job.status not in allowed:
                return None
            entry = StatusEntry(status=status, at=time.time(), message=message)
            return msgspec.structs.replace(
                job,
                status=status,
                history=[*job.history, entry],
                error=message if status == ERROR else job.error,
            )

        return await self.update(job_id, mutate)

    async def update_stage(self, job_id: str, name: str, **changes: Any) -> Job:
        """Create or change the stage ``name`` (status, progress, done, total, counts)."""
        allowed = {"status", "progress", "done", "total", "counts"}
        unknown = set(changes) - allowed
        if unknown:
            raise JobError(f"unknown stage fields {sorted(unknown)}; allowed {sorted(allowed)}")

        def mutate(job: Job) -> Job | None:
            old = job.stage(name) or Stage(name=name)
            new = msgspec.structs.replace(old, **changes)
            now = time.time()
            if new.status == RUNNING and old.started_at is None:
                new = msgspec.structs.replace(new, started_at=now)
            if new.status in TERMINAL and old.finished_at is None:
                new = msgspec.structs.replace(new, finished_at=now)
            if new == old and job.stage(name) is not None:
                return None
            stages = [new if s.name == name else s for s in job.stages]
            if job.stage(name) is None:
                stages.append(new)
            return msgspec.structs.replace(job, stages=stages)

        return await self.update(job_id, mutate)

    async def edit(
        self,
        job_id: str,
        *,
        name: str | None = None,
        group: str | None = None,
        notes: str | None = None,
    ) -> Job:
        """Change a job's name, group or notes."""
        if name is not None and not name.strip():
            raise JobError("a job's name cannot be empty")
        changes = {
            k: v for k, v in {"name": name, "group": group, "notes": notes}.items() if v is not None
        }
        return await self.update(job_id, lambda job: msgspec.structs.replace(job, **changes))

    async def dependents(self, job_id: str) -> list[Job]:
        """Jobs that depend on ``job_id`` (models trained on a dataset)."""
        return await self.list(lambda brief: job_id in brief.depends_on)

    async def delete(self, job_id: str) -> None:
        """Delete a job record; refused while another job depends on it (as DIGITS did)."""
        job = await self.get(job_id)
        users = await self.dependents(job_id)
        if users:
            names = ", ".join(f"{u.name} ({u.id})" for u in users)
            raise JobError(f"cannot delete {job.type} {job.name!r} ({job_id}): used by {names}")
        await self.kv.delete(job_id)
        await self._publish(events.JobDeleted(job_id=job_id), f"job:{job_id}:deleted")

    async def _announce(self, old: Job | None, new: Job, revision: int) -> None:
        if old is None or old.status != new.status:
            event = events.JobStatusChanged(
                job_id=new.id,
                job_type=new.type,
                status=new.status,
                previous=old.status if old else None,
                message=new.history[-1].message if new.history else "",
            )
            await self._publish(event, f"job:{new.id}:rev{revision}:status")
        if old is not None:
            for stage in new.stages:
                if stage != old.stage(stage.name):
                    event = events.StageProgress(
                        job_id=new.id,
                        stage=stage.name,
                        status=stage.status,
                        progress=stage.progress,
                        done=stage.done,
                        total=stage.total,
                    )
                    await self._publish(event, f"job:{new.id}:rev{revision}:stage:{stage.name}")
            fields = [f for f in ("name", "group", "notes") if getattr(old, f) != getattr(new, f)]
            if fields:
                updated = events.JobUpdated(job_id=new.id, fields=fields)
                await self._publish(updated, f"job:{new.id}:rev{revision}:updated")

    async def _publish(self, event: events.Event, msg_id: str) -> None:
        # The KV record is the truth; an event lost to a long outage is logged, not fatal.
        try:
            await bus.publish(
                self.js, events.subject_for(event), events.encode(event), msg_id=msg_id
            )
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.error("could not publish %s for job %s: %r", events.tag_of(type(event)), event, exc)
