"""Shared S3 helpers for any S3-compatible endpoint: client settings, listing, downloads, errors.

Error messages name the bucket, key, endpoint and the S3 error code only: never a credential,
and never the server's message text (which may echo request details).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.config import Config

DEFAULT_CONCURRENCY = 16
DEFAULT_ATTEMPTS = 5
CHUNK = 1 << 20

_CREDENTIAL_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "NoCredentialsError",
        "PartialCredentialsError",
    }
)
_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UNREACHABLE = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "SSLError",
    }
)
# Errors about the bucket, endpoint or credentials: every other key would fail the same way.
_FATAL = _CREDENTIAL_CODES | _UNREACHABLE | {"NoSuchBucket", "InvalidBucketName"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class S3Error(Exception):
    """An S3 request failed; the message names the bucket, key and error code, never a secret."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, size in bytes and ETag (without quotes)."""

    key: str
    size: int
    etag: str


def client_config(concurrency: int = DEFAULT_CONCURRENCY, attempts: int | None = None) -> Config:
    """botocore settings S3-compatible servers accept: path-style, checksums only when required.

    ``attempts`` (each request's tries) defaults to DEFAULT_ATTEMPTS as it is when called.
    """
    attempts = DEFAULT_ATTEMPTS if attempts is None else attempts
    return Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(concurrency, 1),
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": max(attempts, 1), "mode": "standard"},
    )


def where(endpoint_url: str | None) -> str:
    """The endpoint for messages: scheme, host and port only (no user info, path or query)."""
    if not endpoint_url:
        return "the default AWS S3 endpoint"
    try:
        parts = urlsplit(endpoint_url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured endpoint"
    if not parts.hostname:
        return "the configured endpoint"
    return f"{parts.scheme}://{parts.hostname}{port}"


def split_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; ValueError if it is not one."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"bad S3 object URL {url!r}; expected s3://bucket/key")
    return bucket, key


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError, else the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def _endpoint_of(client: Any) -> str | None:
    return getattr(getattr(client, "meta", None), "endpoint_url", None)


def s3_error(exc: BaseException, op: str, bucket: str, key: str, endpoint: str | None) -> S3Error:
    """An S3Error for ``exc`` raised by ``op`` on ``s3://bucket/key``, with a hint for the code."""
    code = error_code(exc)
    target = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if code in ("NoCredentialsError", "PartialCredentialsError"):
        detail = f"{code} (no access key and secret key given, and none in the environment)"
    elif code in _CREDENTIAL_CODES:
        detail = f"{code} (check the access key and secret key)"
    elif code == "NoSuchBucket":
        detail = f"NoSuchBucket: bucket {bucket!r} does not exist at {where(endpoint)}"
    elif code in ("AccessDenied", "Forbidden", "403"):
        detail = f"{code} (the credentials are not allowed to {op} {target})"
    elif code in _UNREACHABLE:
        detail = f"cannot reach the endpoint {where(endpoint)} ({code})"
    else:
        detail = code
    return S3Error(f"S3 {op} {target} failed: {detail}", code)


@asynccontextmanager
async def s3_client(
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str = "us-east-1",
    concurrency: int = DEFAULT_CONCURRENCY,
    attempts: int | None = None,
) -> AsyncIterator[Any]:
    """An aiobotocore S3 client; no credentials means botocore's default chain."""
    from aiobotocore.session import get_session

    creator = get_session().create_client(
        "s3",
        region_name=region or "us-east-1",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        config=client_config(concurrency, attempts),
    )
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(creator)
        except ValueError:  # botocore's "Invalid endpoint: <url>"
            raise S3Error(f"bad S3 endpoint URL {where(endpoint_url)}", "InvalidEndpoint") from None
        yield client


async def list_objects(
    client: Any, bucket: str, prefix: str, page_size: int = 1000
) -> AsyncIterator[ObjectInfo]:
    """Every object under ``prefix``, in key order, fetched ``page_size`` keys per request."""
    from botocore.exceptions import BotoCoreError, ClientError

    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": max(1, page_size)}
    )
    try:
        async for page in pages:
            for obj in page.get("Contents", ()):
                etag = str(obj.get("ETag", "")).strip('"')
                yield ObjectInfo(obj["Key"], int(obj.get("Size", 0)), etag)
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(exc, "list", bucket, prefix, _endpoint_of(client)) from None


def local_name(key: str) -> str:
    """A flat, safe and unique file name for ``key`` that keeps its base name and extension."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    base = _UNSAFE.sub("_", key.rsplit("/", 1)[-1]).lstrip(".")[-100:] or "object"
    return f"{digest}-{base}"


async def _fetch_one(client: Any, bucket: str, key: str, dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        response = await client.get_object(Bucket=bucket, Key=key)
        expected = response.get("ContentLength")
        written = 0
        async with response["Body"] as body:
            with open(tmp, "wb") as f:
                async for chunk in body.iter_chunks(CHUNK):
                    await asyncio.to_thread(f.write, chunk)
                    written += len(chunk)
        if isinstance(expected, int) and written != expected:
            raise S3Error(
                f"S3 get s3://{bucket}/{key} failed: short read ({written} of {expected} bytes)",
                "IncompleteRead",
            )
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


async def fetch_objects(
    client: Any,
    bucket: str,
    keys: Sequence[str],
    dest_dir: Path,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, Path | Exception]:
    """Download ``keys`` into ``dest_dir``, streamed in chunks; per key its path or its error.

    A missing or unreadable object is that key's error (an S3Error, or the OSError of the local
    write); an error that every key would share (no such bucket, bad credentials, unreachable
    endpoint) raises S3Error for the whole call. Files are named by ``local_name(key)``.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    endpoint = _endpoint_of(client)
    results: dict[str, Path | Exception] = {}
    gate = asyncio.Semaphore(max(1, concurrency))

    async def fetch(key: str) -> None:
        try:
            results[key] = await _fetch_one(client, bucket, key, dest_dir / local_name(key))
        except (S3Error, OSError) as exc:
            results[key] = exc
        except (BotoCoreError, ClientError) as exc:
            error = s3_error(exc, "get", bucket, key, endpoint)
            if error.code in _FATAL:
                raise error from None
            results[key] = error
        except Exception as exc:  # e.g. the connection dropped mid-body
            name = type(exc).__name__
            results[key] = S3Error(f"S3 get s3://{bucket}/{key} failed: {name}", name)
        finally:
            gate.release()

    try:
        async with asyncio.TaskGroup() as group:
            for key in unique:  # at most ``concurrency`` tasks exist at any time
                await gate.acquire()
                group.create_task(fetch(key))
    except ExceptionGroup as group_exc:
        first = group_exc.exceptions[0]
        if isinstance(first, S3Error):
            raise S3Error(str(first), first.code) from None
        raise
    return {key: results[key] for key in unique}


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (from fetch_objects) says the object does not exist."""
    return isinstance(exc, S3Error) and exc.code in _MISSING_OBJECT_CODES
