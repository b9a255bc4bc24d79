"""``POST /api/v1/s3/events``: S3 notifications over HTTP (AWS, SNS, MinIO) into DIGITS_S3."""

from __future__ import annotations

import hmac
import json
import logging
import re
from urllib.parse import quote_plus

import msgspec
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from digits import bus, subjects
from digits.notifications import NotificationError, ObjectCreated, parse_notification
from gateway import context

log = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)
MAX_BODY_BYTES = 1 << 20
# S3 bucket names (and MinIO's): also keeps the subject token free of wildcards and spaces.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _error(message: str, code: int) -> ResponseReturnValue:
    return jsonify({"error": message}), code


def _authorized(expected: str) -> bool:
    """The token as a bearer token, or as the password of HTTP Basic auth.

    SNS's HTTPS subscriptions cannot set headers, but they send the user and password of an
    endpoint like ``https://sns:<token>@host/api/v1/s3/events`` as Basic auth.
    """
    auth = request.authorization
    given = None
    if auth is not None and auth.type == "bearer":
        given = auth.token
    elif auth is not None and auth.type == "basic":
        given = auth.password
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _sns_type(body: bytes) -> str | None:
    """The SNS message type of a body, if it is an SNS envelope."""
    header = request.headers.get("x-amz-sns-message-type")
    if header:
        return header
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    kind = doc.get("Type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


def single_record(obj: ObjectCreated) -> bytes:
    """One created object as a single-record AWS S3 event (its key URL-encoded, as S3 sends it)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "minio:s3" if obj.source == "minio" else "aws:s3",
        "eventName": obj.event_name or "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": obj.bucket},
            "object": {"key": quote_plus(obj.key, safe="/"), "eTag": obj.etag, "size": obj.size},
        },
    }
    return msgspec.json.encode({"Records": [record]})


def _check(obj: ObjectCreated) -> str | None:
    if not BUCKET.match(obj.bucket) or ".." in obj.bucket:
        return f"bucket {obj.bucket!r} is not a valid S3 bucket name"
    if _CONTROL.search(obj.key) or _CONTROL.search(obj.etag):
        return f"object key {obj.key!r} or its eTag holds control characters"
    return None


@bp.post("/api/v1/s3/events")
def s3_events() -> ResponseReturnValue:
    """Validate an S3 notification and publish one DIGITS_S3 message per created object."""
    expected = current_app.config.get("S3_WEBHOOK_TOKEN")
    if not expected:
        return _error("webhook disabled: set DIGITS_S3_WEBHOOK_TOKEN to enable it", 503)
    if not _authorized(expected):
        response = jsonify({"error": "a valid 'Authorization: Bearer' token is required"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="DIGITS S3 webhook"'
        return response, 401
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _error(f"notification exceeds {MAX_BODY_BYTES} bytes", 413)
    body = request.get_data(cache=False)
    if len(body) > MAX_BODY_BYTES:
        return _error(f"notification of {len(body)} bytes exceeds {MAX_BODY_BYTES} bytes", 413)
    sns_type = _sns_type(body)
    if sns_type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        # The gateway makes no outbound HTTP requests: an operator confirms the subscription by
        # visiting the SubscribeURL of this message (logged here) or with the AWS console/CLI.
        log.warning("SNS %s received; an operator must visit its SubscribeURL", sns_type)
        return jsonify({"ok": True, "published": 0, "note": f"SNS {sns_type} acknowledged"})
    try:
        created = parse_notification(body)
    except NotificationError as exc:
        return _error(str(exc), 400)
    for obj in created:
        problem = _check(obj)
        if problem:
            return _error(problem, 400)
    bus_client = context.bus_client()
    if bus_client.nc is None or not bus_client.nc.is_connected:
        return _error("not connected to NATS; retry later", 503)
    js = bus_client.nc.jetstream()
    for obj in created:
        msg_id = f"s3:{obj.bucket}/{obj.key}@{obj.etag}"
        subject = f"{subjects.S3}.{obj.bucket}"
        bus_client.call(bus.publish(js, subject, single_record(obj), msg_id=msg_id), timeout=15)
    return jsonify({"ok": True, "published": len(created)})
