"""Every subject, stream, consumer and KV bucket name: the one place they live."""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "digits.v1"

# Subject roots, one per stream (DESIGN.md "The bus").
CMD = f"{PREFIX}.cmd"
WORK = f"{PREFIX}.work"
S3 = f"{PREFIX}.s3"
EVT = f"{PREFIX}.evt"
RPC = f"{PREFIX}.rpc"
DLQ = f"{PREFIX}.dlq"
HEARTBEAT = f"{PREFIX}.hb"

# Commands: any system may publish these with plain msgpack.
CMD_DATASET_CREATE = f"{CMD}.dataset.create"
CMD_MODEL_CREATE = f"{CMD}.model.create"
CMD_JOB_ABORT = f"{CMD}.job.abort"
CMD_JOB_DELETE = f"{CMD}.job.delete"
CMD_JOB_EDIT = f"{CMD}.job.edit"
# The model registry: register a model job under a name, move an alias, change a rule.
CMD_REGISTRY = f"{CMD}.registry"
CMD_REGISTRY_REGISTER = f"{CMD_REGISTRY}.register"
CMD_REGISTRY_PROMOTE = f"{CMD_REGISTRY}.promote"
CMD_REGISTRY_SET = f"{CMD_REGISTRY}.set"

# Work items, one message per unit of work.
WORK_INGEST_SHARD = f"{WORK}.ingest.shard"
WORK_INGEST_FINALIZE = f"{WORK}.ingest.finalize"
WORK_TRAIN = f"{WORK}.train"

# Inference and other synchronous queries (core NATS request/reply, queue groups).
RPC_INFER = f"{RPC}.infer"
RPC_INFER_CLASSIFY = f"{RPC_INFER}.classify"
RPC_INFER_MANY = f"{RPC_INFER}.many"
RPC_INFER_TOPN = f"{RPC_INFER}.topn"
RPC_INFER_GENERIC = f"{RPC_INFER}.generic"  # generic models, rendered by a view extension

# Streams.
STREAM_CMD = "DIGITS_CMD"
STREAM_WORK = "DIGITS_WORK"
STREAM_S3 = "DIGITS_S3"
STREAM_EVT = "DIGITS_EVT"
STREAM_DLQ = "DIGITS_DLQ"
STREAM_ADVISORY = "DIGITS_ADVISORY"

# Server advisories the dead-letter forwarder listens to.
ADVISORY_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"

# KV buckets.
KV_JOBS = "digits-jobs"
KV_SECRETS = "digits-secrets"
KV_IDEM = "digits-idem"
KV_USERS = "digits-users"
KV_LOGINS = "digits-logins"  # failed logins, shared by the gateway replicas
KV_PENDING = "digits-pending"  # jobs a gateway submitted that no service has stored yet
KV_REGISTRY = "digits-registry"  # registered models: versions, aliases, rules (digits/registry.py)

# Durable consumers.
CONSUMER_JOB_COMMANDS = "job-commands"
CONSUMER_DATASET_COMMANDS = "dataset-commands"
CONSUMER_MODEL_COMMANDS = "model-commands"
CONSUMER_INGEST = "ingest-work"
CONSUMER_TRAIN = "train"
CONSUMER_DLQ_FORWARDER = "dlq-forwarder"
CONSUMER_S3_NOTIFICATIONS = "s3-notifications"
CONSUMER_MODEL_SCHEDULER = "model-scheduler"
CONSUMER_REGISTRY_COMMANDS = "registry-commands"
CONSUMER_MODEL_FOLLOWERS = "model-followers"

# Queue groups for request/reply services.
QUEUE_VIEW = "view"


def evt_job(job_id: str, name: str) -> str:
    """Subject of one job's event ``name`` (status, stage, progress, ...)."""
    return f"{EVT}.job.{job_id}.{name}"


def evt_job_all(job_id: str = "*") -> str:
    """Wildcard subject for every event of one job (or of all jobs)."""
    return f"{EVT}.job.{job_id}.>"


def evt_registry(name: str, kind: str) -> str:
    """Subject of one change (``kind``: promoted, version, ...) of registered model ``name``."""
    return f"{EVT}.registry.{name}.{kind}"


def evt_registry_all(name: str = "*") -> str:
    """Wildcard subject for every change of one registered model (or of all)."""
    return f"{EVT}.registry.{name}.>"


def heartbeat(service: str, instance: str) -> str:
    """Core NATS subject a service instance publishes its heartbeat on."""
    return f"{HEARTBEAT}.{service}.{instance}"


def dlq(stream: str, consumer: str) -> str:
    """Subject of the dead letters of one stream's consumer."""
    return f"{DLQ}.{stream}.{consumer}"


@dataclass(frozen=True)
class StreamSpec:
    """What a stream holds and how long."""

    name: str
    subjects: tuple[str, ...]
    work_queue: bool = False
    max_age_s: float | None = None
    duplicate_window_s: float = 120.0
    description: str = ""


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: which stream, which subjects, how patiently."""

    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = field(default=())
    deliver_new: bool = False  # start at the stream's end rather than replay its history


DAY = 24 * 3600.0

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(STREAM_CMD, (f"{CMD}.>",), max_age_s=7 * DAY, description="commands"),
    StreamSpec(STREAM_WORK, (f"{WORK}.>",), work_queue=True, description="work items"),
    StreamSpec(STREAM_S3, (f"{S3}.>",), max_age_s=7 * DAY, description="S3 notifications"),
    StreamSpec(STREAM_EVT, (f"{EVT}.>",), max_age_s=30 * DAY, description="facts"),
    StreamSpec(STREAM_DLQ, (f"{DLQ}.>",), max_age_s=90 * DAY, description="dead letters"),
    StreamSpec(
        STREAM_ADVISORY,
        (ADVISORY_MAX_DELIVERIES,),
        max_age_s=7 * DAY,
        description="max-deliveries advisories, turned into dead letters",
    ),
)

CONSUMERS: dict[str, ConsumerSpec] = {
    c.durable: c
    for c in (
        ConsumerSpec(CONSUMER_JOB_COMMANDS, STREAM_CMD, (f"{CMD}.job.>",)),
        ConsumerSpec(CONSUMER_DATASET_COMMANDS, STREAM_CMD, (f"{CMD}.dataset.>",)),
        ConsumerSpec(CONSUMER_MODEL_COMMANDS, STREAM_CMD, (f"{CMD}.model.>",)),
        ConsumerSpec(CONSUMER_REGISTRY_COMMANDS, STREAM_CMD, (f"{CMD_REGISTRY}.>",)),
        ConsumerSpec(CONSUMER_INGEST, STREAM_WORK, (f"{WORK}.ingest.>",)),
        ConsumerSpec(CONSUMER_TRAIN, STREAM_WORK, (WORK_TRAIN,), max_deliver=3),
        ConsumerSpec(
            CONSUMER_MODEL_SCHEDULER, STREAM_EVT, (evt_job("*", "status"),), deliver_new=True
        ),
        ConsumerSpec(
            CONSUMER_MODEL_FOLLOWERS,
            STREAM_EVT,
            (evt_job("*", "dataset.updated"),),
            deliver_new=True,
        ),
        ConsumerSpec(CONSUMER_DLQ_FORWARDER, STREAM_ADVISORY, (ADVISORY_MAX_DELIVERIES,)),
        ConsumerSpec(CONSUMER_S3_NOTIFICATIONS, STREAM_S3, (f"{S3}.>",)),
    )
}

KV_BUCKETS: dict[str, dict] = {
    KV_JOBS: {"history": 5, "description": "job records"},
    KV_SECRETS: {"history": 1, "description": "encrypted credentials"},
    KV_IDEM: {"history": 1, "ttl": 7 * DAY, "description": "idempotency claims"},
    KV_USERS: {"history": 1, "description": "gateway users and API token hashes"},
    # The gateways' short-lived shared state: the TTL ends an entry after its last write.
    KV_LOGINS: {
        "history": 1,
        "ttl": 15 * 60.0,
        "description": "recent failed logins (hashed keys)",
    },
    KV_PENDING: {"history": 1, "ttl": 300.0, "description": "just-submitted jobs, not stored yet"},
    KV_REGISTRY: {"history": 5, "description": "registered models, versions and aliases"},
}
