"""Parse S3 object-created notifications: AWS S3 events (bare, SNS, SQS-like) and MinIO's NATS ones.

Every parser error is a NotificationError (a ValueError) whose message says what is wrong and
where; the keys it returns are URL-decoded, as S3 sends them encoded.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote_plus

import msgspec

CREATED = "ObjectCreated:"
_HEAD = 60
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class NotificationError(ValueError):
    """A notification that cannot be parsed; the message names what is wrong and where."""


class ObjectCreated(msgspec.Struct, frozen=True, kw_only=True):
    """One created object: its bucket, decoded key, ETag (no quotes), size and event name."""

    bucket: str
    key: str
    etag: str = ""
    size: int = 0
    event_name: str = ""
    source: Literal["aws", "minio"] = "aws"


def _head(data: bytes) -> str:
    """The repr of the first bytes of ``data``: at most 60 characters, ending "..." if cut."""
    if len(repr(data)) <= _HEAD:
        return repr(data)
    n = min(len(data), _HEAD)
    while n and len(repr(data[:n])) > _HEAD - 3:
        n -= 1
    return repr(data[:n]) + "..."


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _keys(doc: dict[str, Any]) -> str:
    names = [repr(k[:30]) for k in sorted(doc)[:8]]
    return ", ".join(names) + (", ..." if len(doc) > 8 else "") if names else "none"


def _decode(data: bytes, what: str) -> Any:
    if not data.strip():
        raise NotificationError(f"{what} is empty, not JSON")
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise NotificationError(
            f"{what} is not JSON ({exc}); it starts with {_head(data)}"
        ) from None


def _path(value: Any, path: str, index: int) -> Any:
    """The value at dotted ``path`` in record ``index``; NotificationError if it is missing."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise NotificationError(f"Records[{index}] has no {path}")
        value = value[part]
    return value


def _string(record: dict[str, Any], path: str, index: int) -> str:
    value = _path(record, path, index)
    if not isinstance(value, str) or not value:
        raise NotificationError(
            f"Records[{index}].{path} must be a non-empty string, not {_json_type(value)}"
        )
    return value


def _size(obj: dict[str, Any], index: int) -> int:
    size = obj.get("size", 0)
    if size is None:
        return 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise NotificationError(
            f"Records[{index}].s3.object.size must be a non-negative integer, not {size!r}"
        )
    return size


def _event_name(name: Any) -> str:
    """``s3:ObjectCreated:Put`` (MinIO) and ``ObjectCreated:Put`` (AWS) both as the latter."""
    name = name if isinstance(name, str) else ""
    return name[3:] if name.startswith("s3:") else name


def _records(records: Any, minio: bool) -> list[ObjectCreated]:
    if not isinstance(records, list):
        raise NotificationError(f"Records must be an array, not {_json_type(records)}")
    created: list[ObjectCreated] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise NotificationError(f"Records[{index}] must be an object, not {_json_type(record)}")
        if "eventName" not in record:
            raise NotificationError(f"Records[{index}] has no eventName")
        name = _event_name(record["eventName"])
        if not name.startswith(CREATED):
            continue  # ObjectRemoved, replication and other events are not ours
        bucket = _string(record, "s3.bucket.name", index)
        key = unquote_plus(_string(record, "s3.object.key", index))
        obj = record["s3"]["object"]
        etag = obj.get("eTag") or obj.get("etag") or ""
        is_minio = minio or str(record.get("eventSource", "")).startswith("minio")
        created.append(
            ObjectCreated(
                bucket=bucket,
                key=key,
                etag=str(etag).strip('"'),
                size=_size(obj, index),
                event_name=name,
                source="minio" if is_minio else "aws",
            )
        )
    return created


def _minio_key_only(doc: dict[str, Any]) -> list[ObjectCreated]:
    """A MinIO payload without Records: ``Key`` is ``bucket/object`` (already decoded)."""
    name = _event_name(doc.get("EventName"))
    if not name.startswith(CREATED):
        return []
    full = doc.get("Key")
    bucket, _, key = full.partition("/") if isinstance(full, str) else ("", "", "")
    if not bucket or not key:
        raise NotificationError(f"MinIO Key must be 'bucket/object', not {full!r}")
    return [ObjectCreated(bucket=bucket, key=key, event_name=name, source="minio")]


def _parse(data: bytes, what: str, depth: int) -> list[ObjectCreated]:
    doc = _decode(data, what)
    if not isinstance(doc, dict):
        raise NotificationError(f"{what} must be a JSON object, not {_json_type(doc)}")
    if doc.get("Type") == "Notification" and "Message" in doc and depth == 0:
        message = doc["Message"]
        if not isinstance(message, str):
            raise NotificationError(f"SNS Message must be a string, not {_json_type(message)}")
        return _parse(message.encode("utf-8", "surrogatepass"), "SNS Message", depth + 1)
    if isinstance(doc.get("Type"), str) and "Records" not in doc and "Event" not in doc:
        raise NotificationError(f"SNS message of type {doc['Type']!r} carries no S3 event")
    minio = "EventName" in doc
    if "Records" in doc:
        return _records(doc["Records"], minio)
    if minio:
        return _minio_key_only(doc)
    if doc.get("Event") == "s3:TestEvent":
        return []  # sent by S3 when notifications are configured
    raise NotificationError(f"{what} is not an S3 event: it has no Records (keys: {_keys(doc)})")


def parse_notification(data: bytes) -> list[ObjectCreated]:
    """The object-created events in one notification; other events are skipped."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise NotificationError(f"notification must be bytes, not {type(data).__name__}")
    return _parse(data, "notification", 0)
