"""Typed event contracts: msgspec Structs, plain msgpack maps on the wire.

Every event is a map with a ``type`` tag, an ``event_id`` and an ``occurred_at`` (Unix seconds,
a float): no msgpack extension types, so any msgpack library in any language can publish one.
Within v1 changes are additive and new fields get defaults.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from digits import subjects


def new_event_id() -> str:
    """A fresh random event id."""
    return uuid.uuid4().hex


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: float = msgspec.field(default_factory=time.time)


# --- commands (DIGITS_CMD) -------------------------------------------------------------------


class DatasetCreate(Event, frozen=True, kw_only=True, tag="dataset.create"):
    """Create a dataset job with a data extension and its validated form."""

    name: str
    extension: str = "image-classification"
    form: dict[str, Any] = msgspec.field(default_factory=dict)
    group: str = ""
    owner: str = ""
    job_id: str | None = None


class ModelCreate(Event, frozen=True, kw_only=True, tag="model.create"):
    """Create a model job that trains on a dataset job."""

    name: str
    dataset_id: str
    extension: str = "image-classification"
    form: dict[str, Any] = msgspec.field(default_factory=dict)
    group: str = ""
    owner: str = ""
    job_id: str | None = None


class JobAbort(Event, frozen=True, kw_only=True, tag="job.abort"):
    """Abort a waiting or running job."""

    job_id: str
    reason: str = ""


class JobDelete(Event, frozen=True, kw_only=True, tag="job.delete"):
    """Delete a job record (refused while other jobs depend on it)."""

    job_id: str


class JobEdit(Event, frozen=True, kw_only=True, tag="job.edit"):
    """Change a job's name, group or notes; fields left out stay as they are."""

    job_id: str
    name: str | None = None
    group: str | None = None
    notes: str | None = None


# --- facts (DIGITS_EVT) ----------------------------------------------------------------------


class JobStatusChanged(Event, frozen=True, kw_only=True, tag="job.status"):
    """A job moved to a new status (one of I, W, R, D, A, E)."""

    job_id: str
    job_type: str
    status: str
    previous: str | None = None
    message: str = ""


class StageProgress(Event, frozen=True, kw_only=True, tag="job.stage"):
    """A stage of a job changed status or progress."""

    job_id: str
    stage: str
    status: str
    progress: float = 0.0
    done: int = 0
    total: int = 0


class JobUpdated(Event, frozen=True, kw_only=True, tag="job.updated"):
    """A job's descriptive fields (name, group, notes) changed."""

    job_id: str
    fields: list[str] = msgspec.field(default_factory=list)


class JobDeleted(Event, frozen=True, kw_only=True, tag="job.deleted"):
    """A job record was deleted."""

    job_id: str


class CommandRejected(Event, frozen=True, kw_only=True, tag="command.rejected"):
    """A command could not be carried out; ``reason`` says why."""

    command_type: str
    command_id: str
    reason: str
    job_id: str | None = None


# --- liveness (core NATS, not stored) --------------------------------------------------------


class Heartbeat(Event, frozen=True, kw_only=True, tag="service.heartbeat"):
    """A service instance is alive; counters since it started."""

    service: str
    instance: str
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    interval_s: float = 5.0
    handled: int = 0
    failed: int = 0
    in_flight: int = 0


Command = DatasetCreate | ModelCreate | JobAbort | JobDelete | JobEdit
Fact = JobStatusChanged | StageProgress | JobUpdated | JobDeleted | CommandRejected
AnyEvent = Command | Fact | Heartbeat

ALL_EVENTS: tuple[type[Event], ...] = (
    DatasetCreate,
    ModelCreate,
    JobAbort,
    JobDelete,
    JobEdit,
    JobStatusChanged,
    StageProgress,
    JobUpdated,
    JobDeleted,
    CommandRejected,
    Heartbeat,
)

COMMAND_SUBJECTS: dict[type[Event], str] = {
    DatasetCreate: subjects.CMD_DATASET_CREATE,
    ModelCreate: subjects.CMD_MODEL_CREATE,
    JobAbort: subjects.CMD_JOB_ABORT,
    JobDelete: subjects.CMD_JOB_DELETE,
    JobEdit: subjects.CMD_JOB_EDIT,
}

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder] = {}


def tag_of(cls: type[Event]) -> str:
    """The wire ``type`` of an event class."""
    return cls.__struct_config__.tag


def encode(event: Event) -> bytes:
    """Encode an event as a plain msgpack map."""
    return _encoder.encode(event)


def decode(data: bytes, kind: Any = AnyEvent) -> Any:
    """Decode msgpack bytes as one of ``kind``; raises msgspec.ValidationError naming the field."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return decoder.decode(data)


def subject_for(event: Event) -> str:
    """The subject an event is published on."""
    if type(event) in COMMAND_SUBJECTS:
        return COMMAND_SUBJECTS[type(event)]
    if isinstance(event, Heartbeat):
        return subjects.heartbeat(event.service, event.instance)
    job_id = getattr(event, "job_id", None)
    if job_id:
        return subjects.evt_job(job_id, tag_of(type(event)).split(".", 1)[1])
    return f"{subjects.EVT}.{tag_of(type(event))}"


def msg_id_for(event: Event) -> str:
    """A deduplication id derived from the event's content (its id and type)."""
    return f"{tag_of(type(event))}:{event.event_id}"
