"""A local stand-in for SNS's side: an RSA key, its self-signed certificate, and an HTTP server.

The server (http.server in a thread, on 127.0.0.1) serves the certificate the way SNS serves its
SigningCertURL, answers SubscribeURL GETs as SNS does, and records every path it was asked for.
"""

from __future__ import annotations

import base64
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOPIC = "arn:aws:sns:us-east-1:123456789012:digits-uploads"
SUBSCRIPTION = f"{TOPIC}:6f1c-local"
CONFIRMED = (
    "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult>"
    f"<SubscriptionArn>{SUBSCRIPTION}</SubscriptionArn>"
    "</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
).encode()


def signed_text(msg: dict[str, Any]) -> bytes:
    """The string to sign, written here from AWS's page, apart from digits.sns's own."""
    if msg["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{msg[n]}\n" for n in names if n in msg).encode()


def certificate(key: rsa.RSAPrivateKey, days: tuple[int, int] = (-1, 30)) -> bytes:
    """A self-signed PEM certificate of ``key``, valid from ``days[0]`` to ``days[1]`` from now."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class LocalSns:
    """The key that signs, the server that hands out its certificate, and what it was asked."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pages: dict[str, tuple[int, bytes]] = {
            "/SimpleNotificationService-local.pem": (200, certificate(self.key)),
            "/other.pem": (200, certificate(other)),
            "/expired.pem": (200, certificate(self.key, (-30, -1))),
            "/future.pem": (200, certificate(self.key, (1, 30))),
            "/huge.pem": (200, b"-" * (65 << 10)),
            "/garbage.pem": (200, b"not a certificate"),
            "/gone.pem": (404, b"no such certificate"),
            "/": (200, CONFIRMED),
        }
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def origin(self) -> str:
        """A DIGITS_SNS_ORIGIN that allows this server and nothing else."""
        return re.escape(self.base)

    def cert_url(self, name: str = "SimpleNotificationService-local.pem") -> str:
        """The URL of one of the certificates it serves."""
        return f"{self.base}/{name}"

    def fetched(self, path: str = "/SimpleNotificationService-local.pem") -> int:
        """How often ``path`` was asked for."""
        return sum(1 for r in self.requests if r.split("?")[0] == path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                if self.path.startswith("/redirect.pem"):
                    self.send_response(302)
                    self.send_header("Location", owner.cert_url())
                    self.end_headers()
                    return
                status, body = owner.pages.get(self.path.split("?")[0], (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def sign(
        self,
        msg: dict[str, Any],
        version: str = "1",
        cert: str = "SimpleNotificationService-local.pem",
    ) -> dict[str, Any]:
        """``msg`` signed as SNS signs: SignatureVersion, SigningCertURL, Signature (replaced).

        Fields that are None are left out (``Subject=None``: a notification without a subject).
        """
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        msg = {k: v for k, v in msg.items() if not k.startswith("Signature") and v is not None}
        msg.pop("SigningCertURL", None)
        signature = self.key.sign(signed_text(msg), padding.PKCS1v15(), algorithm)
        return {
            **msg,
            "SignatureVersion": version,
            "SigningCertURL": self.cert_url(cert),
            "Signature": base64.b64encode(signature).decode(),
        }

    def notification(self, message: str, version: str = "1", **extra: Any) -> dict[str, Any]:
        """A signed Notification carrying ``message``."""
        msg = {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": TOPIC,
            "Subject": "Amazon S3 Notification",
            "Message": message,
            "Timestamp": "2026-05-09T12:00:00.000Z",
            "UnsubscribeURL": f"{self.base}/?Action=Unsubscribe&SubscriptionArn={SUBSCRIPTION}",
            **extra,
        }
        return self.sign(msg, version)

    def confirmation(self, kind: str = "SubscriptionConfirmation") -> dict[str, Any]:
        """A signed SubscriptionConfirmation (or UnsubscribeConfirmation) for this server."""
        token = "2336412f37fb687f5d51e6e241d164b0533302ec696efc8f113cd2252ce8a925"
        msg = {
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": token,
            "TopicArn": TOPIC,
            "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
            "SubscribeURL": f"{self.base}/?Action=ConfirmSubscription&TopicArn={TOPIC}"
            f"&Token={token}",
            "Timestamp": "2026-05-09T12:00:00.000Z",
        }
        return self.sign(msg, "2")

    def close(self) -> None:
        """Stop the server."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
