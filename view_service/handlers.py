"""Inference requests over NATS: plain msgpack in, plain msgpack out, one handler per subject."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg

from digits import subjects
from digits.inference import MAX_TOTAL_BYTES
from digits.utils.image import ImageError
from view_service import classify, generic
from view_service.models import Deps, InferenceError
from view_service.refs import Target, is_ref

MAX_REQUEST_BYTES = MAX_TOTAL_BYTES + (1 << 20)  # the images plus the request's fields

# subject -> (request type, handler): the one place the inference API is registered.
ROUTES: dict[str, tuple[type, Callable[[Deps, Any], Awaitable[Any]]]] = {
    subjects.RPC_INFER_CLASSIFY: (classify.ClassifyOne, classify.classify_one),
    subjects.RPC_INFER_MANY: (classify.ClassifyMany, classify.classify_many),
    subjects.RPC_INFER_TOPN: (classify.TopN, classify.top_n),
    subjects.RPC_INFER_GENERIC: (generic.InferGeneric, generic.infer_generic),
}


def error(message: str) -> bytes:
    """An error reply."""
    return msgspec.msgpack.encode({"ok": False, "error": message})


async def respond(deps: Deps, msg: Msg) -> bytes:
    """Decode the request for the message's subject, run its handler; every failure is a reply."""
    if len(msg.data) > MAX_REQUEST_BYTES:
        return error(f"request of {len(msg.data)} bytes exceeds {MAX_REQUEST_BYTES} bytes")
    route = ROUTES.get(msg.subject)
    if route is None:
        known = ", ".join(sorted(ROUTES))
        return error(f"no inference handler for {msg.subject!r}; subjects: {known}")
    request_type, handler = route
    try:
        request = msgspec.msgpack.decode(msg.data, type=request_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error(f"malformed {request_type.__name__} request: {exc}")
    ref = request.job_id if is_ref(request.job_id) else None
    try:
        target = await _resolve(deps, ref) if ref else None
        if target is not None:
            request.job_id = target.job_id
        reply = await handler(deps, request)
    except (InferenceError, ImageError) as exc:
        return error(str(exc))
    if target is not None:
        reply.ref, reply.version = target.ref, target.version
    return msgspec.msgpack.encode(reply)


async def _resolve(deps: Deps, ref: str) -> Target:
    """The job a registry ref names now (the serving map's, for an alias)."""
    if deps.refs is None:
        raise InferenceError(f"{ref!r}: this view service does not read the model registry")
    return await deps.refs.resolve(ref)
