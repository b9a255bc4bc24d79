"""Parsing S3 object-created notifications: AWS events, SNS envelopes, MinIO's NATS payloads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from digits.notifications import NotificationError, ObjectCreated, parse_notification


def _record(
    key: str = "my+photo%281%29.png",
    name: str = "ObjectCreated:Put",
    bucket: str = "pics",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": 1234, "eTag": '"0123abcd"', "sequencer": "0A1B"},
        },
        **extra,
    }


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_aws_put_decodes_the_key() -> None:
    (event,) = parse_notification(_encode({"Records": [_record()]}))
    assert event == ObjectCreated(
        bucket="pics",
        key="my photo(1).png",
        etag="0123abcd",
        size=1234,
        event_name="ObjectCreated:Put",
        source="aws",
    )


def test_aws_many_records_keep_only_created() -> None:
    doc = {
        "Records": [
            _record("train/cat/a.png"),
            _record("train/cat/b.png", name="ObjectRemoved:Delete"),
            _record("train/dog/c%20d.png", name="ObjectCreated:CompleteMultipartUpload"),
        ]
    }
    events = parse_notification(_encode(doc))
    assert [(e.key, e.event_name) for e in events] == [
        ("train/cat/a.png", "ObjectCreated:Put"),
        ("train/dog/c d.png", "ObjectCreated:CompleteMultipartUpload"),
    ]


def test_removed_only_and_test_event_give_nothing() -> None:
    removed = {"Records": [_record(name="ObjectRemoved:Delete")]}
    assert parse_notification(_encode(removed)) == []
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-01-01T00:00:00.000Z",
        "Bucket": "pics",
        "RequestId": "X",
        "HostId": "Y",
    }
    assert parse_notification(_encode(test_event)) == []
    assert parse_notification(_encode({"Records": []})) == []


def test_sns_envelope() -> None:
    envelope = {
        "Type": "Notification",
        "MessageId": "1",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps({"Records": [_record("a%2Bb.jpg")]}),
    }
    (event,) = parse_notification(_encode(envelope))
    assert (event.bucket, event.key, event.source) == ("pics", "a+b.jpg", "aws")
    test_event = dict(envelope, Message=json.dumps({"Event": "s3:TestEvent"}))
    assert parse_notification(_encode(test_event)) == []


def test_minio_payload() -> None:
    record = _record("train/cat/x%281%29.png", name="s3:ObjectCreated:Put", bucket="data")
    record["eventSource"] = "minio:s3"
    payload = {"EventName": "s3:ObjectCreated:Put", "Key": "data/train/cat/x(1).png"}
    (event,) = parse_notification(_encode({**payload, "Records": [record]}))
    assert event == ObjectCreated(
        bucket="data",
        key="train/cat/x(1).png",
        etag="0123abcd",
        size=1234,
        event_name="ObjectCreated:Put",
        source="minio",
    )
    (bare,) = parse_notification(_encode(payload))  # no Records: fall back on Key
    assert (bare.bucket, bare.key, bare.source, bare.size) == (
        "data",
        "train/cat/x(1).png",
        "minio",
        0,
    )
    removed = {"EventName": "s3:ObjectRemoved:Delete", "Key": "data/x.png"}
    assert parse_notification(_encode(removed)) == []


def test_accepts_str_and_bytearray() -> None:
    text = json.dumps({"Records": [_record("k.png")]})
    assert parse_notification(text)[0].key == "k.png"  # type: ignore[arg-type]
    assert parse_notification(bytearray(text.encode()))[0].key == "k.png"  # type: ignore[arg-type]


def test_not_json_names_the_first_bytes() -> None:
    with pytest.raises(NotificationError, match=r"notification is not JSON.*b'hello'") as info:
        parse_notification(b"hello")
    assert isinstance(info.value, ValueError)
    with pytest.raises(NotificationError, match="empty") as info:
        parse_notification(b"  ")
    long = b"<xml>" + b"x" * 500
    with pytest.raises(NotificationError, match="not JSON") as info:
        parse_notification(long)
    head = str(info.value).split("starts with ", 1)[1]
    assert head.startswith("b'<xml>xxx") and head.endswith("...") and len(head) <= 60
    with pytest.raises(NotificationError, match=r"not JSON.*b'\\xff\\xfe") as info:
        parse_notification(b"\xff\xfe" * 100)
    assert len(str(info.value).split("starts with ", 1)[1]) <= 60


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "notification must be a JSON object, not an array"),
        ("x", "notification must be a JSON object, not a string"),
        (None, "notification must be a JSON object, not null"),
        ({"Records": {}}, "Records must be an array, not an object"),
        ({"Records": [7]}, r"Records\[0\] must be an object, not a number"),
        ({"Records": [{"s3": {}}]}, r"Records\[0\] has no eventName"),
        ({"hello": 1}, "notification is not an S3 event: it has no Records"),
        ({"Type": "SubscriptionConfirmation"}, "SNS message of type 'SubscriptionConfirmation'"),
        ({"Type": "Notification", "Message": 3}, "SNS Message must be a string, not a number"),
        ({"Type": "Notification", "Message": "nope"}, r"SNS Message is not JSON.*'nope'"),
        ({"EventName": "s3:ObjectCreated:Put", "Key": "nobucket"}, "MinIO Key must be"),
    ],
)
def test_bad_documents(doc: Any, message: str) -> None:
    with pytest.raises(NotificationError, match=message):
        parse_notification(_encode(doc))


def test_record_missing_bucket_or_key_names_path_and_index() -> None:
    no_bucket = _record()
    del no_bucket["s3"]["bucket"]["name"]
    with pytest.raises(NotificationError, match=r"Records\[1\] has no s3\.bucket\.name"):
        parse_notification(_encode({"Records": [_record(), no_bucket]}))
    no_key = _record()
    del no_key["s3"]["object"]["key"]
    with pytest.raises(NotificationError, match=r"Records\[0\] has no s3\.object\.key"):
        parse_notification(_encode({"Records": [no_key]}))
    no_s3 = {"eventName": "ObjectCreated:Put"}
    with pytest.raises(NotificationError, match=r"Records\[0\] has no s3\.bucket\.name"):
        parse_notification(_encode({"Records": [no_s3]}))
    empty_key = _record("")
    with pytest.raises(NotificationError, match=r"Records\[0\]\.s3\.object\.key must be a non"):
        parse_notification(_encode({"Records": [empty_key]}))
    bad_size = _record()
    bad_size["s3"]["object"]["size"] = "12"
    with pytest.raises(NotificationError, match=r"Records\[0\]\.s3\.object\.size"):
        parse_notification(_encode({"Records": [bad_size]}))
