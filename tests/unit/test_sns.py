"""SNS signatures as AWS documents them: the string to sign, the certificate URL, the cache."""

from __future__ import annotations

import pytest

from digits.sns import SnsError, SnsVerifier, string_to_sign
from tests.sns_local import SUBSCRIPTION, LocalSns

S3_EVENT = '{"Records": []}'


@pytest.fixture
def verifier(local: LocalSns) -> SnsVerifier:
    """A verifier that allows the local server's origin, with an empty cache."""
    local.requests.clear()
    return SnsVerifier(local.origin)


def refused(verifier: SnsVerifier, msg: dict) -> SnsError:
    with pytest.raises(SnsError) as info:
        verifier.verify(msg)
    return info.value


def test_the_string_to_sign_follows_awss_field_order():
    notification = {
        "Type": "Notification",
        "TopicArn": "arn:t",
        "Timestamp": "2026-01-01T00:00:00Z",
        "Subject": "s",
        "MessageId": "m",
        "Message": "line1\nline2",
        "UnsubscribeURL": "https://x",  # not signed
    }
    assert string_to_sign(notification) == (
        b"Message\nline1\nline2\nMessageId\nm\nSubject\ns\n"
        b"Timestamp\n2026-01-01T00:00:00Z\nTopicArn\narn:t\nType\nNotification\n"
    )
    without = {k: v for k, v in notification.items() if k != "Subject"}
    assert string_to_sign(without) == (
        b"Message\nline1\nline2\nMessageId\nm\n"
        b"Timestamp\n2026-01-01T00:00:00Z\nTopicArn\narn:t\nType\nNotification\n"
    )
    assert string_to_sign({**notification, "Subject": None}) == string_to_sign(without)
    confirmation = {
        "Type": "UnsubscribeConfirmation",
        "TopicArn": "arn:t",
        "Token": "tok",
        "Timestamp": "ts",
        "SubscribeURL": "https://u",
        "MessageId": "m",
        "Message": "msg ünïcode",
    }
    assert (
        string_to_sign(confirmation)
        == (
            "Message\nmsg ünïcode\nMessageId\nm\nSubscribeURL\nhttps://u\nTimestamp\nts\n"
            "Token\ntok\nTopicArn\narn:t\nType\nUnsubscribeConfirmation\n"
        ).encode()
    )


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        ({"Type": "Notification", "Message": "m"}, "SNS Notification has no MessageId"),
        ({"Type": "Bogus"}, "SNS Type 'Bogus' is not one of Notification,"),
        ({}, "SNS Type None is not one of"),
        (
            {"Type": "SubscriptionConfirmation", "Message": "m", "MessageId": 5},
            "field MessageId must be a string, not int",
        ),
    ],
)
def test_a_missing_or_mistyped_field_is_named(msg, message):
    with pytest.raises(SnsError) as info:
        string_to_sign(msg)
    assert message in str(info.value) and info.value.status == 400


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-0123.pem",
        "https://sns.ap-southeast-2.amazonaws.com/SimpleNotificationService-0123.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123.pem",
        "https://SNS.EU-WEST-1.AMAZONAWS.COM/SimpleNotificationService-0123.pem",
    ],
)
def test_awss_certificate_urls_are_allowed_by_default(url):
    assert SnsVerifier().cert_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://sns.evil.com/x.pem", "'https://sns.evil.com' does not match"),
        ("https://sns.us-east-1.amazonaws.com.evil.com/x.pem", "is not on an SNS host"),
        ("https://evil.com/sns.us-east-1.amazonaws.com/x.pem", "is not on an SNS host"),
        ("https://sns.us-east-1.amazonaws.com.cn/x.pem", "is not on an SNS host"),
        ("https://sns..amazonaws.com/x.pem", "is not on an SNS host"),
        ("http://sns.us-east-1.amazonaws.com/x.pem", "'http://sns.us-east-1.amazonaws.com'"),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", "amazonaws.com:8443' does not"),
        ("https://sns.us-east-1.amazonaws.com@evil.com/x.pem", "must not carry a user"),
        ("https://u:p@sns.us-east-1.amazonaws.com/x.pem", "must not carry a user"),
        ("https://sns.us-east-1.amazonaws.com\\@evil.com/x.pem", "control characters"),
        ("https://sns.us-east-1.amazonaws.com\n.evil.com/x.pem", "control characters"),
        ("https://sns.us-east-1.amazonaws.com/x.txt", "does not name a .pem certificate"),
        ("https://sns.us-east-1.amazonaws.com:99999/x.pem", "is not a URL"),
        ("sns.us-east-1.amazonaws.com/x.pem", "is not on an SNS host"),
    ],
)
def test_other_certificate_urls_are_refused_with_the_reason(url, message):
    with pytest.raises(SnsError) as info:
        SnsVerifier().cert_url(url)
    assert message in str(info.value) and info.value.status == 400
    assert "u:p" not in str(info.value)


@pytest.mark.parametrize("version", ["1", "2"])
def test_signature_versions_1_and_2_verify(local, verifier, version):
    verifier.verify(local.notification(S3_EVENT, version))
    verifier.verify(local.notification(S3_EVENT, version, Subject=None))
    verifier.verify(local.confirmation())


def test_the_certificate_is_fetched_once_per_url(local, verifier):
    for n in range(3):
        verifier.verify(local.notification(f'{{"Records": [], "n": {n}}}'))
    assert local.fetched() == 1
    # Past its time in the cache it is fetched again; the cache holds cache_size URLs at most.
    again = SnsVerifier(local.origin, cache_ttl_s=0.0)
    again.verify(local.notification(S3_EVENT))
    again.verify(local.notification(S3_EVENT))
    assert local.fetched() == 3
    local.pages["/second.pem"] = local.pages["/SimpleNotificationService-local.pem"]
    small = SnsVerifier(local.origin, cache_size=1)
    for cert in ("SimpleNotificationService-local.pem", "second.pem", "second.pem"):
        small.verify(local.sign(local.notification(S3_EVENT), cert=cert))
    small.verify(local.notification(S3_EVENT))
    assert local.fetched() == 5 and local.fetched("/second.pem") == 1


def test_tampering_and_a_wrong_key_are_403(local, verifier):
    signed = local.notification(S3_EVENT)
    for tampered in (
        {**signed, "Message": '{"Records": [{"evil": 1}]}'},
        {**signed, "TopicArn": "arn:aws:sns:us-east-1:999999999999:other"},
        {**signed, "Subject": "changed"},
        {k: v for k, v in signed.items() if k != "Subject"},
        {**signed, "SignatureVersion": "2"},  # signed with SHA1, checked as SHA256
    ):
        error = refused(verifier, tampered)
        assert error.status == 403 and "signature that does not match" in str(error)
    # Our key signed it; the certificate at this URL holds another key.
    assert (
        refused(verifier, {**signed, "SigningCertURL": local.cert_url("other.pem")}).status == 403
    )


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"SignatureVersion": "3"}, 400, "SignatureVersion '3' is not supported; expected 1 or 2"),
        ({"SignatureVersion": None}, 400, "SNS Notification has no SignatureVersion"),
        ({"Signature": None}, 400, "SNS Notification has no Signature"),
        ({"Signature": "not base64!"}, 400, "Signature is not base64"),
        ({"SigningCertURL": None}, 400, "has no SigningCertURL"),
        ({"Timestamp": None}, 400, "SNS Notification has no Timestamp"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(local, verifier, change, status, message):
    msg = {**local.notification(S3_EVENT), **change}
    msg = {k: v for k, v in msg.items() if v is not None}
    error = refused(verifier, msg)
    assert error.status == status and message in str(error)
    assert local.requests == []


@pytest.mark.parametrize(
    ("cert", "status", "message"),
    [
        ("expired.pem", 403, "UTC, not now"),
        ("future.pem", 403, "UTC, not now"),
        ("huge.pem", 502, "is larger than 65536 bytes"),
        ("garbage.pem", 502, "is not a PEM X.509 certificate"),
        ("gone.pem", 502, "answered HTTP 404"),
        ("redirect.pem", 502, "answered HTTP 302"),
    ],
)
def test_a_certificate_that_cannot_be_used_is_refused(local, verifier, cert, status, message):
    error = refused(verifier, local.sign(local.notification(S3_EVENT), cert=cert))
    assert error.status == status and message in str(error) and cert in str(error)
    assert local.fetched() == 0  # not even a redirect leads elsewhere


def test_an_unreachable_certificate_host_is_502(local):
    closed = LocalSns()
    msg = closed.notification(S3_EVENT)
    origin = closed.origin
    closed.close()
    error = refused(SnsVerifier(origin, timeout_s=2.0), msg)
    assert error.status == 502 and "could not be fetched" in str(error)


def test_by_default_only_aws_hosts_are_asked_for_certificates(local, verifier):
    error = refused(SnsVerifier(), local.notification(S3_EVENT))
    assert error.status == 400 and "is not on an SNS host" in str(error)
    assert local.requests == []


def test_confirm_gets_the_subscribe_url(local, verifier):
    msg = local.confirmation()
    verifier.verify(msg)
    assert verifier.confirm(msg) == SUBSCRIPTION
    [request] = local.requests[1:]
    assert request.startswith("/?Action=ConfirmSubscription&TopicArn=")
    elsewhere = {**msg, "SubscribeURL": "https://sns.evil.com/?Action=ConfirmSubscription&Token=t"}
    with pytest.raises(SnsError) as info:
        verifier.confirm(elsewhere)
    assert "SubscribeURL 'https://sns.evil.com/?...' is not on an SNS host" in str(info.value)
    assert "Token" not in str(info.value) and len(local.requests) == 2
