"""``POST /api/v1/s3/events``: S3 notifications over HTTP (AWS, SNS, MinIO) into DIGITS_S3.

SNS messages are published only when their signature verifies (``digits.sns``); a verified
SubscriptionConfirmation is confirmed by GETting its SubscribeURL unless DIGITS_SNS_CONFIRM is off.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import quote_plus

import msgspec
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from digits import bus, sns, subjects
from digits.notifications import NotificationError, ObjectCreated, parse_notification
from digits.sns import SnsError, SnsVerifier
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


def _envelope(body: bytes) -> dict[str, Any] | None:
    """The SNS envelope a body holds, or None if it is not one (a bare S3 or MinIO event)."""
    header = request.headers.get("x-amz-sns-message-type")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if header:
        if not isinstance(doc, dict):
            raise SnsError(f"SNS {header[:40]!r} message is not a JSON object")
        if doc.get("Type") != header:
            raise SnsError(
                f"x-amz-sns-message-type {header[:40]!r} differs from the body's Type "
                f"{str(doc.get('Type'))[:40]!r}"
            )
        return doc
    if isinstance(doc, dict) and doc.get("Type") in sns.TYPES:
        return doc
    return None


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
    try:
        envelope = _envelope(body)
        if envelope is None:
            return _publish(body)
        return _sns_message(envelope)
    except SnsError as exc:
        log.warning("SNS message refused (%s): %s", exc.status, exc)
        return _error(str(exc), exc.status)


def _sns_message(msg: dict[str, Any]) -> ResponseReturnValue:
    """Verify an SNS message, then publish its S3 event, or confirm or note a subscription."""
    verifier: SnsVerifier = current_app.config["SNS"]
    verifier.verify(msg)
    kind, topic = msg["Type"], msg["TopicArn"]
    if kind == sns.NOTIFICATION:
        return _publish(msg["Message"].encode("utf-8"))
    if kind == sns.UNSUBSCRIBE:
        log.info("SNS subscription to %s ended; it is not renewed", topic)
        return jsonify({"ok": True, "published": 0, "note": f"SNS {kind} acknowledged"})
    if current_app.config["SETTINGS"].sns_confirm:
        subscription = verifier.confirm(msg)
        log.info("SNS subscription %s confirmed", subscription)
        return jsonify(
            {"ok": True, "published": 0, "note": f"SNS subscription {subscription} confirmed"}
        )
    # DIGITS_SNS_CONFIRM=0: the operator confirms, with this URL or the AWS console/CLI.
    log.warning(
        "SNS subscription to %s awaits confirmation: visit %s", topic, verifier.subscribe_url(msg)
    )
    note = f"SNS {kind} acknowledged; an operator confirms it (DIGITS_SNS_CONFIRM is off)"
    return jsonify({"ok": True, "published": 0, "note": note})


def _publish(data: bytes) -> ResponseReturnValue:
    """Publish one DIGITS_S3 message per created object of an S3 or MinIO event."""
    try:
        created = parse_notification(data)
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
