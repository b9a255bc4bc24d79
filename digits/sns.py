"""Amazon SNS message signatures, verified as AWS documents them, and subscription confirmation.

"Verifying the signatures of Amazon SNS messages": the string to sign is ``Name\\nvalue\\n`` for
fixed fields in a fixed order per message type; ``SignatureVersion`` 1 is RSA PKCS#1 v1.5 over
SHA1, 2 over SHA256; the certificate comes from ``SigningCertURL``, which must be an SNS host on
HTTPS. Every failure is an SnsError whose message names what was wrong and whose ``status`` is
the HTTP status a webhook should answer with.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

NOTIFICATION = "Notification"
SUBSCRIPTION = "SubscriptionConfirmation"
UNSUBSCRIBE = "UnsubscribeConfirmation"
TYPES = (NOTIFICATION, SUBSCRIPTION, UNSUBSCRIBE)

# The fields signed, in the order signed ("Subject" only when the notification has one).
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# scheme://host of every SNS region: sns.<region>.amazonaws.com, and .amazonaws.com.cn in China.
AWS_ORIGIN = (
    r"https://sns\.[a-z]{2}(-[a-z]+)+-\d+\.amazonaws\.com"
    r"|https://sns\.cn-[a-z]+-\d+\.amazonaws\.com\.cn"
)
FETCH_TIMEOUT_S = 10.0
MAX_CERT_BYTES = 64 << 10
MAX_REPLY_BYTES = 64 << 10
CACHE_SIZE = 32
CACHE_TTL_S = 6 * 3600.0
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_SUBSCRIPTION_ARN = re.compile(r"<SubscriptionArn>([^<]{1,512})</SubscriptionArn>")


class SnsError(ValueError):
    """An SNS message that is not accepted: the message says why, ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(url: str) -> str:
    """A URL for messages: without its query, which for a SubscribeURL holds SNS's token."""
    return _short(url.split("?", 1)[0] + ("?..." if "?" in url else ""))


def _field(msg: Mapping[str, Any], name: str) -> str:
    kind = msg.get("Type", "message")
    if name not in msg or msg[name] is None:
        raise SnsError(f"SNS {kind} has no {name}")
    value = msg[name]
    if not isinstance(value, str):
        raise SnsError(f"SNS {kind} field {name} must be a string, not {type(value).__name__}")
    return value


def string_to_sign(msg: Mapping[str, Any]) -> bytes:
    """The canonical bytes SNS signs for a Notification or (Un)SubscriptionConfirmation."""
    kind = msg.get("Type")
    if kind == NOTIFICATION:
        names = _NOTIFICATION_FIELDS
    elif kind in (SUBSCRIPTION, UNSUBSCRIBE):
        names = _CONFIRMATION_FIELDS
    else:
        raise SnsError(f"SNS Type {_short(kind)} is not one of {', '.join(TYPES)}")
    parts = []
    for name in names:
        if name == "Subject" and msg.get("Subject") is None:
            continue
        parts.append(f"{name}\n{_field(msg, name)}\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        raise SnsError(f"SNS {kind} holds text that is not valid Unicode") from None


def _origin_of(url: str, what: str, allowed: re.Pattern[str]) -> str:
    """``url`` itself if its ``scheme://host[:port]`` matches ``allowed`` in full, else SnsError."""
    if _UNSAFE.search(url):
        raise SnsError(f"{what} {_shown(url)} holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SnsError(f"{what} {_shown(url)} is not a URL ({exc})") from None
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SnsError(f"{what} for host {_short(host)} must not carry a user or password")
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    if not allowed.fullmatch(origin):
        raise SnsError(
            f"{what} {_shown(url)} is not on an SNS host: {origin!r} does not match "
            f"{allowed.pattern!r}"
        )
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: the host checked is the host that answers."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, limit: int, timeout_s: float, what: str) -> bytes:
    """The body of a GET of ``url``, at most ``limit`` bytes; SnsError (502) if it fails."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"User-Agent": "digits-gateway"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            if response.status != 200:
                raise SnsError(f"{what} {_shown(url)} answered HTTP {response.status}", 502)
            data = response.read(limit + 1)
    except SnsError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise SnsError(f"{what} {_shown(url)} answered HTTP {exc.code}", 502) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SnsError(f"{what} {_shown(url)} could not be fetched: {reason}", 502) from None
    if len(data) > limit:
        raise SnsError(f"{what} {_shown(url)} is larger than {limit} bytes", 502)
    return data


class _Cert:
    __slots__ = ("key", "not_after", "not_before", "expires")

    def __init__(self, cert: x509.Certificate, expires: float) -> None:
        self.key = cert.public_key()
        self.not_before = cert.not_valid_before_utc
        self.not_after = cert.not_valid_after_utc
        self.expires = expires


class SnsVerifier:
    """Verifies SNS messages; signing certificates are fetched once per URL and cached."""

    def __init__(
        self,
        origin: str | None = None,
        *,
        timeout_s: float = FETCH_TIMEOUT_S,
        max_cert_bytes: int = MAX_CERT_BYTES,
        cache_size: int = CACHE_SIZE,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self.origin = re.compile(origin or AWS_ORIGIN, re.IGNORECASE)
        self.timeout_s = timeout_s
        self.max_cert_bytes = max_cert_bytes
        self.cache_size = cache_size
        self.cache_ttl_s = cache_ttl_s
        self._cache: OrderedDict[str, _Cert] = OrderedDict()
        self._lock = threading.Lock()

    def cert_url(self, url: str) -> str:
        """``url`` if it may serve a signing certificate: an SNS origin and a ``.pem`` path."""
        _origin_of(url, "SigningCertURL", self.origin)
        if not urlsplit(url).path.endswith(".pem"):
            raise SnsError(f"SigningCertURL {_shown(url)} does not name a .pem certificate")
        return url

    def _fetch(self, url: str) -> _Cert:
        data = _get(url, self.max_cert_bytes, self.timeout_s, "signing certificate")
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise SnsError(
                f"signing certificate {_shown(url)} is not a PEM X.509 certificate", 502
            ) from None
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise SnsError(f"signing certificate {_shown(url)} does not hold an RSA key", 502)
        return _Cert(cert, time.monotonic() + self.cache_ttl_s)

    def _cert(self, url: str) -> _Cert:
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and cached.expires > time.monotonic():
                self._cache.move_to_end(url)
                return cached
            self._cache.pop(url, None)
        fetched = self._fetch(url)  # outside the lock: one slow host holds up no other request
        with self._lock:
            self._cache[url] = fetched
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return fetched

    def verify(self, msg: Mapping[str, Any]) -> None:
        """Return if ``msg`` is signed by SNS as AWS documents; SnsError naming the fault if not."""
        signed = string_to_sign(msg)
        kind = msg["Type"]
        version = _field(msg, "SignatureVersion")
        if version not in _HASHES:
            raise SnsError(f"SNS SignatureVersion {version!r} is not supported; expected 1 or 2")
        try:
            signature = base64.b64decode(_field(msg, "Signature"), validate=True)
        except binascii.Error:
            raise SnsError(f"SNS {kind} Signature is not base64") from None
        url = self.cert_url(_field(msg, "SigningCertURL"))
        cert = self._cert(url)
        now = datetime.now(UTC)
        if not cert.not_before <= now <= cert.not_after:
            raise SnsError(
                f"signing certificate {_shown(url)} is valid from {cert.not_before:%Y-%m-%d %H:%M}"
                f" to {cert.not_after:%Y-%m-%d %H:%M} UTC, not now",
                403,
            )
        assert isinstance(cert.key, rsa.RSAPublicKey)
        try:
            cert.key.verify(signature, signed, padding.PKCS1v15(), _HASHES[version]())
        except InvalidSignature:
            raise SnsError(
                f"SNS {kind} {_short(msg.get('MessageId'))} has a signature that does not match "
                f"its content and the certificate {_shown(url)}",
                403,
            ) from None

    def subscribe_url(self, msg: Mapping[str, Any]) -> str:
        """The SubscribeURL of a confirmation message, if it is on an SNS origin."""
        return _origin_of(_field(msg, "SubscribeURL"), "SubscribeURL", self.origin)

    def confirm(self, msg: Mapping[str, Any]) -> str:
        """Confirm a verified SubscriptionConfirmation by GETting its SubscribeURL.

        Returns the subscription's ARN from SNS's answer (or the topic's, if it has none).
        """
        url = self.subscribe_url(msg)
        reply = _get(url, MAX_REPLY_BYTES, self.timeout_s, "SubscribeURL")
        found = _SUBSCRIPTION_ARN.search(reply.decode("utf-8", "replace"))
        return found.group(1) if found else _field(msg, "TopicArn")
