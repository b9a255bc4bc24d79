"""The S3 notification webhook: bearer token, SNS signatures, one DIGITS_S3 message per object."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from digits import subjects
from digits.config import Settings
from digits.notifications import parse_notification
from gateway.context import bus_of
from tests.gateway.conftest import (
    ADMIN_PASSWORD,
    SECRET_KEY,
    WEBHOOK_TOKEN,
    bearer,
    make_app,
    stored,
)
from tests.sns_local import SUBSCRIPTION, LocalSns

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


def sns_app(nats_server: Any, data_dir: Path, local: LocalSns, **env: str) -> Flask:
    """A gateway whose DIGITS_SNS_ORIGIN allows the local SNS server (and no AWS host)."""
    settings = Settings.from_env(
        {
            "DIGITS_NATS_URL": nats_server.url,
            "DIGITS_DATA_DIR": str(data_dir),
            "DIGITS_SECRET_KEY": SECRET_KEY,
            "DIGITS_SNS_ORIGIN": local.origin,
            **env,
        }
    )
    local.requests.clear()
    return make_app(nats_server, data_dir, SETTINGS=settings)


@pytest.fixture
def app(nats_server, tmp_path, monkeypatch, local) -> Iterator[Flask]:
    """The gateway of tests/gateway/conftest.py, its SNS certificates from the local server."""
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("DIGITS_S3_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    application = sns_app(nats_server, tmp_path / "gateway", local)
    try:
        yield application
    finally:
        bus_of(application).close()


def post_sns(client, msg: dict[str, Any]):
    """POST an SNS message as SNS does: text/plain, its type in x-amz-sns-message-type."""
    headers = {**AUTH, "x-amz-sns-message-type": str(msg.get("Type"))}
    return client.post(URL, data=json.dumps(msg), headers=headers, content_type="text/plain")


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


def test_test_events_and_removals_publish_nothing(client, bus_client):
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "photos"}
    assert client.post(URL, json=test_event, headers=AUTH).get_json()["published"] == 0
    removed = {"Records": [{**record("k", "e"), "eventName": "ObjectRemoved:Delete"}]}
    assert client.post(URL, json=removed, headers=AUTH).get_json()["published"] == 0
    assert s3_messages(bus_client) == []


def test_minio_payloads_are_published_without_sns(client, bus_client, local):
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
    [found] = s3_messages(bus_client)
    assert found.subject == "digits.v1.s3.frames"
    assert found.headers["Nats-Msg-Id"] == "s3:frames/y.jpg@e4"
    [created] = parse_notification(found.data)
    assert created.source == "minio" and created.key == "y.jpg"
    assert local.requests == []  # not an SNS envelope: no certificate asked for


def test_signed_sns_notifications_v1_and_v2_are_published(client, bus_client, local):
    for n, version in enumerate(["1", "2", "2"]):
        event = json.dumps({"Records": [record(f"x{n}.png", f"e{n}")]})
        response = post_sns(client, local.notification(event, version))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["published"] == 1
    # Without the header, as a relay might send it, and without a Subject (then it is not signed).
    bare = local.notification(json.dumps({"Records": [record("y.png", "e9")]}), Subject=None)
    assert "Subject" not in bare
    assert client.post(URL, data=json.dumps(bare), headers=AUTH).get_json()["published"] == 1
    found = s3_messages(bus_client)
    assert [m.headers["Nats-Msg-Id"] for m in found] == [
        "s3:photos/x0.png@e0",
        "s3:photos/x1.png@e1",
        "s3:photos/x2.png@e2",
        "s3:photos/y.png@e9",
    ]
    assert local.fetched() == 1  # four messages, one certificate fetch


def test_refused_sns_messages_name_the_reason_and_publish_nothing(client, bus_client, local):
    event = json.dumps({"Records": [record("x.png", "e1")]})
    signed = local.notification(event)
    bad = [
        ({**signed, "Message": event.replace("x.png", "evil.png")}, 403, "does not match"),
        (local.sign(local.notification(event), cert="other.pem"), 403, "does not match"),
        (
            {**signed, "SigningCertURL": "https://sns.evil.com/SimpleNotificationService-1.pem"},
            400,
            "SigningCertURL 'https://sns.evil.com/SimpleNotificationService-1.pem' is not on an",
        ),
        ({**signed, "SignatureVersion": "3"}, 400, "SignatureVersion '3' is not supported"),
        (
            {k: v for k, v in signed.items() if k != "Signature"},
            400,
            "SNS Notification has no Signature",
        ),
        (local.sign(local.notification(event), cert="gone.pem"), 502, "answered HTTP 404"),
        (
            {"Type": "Notification", "MessageId": "m2", "Message": event},
            400,
            "SNS Notification has no Timestamp",
        ),
    ]
    for msg, status, reason in bad:
        response = post_sns(client, msg)
        assert response.status_code == status and reason in response.get_json()["error"], msg
        # The body's own Type is enough to be treated as SNS; there is no way around the check.
        plain = client.post(URL, data=json.dumps(msg), headers=AUTH)
        assert plain.status_code == status
    mismatch = post_sns(client, {**signed, "Type": "SubscriptionConfirmation"})
    assert mismatch.status_code == 400
    header = {**AUTH, "x-amz-sns-message-type": "UnsubscribeConfirmation"}
    mismatch = client.post(URL, data=json.dumps(signed), headers=header)
    assert (
        mismatch.status_code == 400
        and "differs from the body's Type" in mismatch.get_json()["error"]
    )
    assert s3_messages(bus_client) == []


def test_a_subscription_confirmation_is_confirmed_by_getting_its_subscribe_url(
    client, bus_client, local
):
    response = post_sns(client, local.confirmation())
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "ok": True,
        "published": 0,
        "note": f"SNS subscription {SUBSCRIPTION} confirmed",
    }
    assert [r.split("&")[0] for r in local.requests] == [
        "/SimpleNotificationService-local.pem",
        "/?Action=ConfirmSubscription",
    ]
    # A confirmation whose signature fails is not followed.
    forged = {**local.confirmation(), "Token": "forged"}
    assert post_sns(client, forged).status_code == 403
    assert len(local.requests) == 2
    # Nor one whose (signed) SubscribeURL is not on an SNS host.
    msg = local.confirmation()
    msg["SubscribeURL"] = "https://sns.evil.com/?Action=ConfirmSubscription&Token=t"
    elsewhere = local.sign(msg, "2")
    refused = post_sns(client, elsewhere)
    assert refused.status_code == 400 and "SubscribeURL" in refused.get_json()["error"]
    assert "Token=t" not in refused.get_json()["error"]
    assert len(local.requests) == 2 and s3_messages(bus_client) == []


def test_an_unsubscribe_confirmation_is_acknowledged_and_not_renewed(client, local):
    response = post_sns(client, local.confirmation("UnsubscribeConfirmation"))
    assert response.status_code == 200
    assert response.get_json()["note"] == "SNS UnsubscribeConfirmation acknowledged"
    assert local.requests == ["/SimpleNotificationService-local.pem"]


def test_with_confirm_off_an_operator_confirms(nats_server, tmp_path, monkeypatch, local, caplog):
    monkeypatch.setenv("DIGITS_S3_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    app = sns_app(nats_server, tmp_path, local, DIGITS_SNS_CONFIRM="0", DIGITS_ADMIN_PASSWORD="x")
    try:
        msg = local.confirmation()
        with caplog.at_level(logging.WARNING, logger="gateway.webhook"):
            response = post_sns(app.test_client(), msg)
        assert (
            response.status_code == 200
            and "DIGITS_SNS_CONFIRM is off" in response.get_json()["note"]
        )
        assert local.requests == ["/SimpleNotificationService-local.pem"]  # no GET of the URL
        assert msg["SubscribeURL"] in caplog.text
    finally:
        bus_of(app).close()


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
