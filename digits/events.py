"""Typed event contracts: msgspec Structs, plain msgpack maps on the wire.

Every event is a map with a ``type`` tag, an ``event_id`` and an ``occurred_at`` (Unix seconds,
a float): no msgpack extension types, so any msgpack library in any language can publish one.
Within v1 changes are additive and new fields get defaults.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import msgspec

from digits import subjects

# Ids become KV keys (job records, idempotency claims) and subject tokens (a job's events):
# letters, digits, "_", "-" and "=" only, so that a bad one is refused when it is decoded.
ID_PATTERN = r"^[A-Za-z0-9_=-]+$"
JobId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=128)]
EventId = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=128)]


def new_event_id() -> str:
    """A fresh random event id."""
    return uuid.uuid4().hex


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    event_id: EventId = msgspec.field(default_factory=new_event_id)
    occurred_at: float = msgspec.field(default_factory=time.time)


CLASSIFICATION = "image-classification"  # the built-in data extension: the default of the commands
GENERIC = "image-generic"  # the model.create extension of generic models


# --- commands (DIGITS_CMD) -------------------------------------------------------------------


class DatasetCreate(Event, frozen=True, kw_only=True, tag="dataset.create"):
    """Create a dataset job with a data extension and its validated form."""

    name: str
    extension: str = CLASSIFICATION
    form: dict[str, Any] = msgspec.field(default_factory=dict)
    group: str = ""
    owner: str = ""
    job_id: JobId | None = None


class ModelCreate(Event, frozen=True, kw_only=True, tag="model.create"):
    """Create a model job that trains on a dataset job."""

    name: str
    dataset_id: JobId
    extension: str = CLASSIFICATION
    form: dict[str, Any] = msgspec.field(default_factory=dict)
    group: str = ""
    owner: str = ""
    job_id: JobId | None = None


class JobAbort(Event, frozen=True, kw_only=True, tag="job.abort"):
    """Abort a waiting or running job."""

    job_id: JobId
    reason: str = ""


class JobDelete(Event, frozen=True, kw_only=True, tag="job.delete"):
    """Delete a job record (refused while other jobs depend on it)."""

    job_id: JobId


class JobEdit(Event, frozen=True, kw_only=True, tag="job.edit"):
    """Change a job's name, group or notes; fields left out stay as they are."""

    job_id: JobId
    name: str | None = None
    group: str | None = None
    notes: str | None = None


# --- work items (DIGITS_WORK) ---------------------------------------------------------------


class IngestShard(Event, frozen=True, kw_only=True, tag="ingest.shard"):
    """Encode one shard of a dataset stage: its entries are stored at ``entries_key``."""

    job_id: JobId
    stage: str
    shard: int
    shards: int
    entries_key: str
    count: int
    version: int = 1


class IngestFinalize(Event, frozen=True, kw_only=True, tag="ingest.finalize"):
    """Every shard of a dataset version is written: compute mean, histogram, manifest."""

    job_id: JobId
    version: int = 1


class TrainWork(Event, frozen=True, kw_only=True, tag="train.work"):
    """Train one model job (its form and dataset are in the job record)."""

    job_id: JobId


class RegistryRegister(Event, frozen=True, kw_only=True, tag="registry.register"):
    """Register model job ``job_id`` as version 1 of a new name (or the next version of one)."""

    name: str
    job_id: JobId
    owner: str = ""
    description: str = ""
    rule: dict[str, Any] | None = None  # a PromotionRule's fields: alias, metric, margin
    aliases: list[str] = msgspec.field(default_factory=list)  # given to this version now


class RegistryPromote(Event, frozen=True, kw_only=True, tag="registry.promote"):
    """Move ``alias`` of ``name`` to version ``version`` (by hand).

    ``expected``: the version the sender saw holding the alias (0: none); if it moved since,
    the command is rejected as a conflict. Left out, the holder when the command is read counts.
    """

    name: str
    version: int
    alias: str = "production"
    owner: str = ""
    expected: int | None = None
    reason: str = ""


class RegistrySet(Event, frozen=True, kw_only=True, tag="registry.set"):
    """Change a registered model's rule, description or follower bounds; left out stays."""

    name: str
    owner: str = ""
    description: str | None = None
    rule: dict[str, Any] | None = None
    follow: dict[str, Any] | None = None  # min_new_samples, min_interval_s, mode


# --- facts (DIGITS_EVT) ----------------------------------------------------------------------


class JobStatusChanged(Event, frozen=True, kw_only=True, tag="job.status"):
    """A job moved to a new status (one of I, W, R, D, A, E)."""

    job_id: JobId
    job_type: str
    status: str
    previous: str | None = None
    message: str = ""


class StageProgress(Event, frozen=True, kw_only=True, tag="job.stage"):
    """A stage of a job changed status or progress."""

    job_id: JobId
    stage: str
    status: str
    progress: float = 0.0
    done: int = 0
    total: int = 0


class JobUpdated(Event, frozen=True, kw_only=True, tag="job.updated"):
    """A job's descriptive fields (name, group, notes) changed."""

    job_id: JobId
    fields: list[str] = msgspec.field(default_factory=list)


class JobDeleted(Event, frozen=True, kw_only=True, tag="job.deleted"):
    """A job record was deleted."""

    job_id: JobId


class DatasetReady(Event, frozen=True, kw_only=True, tag="dataset.ready"):
    """A dataset is complete: its manifest is at ``manifest_url``."""

    job_id: JobId
    manifest_url: str
    version: int = 1
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    num_labels: int = 0


class DatasetUpdated(Event, frozen=True, kw_only=True, tag="dataset.updated"):
    """A dataset grew by a new version (objects landed in a watched bucket prefix)."""

    job_id: JobId
    manifest_url: str
    version: int
    added: dict[str, int] = msgspec.field(default_factory=dict)
    counts: dict[str, int] = msgspec.field(default_factory=dict)


class TrainProgress(Event, frozen=True, kw_only=True, tag="train.progress"):
    """Training metrics several times per epoch (phase "train") and at validations ("val")."""

    job_id: JobId
    phase: str = "train"
    epoch: float
    step: int = 0
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    learning_rate: float | None = None
    images_per_s: float | None = None


class HardwareUsage(Event, frozen=True, kw_only=True, tag="train.hardware"):
    """CPU, memory and per-GPU use of the worker running a job, every few seconds."""

    job_id: JobId
    cpu_pct: float = 0.0
    memory_bytes: int = 0
    gpus: list[dict[str, float]] = msgspec.field(default_factory=list)


class SnapshotSaved(Event, frozen=True, kw_only=True, tag="train.snapshot"):
    """A snapshot of the model at ``epoch`` is stored at ``url``."""

    job_id: JobId
    epoch: float
    url: str


class ModelReady(Event, frozen=True, kw_only=True, tag="model.ready"):
    """Training finished: the snapshots and the final metrics."""

    job_id: JobId
    epochs: float
    snapshots: list[float] = msgspec.field(default_factory=list)
    metrics: dict[str, float] = msgspec.field(default_factory=dict)


class CommandRejected(Event, frozen=True, kw_only=True, tag="command.rejected"):
    """A command could not be carried out; ``reason`` says why."""

    command_type: str
    command_id: str
    reason: str
    job_id: JobId | None = None


class RegistryChanged(Event, frozen=True, kw_only=True, tag="registry.changed"):
    """A registered model changed: registered, a version added or finished, an alias moved, ..."""

    name: str
    kind: str
    version: int | None = None
    alias: str = ""
    previous: int | None = None
    job_id: str | None = None
    by: str = ""
    reason: str = ""
    command_id: str = ""


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


Command = (
    DatasetCreate
    | ModelCreate
    | JobAbort
    | JobDelete
    | JobEdit
    | RegistryRegister
    | RegistryPromote
    | RegistrySet
)
Work = IngestShard | IngestFinalize | TrainWork
Fact = (
    JobStatusChanged
    | StageProgress
    | JobUpdated
    | JobDeleted
    | DatasetReady
    | DatasetUpdated
    | TrainProgress
    | HardwareUsage
    | SnapshotSaved
    | ModelReady
    | CommandRejected
    | RegistryChanged
)
AnyEvent = Command | Work | Fact | Heartbeat

ALL_EVENTS: tuple[type[Event], ...] = (
    DatasetCreate,
    ModelCreate,
    JobAbort,
    JobDelete,
    JobEdit,
    RegistryRegister,
    RegistryPromote,
    RegistrySet,
    IngestShard,
    IngestFinalize,
    TrainWork,
    JobStatusChanged,
    StageProgress,
    JobUpdated,
    JobDeleted,
    DatasetReady,
    DatasetUpdated,
    TrainProgress,
    HardwareUsage,
    SnapshotSaved,
    ModelReady,
    CommandRejected,
    RegistryChanged,
    Heartbeat,
)

COMMAND_SUBJECTS: dict[type[Event], str] = {
    DatasetCreate: subjects.CMD_DATASET_CREATE,
    ModelCreate: subjects.CMD_MODEL_CREATE,
    JobAbort: subjects.CMD_JOB_ABORT,
    JobDelete: subjects.CMD_JOB_DELETE,
    JobEdit: subjects.CMD_JOB_EDIT,
    RegistryRegister: subjects.CMD_REGISTRY_REGISTER,
    RegistryPromote: subjects.CMD_REGISTRY_PROMOTE,
    RegistrySet: subjects.CMD_REGISTRY_SET,
    IngestShard: subjects.WORK_INGEST_SHARD,
    IngestFinalize: subjects.WORK_INGEST_FINALIZE,
    TrainWork: subjects.WORK_TRAIN,
}

# The last tokens of a fact's subject, after digits.v1.evt.job.<job_id>.
JOB_EVENT_NAMES: dict[type[Event], str] = {
    JobStatusChanged: "status",
    StageProgress: "stage",
    JobUpdated: "updated",
    JobDeleted: "deleted",
    CommandRejected: "rejected",
    DatasetReady: "dataset.ready",
    DatasetUpdated: "dataset.updated",
    TrainProgress: "train.progress",
    HardwareUsage: "train.hardware",
    SnapshotSaved: "train.snapshot",
    ModelReady: "model.ready",
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
    if isinstance(event, RegistryChanged):
        return subjects.evt_registry(event.name, event.kind)
    job_id = getattr(event, "job_id", None)
    name = JOB_EVENT_NAMES.get(type(event), tag_of(type(event)))
    if job_id:
        return subjects.evt_job(job_id, name)
    return f"{subjects.EVT}.{name}"


def msg_id_for(event: Event) -> str:
    """A deduplication id derived from the event's content."""
    if isinstance(event, IngestShard):
        return f"shard:{event.job_id}/v{event.version}/{event.stage}/{event.shard}"
    if isinstance(event, IngestFinalize):
        return f"finalize:{event.job_id}/v{event.version}"
    if isinstance(event, TrainWork):
        return f"train:{event.job_id}"
    return f"{tag_of(type(event))}:{event.event_id}"
