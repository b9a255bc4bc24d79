"""A secrets audit: after a locked `digits up` run that used every kind of credential, none leaks.

The run uses the admin password, a second user's password, an API token, S3 keys (an S3 dataset
that reaches Done), the webhook token (one notification) and the stack's own NATS passwords and
secret key. Then every place a secret could land is searched for each of them, raw, base64- and
URL-encoded: the stack's log and every file under the data dir (store, logs, job files, the
JetStream directory), every message of every stream (KV buckets included, data and headers),
the pages and every JSON response the test received. Only the files made to hold a credential
(``nats-users.json``, ``secret.key``) hold one, and the API token's create response shows it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
import string
import urllib.parse
from pathlib import Path

import nats
import nats.js.errors
import numpy as np
import pytest
import requests
from PIL import Image

from digits import natsauth
from digits.s3 import s3_client
from tests.e2e.upstack import Stack
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(180)

HELD = ("nats-users.json", "secret.key")  # the files whose purpose is to hold a credential


def distinctive(prefix: str, n: int = 24, extra: str = "") -> str:
    """A random string no run makes by chance (``extra``: characters URL-encoding changes)."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n)) + extra


def forms(value: str) -> dict[str, bytes]:
    """The encodings of a secret worth searching for: raw, base64 (both alphabets), URL-encoded."""
    raw = value.encode()
    found = {
        "raw": raw,
        "base64": base64.b64encode(raw),
        "urlsafe base64": base64.urlsafe_b64encode(raw),
        "url-encoded": urllib.parse.quote(value, safe="").encode(),
        "form-encoded": urllib.parse.quote_plus(value).encode(),
    }
    seen: dict[bytes, str] = {}
    for name, data in found.items():
        seen.setdefault(data.rstrip(b"="), name)  # '=' padding differs by position; drop it
    return {name: data for data, name in seen.items()}


class Audit:
    """What was searched, and where each secret (named by its kind) was found."""

    def __init__(self, secrets_: dict[str, str]) -> None:
        self.needles = {kind: forms(value) for kind, value in secrets_.items()}
        self.hits: list[str] = []
        self.counts = {"files": 0, "messages": 0, "pages": 0, "responses": 0, "bytes": 0}

    def search(self, where: str, data: bytes, what: str, allowed: tuple[str, ...] = ()) -> None:
        """Look for every secret in ``data`` (``allowed``: kinds that belong there)."""
        self.counts[what] += 1
        self.counts["bytes"] += len(data)
        for kind, encodings in self.needles.items():
            if kind in allowed:
                continue
            for encoding, needle in encodings.items():
                if needle in data:
                    self.hits.append(f"{kind} ({encoding}) in {where}")

    def holds(self, data: bytes, kind: str) -> bool:
        """Whether ``data`` holds the secret of ``kind`` as it is."""
        return self.needles[kind]["raw"] in data


def png(value: int) -> bytes:
    """A small grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


async def fill_bucket(endpoint: str, access: str, secret: str, bucket: str) -> dict[str, str]:
    """Make the bucket with two classes of ten images; the objects' etags."""
    etags = {}
    async with s3_client(endpoint, access, secret) as s3:
        await s3.create_bucket(Bucket=bucket)
        for c in range(2):
            for i in range(10):
                key = f"train/class{c}/{i:02d}.png"
                put = await s3.put_object(Bucket=bucket, Key=key, Body=png(60 + 120 * c))
                etags[key] = put["ETag"].strip('"')
    return etags


async def search_streams(url: str, audit: Audit) -> dict[str, int]:
    """Every message of every stream (data and headers), read as admin; messages per stream."""
    nc = await nats.connect(url)
    per_stream: dict[str, int] = {}
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name, state = info.config.name, info.state
            per_stream[name] = 0
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                try:
                    msg = await js.get_msg(name, seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted or purged
                headers = json.dumps(msg.headers or {}).encode()
                where = f"stream {name} seq {seq} ({msg.subject})"
                audit.search(
                    where, (msg.subject or "").encode() + headers + (msg.data or b""), "messages"
                )
                per_stream[name] += 1
    finally:
        await nc.close()
    return per_stream


def search_files(root: Path, audit: Audit, skip: tuple[Path, ...] = ()) -> None:
    """Every file under ``root`` (``skip``: files held to be searched otherwise)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in skip):
        audit.search(f"file {path.relative_to(root.parent)}", path.read_bytes(), "files")


def test_no_secret_leaks_into_logs_streams_files_pages_or_responses(tmp_path, moto_url):
    data_dir, log_path = tmp_path / "digits", tmp_path / "up.log"
    admin_pw = distinctive("adminPW", extra="+/%")
    user_pw = distinctive("userPW", extra="+&=")
    webhook = distinctive("hookTOK")
    access = "AKIA" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(16))
    secret_key = distinctive("s3SK", 32, extra="+/")  # as AWS secret keys look
    bucket = f"audit-{secrets.token_hex(4)}"
    etags = asyncio.run(fill_bucket(moto_url, access, secret_key, bucket))
    env = {"DIGITS_ADMIN_PASSWORD": admin_pw, "DIGITS_S3_WEBHOOK_TOKEN": webhook}
    env |= {"DIGITS_SECRET_KEY": ""}  # `digits up` makes secret.key itself
    stack = Stack(data_dir, log_path, env=env)
    responses: list[tuple[str, requests.Response]] = []

    def keep(label: str, response: requests.Response, status: int = 200) -> requests.Response:
        responses.append((label, response))
        assert response.status_code == status, f"{label}: {response.status_code} {response.text}"
        return response

    admin, user2 = ("admin", admin_pw), ("auditor", user_pw)
    try:
        wait_for_sync(stack.all_alive, timeout=60, interval=0.5)
        base = stack.url
        created = keep(
            "POST /api/v1/users",
            requests.post(
                f"{base}/api/v1/users",
                json={"username": user2[0], "password": user_pw},
                auth=admin,
                timeout=10,
            ),
            201,
        )
        assert created.json()["username"] == user2[0]
        token_answer = keep(
            "POST /api/v1/tokens",
            requests.post(f"{base}/api/v1/tokens", json={"name": "audit"}, auth=user2, timeout=10),
            201,
        )
        token = token_answer.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        form = {
            "dataset_name": "audited-s3",
            "method": "s3",
            "s3_endpoint_url": moto_url,
            "s3_bucket": bucket,
            "s3_path": "train",
            "s3_accesskey": access,
            "s3_secretkey": secret_key,
            "s3_pct_val": "25",
            "resize_width": "8",
            "resize_height": "8",
            "resize_channels": "1",
        }
        job_id = keep(
            "POST /datasets/images/classification.json",
            requests.post(
                f"{base}/datasets/images/classification.json", data=form, headers=bearer, timeout=10
            ),
        ).json()["id"]

        def done() -> dict | None:
            found = keep(
                "GET /datasets/<id>.json (polled)",
                requests.get(f"{base}/datasets/{job_id}.json", headers=bearer, timeout=10),
            ).json()
            assert found["status"] not in ("Error", "Aborted"), found
            return found if found["status"] == "Done" else None

        job = wait_for_sync(done, timeout=60, interval=0.5)
        assert job["labels"] == ["class0", "class1"], job
        key, etag = next(iter(etags.items()))
        record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}
        record["s3"]["object"] = {"key": key, "eTag": etag, "size": 70}
        hook = keep(
            "POST /api/v1/s3/events",
            requests.post(
                f"{base}/api/v1/s3/events",
                json={"Records": [record]},
                headers={"Authorization": f"Bearer {webhook}"},
                timeout=10,
            ),
        )
        assert hook.json() == {"ok": True, "published": 1}

        pages = requests.Session()  # the admin's browser
        login = pages.get(f"{base}/login", timeout=10)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
        failed = pages.post(  # a real password, but not this user's
            f"{base}/login",
            data={"username": user2[0], "password": admin_pw, "csrf_token": csrf},
            timeout=10,
        )
        assert failed.status_code == 401 and "Wrong username or password" in failed.text
        page_bodies = [("login page after a failed login", failed)]
        signed_in = pages.post(
            f"{base}/login",
            data={"username": "admin", "password": admin_pw, "csrf_token": csrf},
            timeout=10,
        )
        assert signed_in.ok and "/login" not in signed_in.url, signed_in.text[:300]
        for path in (
            "/",
            f"/datasets/{job_id}",
            f"/datasets/{job_id}/clone",
            f"/datasets/{job_id}/status",
            "/datasets/images/classification/new",
        ):
            got = pages.get(base + path, timeout=10)
            assert got.status_code == 200, f"{path}: {got.status_code}"
            page_bodies.append((f"page {path}", got))
        for path in (f"/datasets/{job_id}.json", "/index.json", f"/jobs/{job_id}/status"):
            keep(f"GET {path}", requests.get(base + path, auth=admin, timeout=10))
        keep("GET /healthz.json", requests.get(f"{base}/healthz.json", timeout=10))

        nats_passwords = json.loads((data_dir / natsauth.USERS_FILE).read_text())
        stack_key = (data_dir / "secret.key").read_text().strip()
        kinds = {
            "admin password": admin_pw,
            "user password": user_pw,
            "API token": token,
            "S3 access key": access,
            "S3 secret key": secret_key,
            "webhook token": webhook,
            "secret key": stack_key,
        }
        kinds |= {f"NATS password ({user})": pw for user, pw in nats_passwords.items()}
        audit = Audit(kinds)
        per_stream = asyncio.run(search_streams(stack.nats_url("admin"), audit))
        for label, page in page_bodies:
            audit.search(label, page.content, "pages")
        for label, response in responses:
            allowed = ("API token",) if label == "POST /api/v1/tokens" else ()
            audit.search(f"response to {label}", response.content, "responses", allowed)
    finally:
        code = stack.interrupt()
    assert code == 0, log_path.read_text()[-3000:]
    audit.search("the digits up log", log_path.read_bytes(), "files")
    held = tuple(data_dir / name for name in HELD)
    search_files(data_dir, audit, skip=held)
    # The held files hold the secrets: the ones searched for were the stack's real ones.
    users_file = held[0].read_bytes()
    assert all(audit.holds(users_file, f"NATS password ({u})") for u in nats_passwords)
    assert audit.holds(held[1].read_bytes(), "secret key")
    assert per_stream.get("KV_digits-secrets"), per_stream  # the sealed S3 keys were there
    print(
        f"\nsecrets audit: {len(kinds)} secrets in up to 5 encodings; searched "
        f"{audit.counts['files']} files, {audit.counts['messages']} messages in "
        f"{len(per_stream)} streams ({per_stream}), {audit.counts['pages']} pages, "
        f"{audit.counts['responses']} JSON responses, {audit.counts['bytes']} bytes in all"
    )
    assert not audit.hits, "secrets found:\n" + "\n".join(audit.hits)
