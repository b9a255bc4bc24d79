"""Inference request handlers: plain msgpack in, plain msgpack out."""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg

from digits.jobs import JobNotFound, JobStore

MAX_REQUEST_BYTES = 8 * 1024 * 1024


class InferRequest(msgspec.Struct, kw_only=True):
    """What a caller asks for: a model job, a snapshot epoch (-1: last) and inputs."""

    job_id: str
    epoch: float = -1
    images: list[bytes] = msgspec.field(default_factory=list)


def _error(message: str) -> bytes:
    return msgspec.msgpack.encode({"ok": False, "error": message})


async def infer(jobs: JobStore, msg: Msg) -> bytes:
    """Reply to an inference request; every bad input gets an error reply naming it."""
    if len(msg.data) > MAX_REQUEST_BYTES:
        return _error(f"request of {len(msg.data)} bytes exceeds {MAX_REQUEST_BYTES} bytes")
    try:
        req = msgspec.msgpack.decode(msg.data, type=InferRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(f"malformed inference request: {exc}")
    try:
        job = await jobs.get(req.job_id)
    except JobNotFound as exc:
        return _error(str(exc))
    if job.type != "model":
        return _error(f"job {job.id} is a {job.type}, not a model")
    snapshots = job.extra.get("snapshots") or []
    if not snapshots:
        return _error(f"model {job.id} has no snapshot yet")
    return _error(f"model {job.id}: inference is not available in this version")
