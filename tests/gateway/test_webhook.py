"""The S3 notification webhook: bearer token, validation, one DIGITS_S3 message per object."""

from __future__ import annotations

import json

from digits import subjects
from digits.notifications import parse_notification
from gateway.context import bus_of
from tests.gateway.conftest import WEBHOOK_TOKEN, bearer, make_app, stored

URL = "/api/v1/s3/events"
AUTH = bearer(WEBHOOK_TOKEN)


def record(key: str, etag: str, bucket: str = "photos") -> dict:
    """One AWS S3 ObjectCreated record."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 3}},
    }


AWS_EVENT = {"Records": [record("cats/a+b.png", "e1"), record("dogs/c%21.png", "e2")]}


def s3_messages(bus_client) -> list:
    """What the DIGITS_S3 stream holds."""
    return stored(bus_client, f"{subjects.S3}.>")


def test_one_stream_message_per_record_with_content_ids(client, bus_client):
    response = client.post(URL, json=AWS_EVENT, headers=AUTH)
    assert response.status_code == 200 and response.get_json()["published"] == 2
    found = s3_messages(bus_client)
    assert [m.subject for m in found] == ["digits.v1.s3.photos"] * 2
    assert [m.headers["Nats-Msg-Id"] for m in found] == [
        "s3:photos/cats/a b.png@e1",
        "s3:photos/dogs/c!.png@e2",
    ]
    parsed = [parse_notification(m.data) for m in found]
    assert [[(o.bucket, o.key, o.etag) for o in p] for p in parsed] == [
        [("photos", "cats/a b.png", "e1")],
        [("photos", "dogs/c!.png", "e2")],
    ]
    # A retried notification is stored once (JetStream deduplicates by the message id).
    assert client.post(URL, json=AWS_EVENT, headers=AUTH).status_code == 200
    assert len(s3_messages(bus_client)) == 2


def test_wrong_or_missing_token_is_401_and_nothing_is_published(client, bus_client):
    assert client.post(URL, json=AWS_EVENT, headers=bearer("nope")).status_code == 401
    assert client.post(URL, json=AWS_EVENT).status_code == 401
    assert (
        client.post(URL, json=AWS_EVENT, headers={"Authorization": "Basic eDp5"}).status_code == 401
    )
    assert s3_messages(bus_client) == []


def test_without_a_configured_token_the_webhook_is_disabled(nats_server, tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITS_S3_WEBHOOK_TOKEN", raising=False)
    app = make_app(nats_server, tmp_path, ADMIN_PASSWORD="pw")
    try:
        response = app.test_client().post(URL, json=AWS_EVENT, headers=AUTH)
        assert response.status_code == 503 and "disabled" in response.get_json()["error"]
    finally:
        bus_of(app).close()


def test_bad_notifications_are_400_with_the_reason(client, bus_client):
    not_json = client.post(URL, data=b"{oops", headers=AUTH, content_type="application/json")
    assert not_json.status_code == 400 and "not JSON" in not_json.get_json()["error"]
    no_key = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}
    missing = client.post(URL, json=no_key, headers=AUTH)
    assert missing.status_code == 400 and "s3.object.key" in missing.get_json()["error"]
    bad_bucket = client.post(URL, json={"Records": [record("k", "e", "a*b")]}, headers=AUTH)
    assert bad_bucket.status_code == 400 and "bucket" in bad_bucket.get_json()["error"]
    assert s3_messages(bus_client) == []


def test_test_events_and_subscription_confirmations_publish_nothing(client, bus_client):
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "photos"}
    assert client.post(URL, json=test_event, headers=AUTH).get_json()["published"] == 0
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m1",
        "Token": "t",
        "TopicArn": "arn:aws:sns:us-east-1:1:topic",
        "SubscribeURL": "https://sns.example/confirm",
    }
    response = client.post(
        URL,
        data=json.dumps(confirmation),
        headers={**AUTH, "x-amz-sns-message-type": "SubscriptionConfirmation"},
        content_type="text/plain",
    )
    assert response.status_code == 200 and response.get_json()["published"] == 0
    removed = {"Records": [{**record("k", "e"), "eventName": "ObjectRemoved:Delete"}]}
    assert client.post(URL, json=removed, headers=AUTH).get_json()["published"] == 0
    assert s3_messages(bus_client) == []


def test_sns_envelopes_and_minio_payloads_are_published(client, bus_client):
    sns = {
        "Type": "Notification",
        "MessageId": "m2",
        "Message": json.dumps({"Records": [record("x.png", "e3")]}),
    }
    assert client.post(URL, data=json.dumps(sns), headers=AUTH).get_json()["published"] == 1
    minio = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "frames/y.jpg",
        "Records": [
            {
                "eventSource": "minio:s3",
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": "frames"}, "object": {"key": "y.jpg", "eTag": "e4"}},
            }
        ],
    }
    assert client.post(URL, json=minio, headers=AUTH).get_json()["published"] == 1
    found = s3_messages(bus_client)
    assert [m.subject for m in found] == ["digits.v1.s3.photos", "digits.v1.s3.frames"]
    assert found[1].headers["Nats-Msg-Id"] == "s3:frames/y.jpg@e4"
    [created] = parse_notification(found[1].data)
    assert created.source == "minio" and created.key == "y.jpg"


def test_an_oversized_notification_is_refused(client, bus_client):
    huge = {"Records": [record("k" * 1000, "e")] * 1100}
    response = client.post(URL, json=huge, headers=AUTH)
    assert response.status_code == 413
    assert s3_messages(bus_client) == []


def test_sns_style_basic_auth_carries_the_token_as_password(client, bus_client):
    from tests.gateway.conftest import basic

    assert client.post(URL, json=AWS_EVENT, headers=basic("sns", "wrong")).status_code == 401
    assert s3_messages(bus_client) == []
    response = client.post(URL, json=AWS_EVENT, headers=basic("sns", WEBHOOK_TOKEN))
    assert response.status_code == 200 and response.get_json()["published"] == 2
    assert len(s3_messages(bus_client)) == 2
