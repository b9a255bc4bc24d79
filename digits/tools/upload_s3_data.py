"""``python -m digits.tools.upload_s3_data DIR``: upload an image-folder dataset to S3.

Reads ``[S3 Config]`` (endpoint, accesskey, secretkey, bucket, prefix; optional region) from
``upload_config.cfg``, creates the bucket if needed and uploads ``DIR/train/<label>/*`` (and
``DIR/test/<label>/*`` if present) to ``<prefix>/train/<label>/...``, several files at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import mimetypes
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from digits.s3 import DEFAULT_ATTEMPTS, DEFAULT_CONCURRENCY, client_config

SECTION = "S3 Config"
KEYS = ("endpoint", "accesskey", "secretkey", "bucket", "prefix")
DEFAULT_CONFIG = "upload_config.cfg"
PHASES = ("train", "test")


class ConfigError(Exception):
    """The config file is missing, unreadable or lacks a setting; the message names the file."""


class UploadError(Exception):
    """Talking to S3 failed; the message names the object, never a credential."""


@dataclass(frozen=True)
class S3Config:
    """The ``[S3 Config]`` settings; the credentials stay out of repr()."""

    endpoint: str
    bucket: str
    prefix: str
    accesskey: str = field(repr=False)
    secretkey: str = field(repr=False)
    region: str = "us-east-1"

    def key(self, relative: str) -> str:
        """The object key of ``relative`` under the prefix."""
        prefix = self.prefix.strip("/")
        return f"{prefix}/{relative}" if prefix else relative

    def where(self) -> str:
        """The endpoint without any user info, for messages."""
        try:
            parts = urlsplit(self.endpoint)
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "the configured endpoint"
        return f"{parts.scheme}://{parts.hostname or ''}{port}"

    def redact(self, text: str) -> str:
        """``text`` with the credentials (and the endpoint's user info) replaced by ***."""
        userinfo = urlsplit(self.endpoint).netloc.rpartition("@")[0]
        for secret in (self.secretkey, self.accesskey, userinfo):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


def _parse_error(path: Path, exc: configparser.Error) -> ConfigError:
    # Never echo the offending line: it may hold a secret.
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors) or "?"
        return ConfigError(f"{path}: cannot parse line {lines}")
    lineno = getattr(exc, "lineno", None)
    at = f" at line {lineno}" if lineno else ""
    return ConfigError(f"{path}: {type(exc).__name__}{at}")


def _valid_endpoint(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def load_config(path: str | Path) -> S3Config:
    """Read ``[S3 Config]`` from ``path``; ConfigError naming the file and key on any gap."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found (copy digits/tools/{DEFAULT_CONFIG} and fill it in)"
        )
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"{path}: line {exc.lineno} comes before any [section] header") from None
    except configparser.Error as exc:
        raise _parse_error(path, exc) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {type(exc).__name__}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"config file {path} has no [{SECTION}] section")
    values: dict[str, str] = {}
    for key in KEYS:
        if not parser.has_option(SECTION, key):
            raise ConfigError(f"missing key {key!r} in [{SECTION}] of {path}")
        values[key] = parser.get(SECTION, key).strip()
        if not values[key] and key != "prefix":
            raise ConfigError(f"empty key {key!r} in [{SECTION}] of {path}")
    if not _valid_endpoint(values["endpoint"]):
        raise ConfigError(f"key 'endpoint' in [{SECTION}] of {path} must be an http(s) URL")
    region = parser.get(SECTION, "region", fallback="").strip() or "us-east-1"
    return S3Config(region=region, **values)


def collect(folder: str | Path, config: S3Config) -> list[tuple[Path, str]]:
    """The (file, key) pairs to upload: ``folder/<phase>/<label>/<file>`` for train and test."""
    root = Path(folder)
    if not (root / "train").is_dir():
        raise ConfigError(f"{root} has no train/ folder (expected {root}/train/<label>/<image>)")
    pairs: list[tuple[Path, str]] = []
    for phase in PHASES:
        phase_dir = root / phase
        if not phase_dir.is_dir():
            continue
        for label_dir in sorted(p for p in phase_dir.iterdir() if p.is_dir()):
            for path in sorted(label_dir.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    pairs.append((path, config.key(f"{phase}/{label_dir.name}/{path.name}")))
    return pairs


class Progress:
    """A textual progress bar: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done, self.bytes = total, 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._decile = -1

    def line(self) -> str:
        """The current bar as text."""
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        secs = time.monotonic() - self.started
        mib = self.bytes / (1 << 20)
        return f"Uploading [{bar:<30}] {self.done}/{self.total} files {mib:.1f} MiB {secs:.1f}s"

    def update(self, nbytes: int) -> None:
        """Count one more uploaded file of ``nbytes`` and redraw if due."""
        self.done += 1
        self.bytes += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self._drawn_at >= 0.1 or self.done == self.total:
                self._drawn_at = now
                self.stream.write("\r" + self.line())
                self.stream.flush()
        else:
            decile = self.done * 10 // max(self.total, 1)
            if decile != self._decile:
                self._decile = decile
                print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _error(exc: BaseException, op: str, target: str, config: S3Config) -> UploadError:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        detail = f"{err.get('Code', '')} {err.get('Message', '')}".strip()
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return UploadError(config.redact(f"S3 {op} {target} at {config.where()} failed: {detail}"))


async def ensure_bucket(s3: Any, config: S3Config) -> bool:
    """Create the bucket unless it exists; True if it was created."""
    from botocore.exceptions import BotoCoreError, ClientError

    target = f"s3://{config.bucket}"
    try:
        await s3.head_bucket(Bucket=config.bucket)
        return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise _error(exc, "head_bucket", target, config) from None
    except BotoCoreError as exc:
        raise _error(exc, "head_bucket", target, config) from None
    print(f"Creating bucket {config.bucket}", file=sys.stderr, flush=True)
    kwargs: dict[str, Any] = {}
    if config.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": config.region}
    try:
        await s3.create_bucket(Bucket=config.bucket, **kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise _error(exc, "create_bucket", target, config) from None
    except BotoCoreError as exc:
        raise _error(exc, "create_bucket", target, config) from None
    return True


async def _worker(
    s3: Any, pairs: Iterator[tuple[Path, str]], config: S3Config, progress: Progress
) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    for path, key in pairs:  # the iterator is shared: each file goes to one worker
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise UploadError(f"cannot read {path}: {exc.strerror or exc}") from None
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            await s3.put_object(Bucket=config.bucket, Key=key, Body=body, ContentType=kind)
        except (BotoCoreError, ClientError) as exc:
            raise _error(exc, "put_object", f"s3://{config.bucket}/{key}", config) from None
        progress.update(len(body))


async def upload(
    folder: str | Path,
    config: S3Config,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = True,
    attempts: int = DEFAULT_ATTEMPTS,
) -> int:
    """Upload the dataset in ``folder`` as ``config`` says; the number of files uploaded."""
    from aiobotocore.session import get_session

    pairs = collect(folder, config)
    bar = Progress(len(pairs), enabled=progress)
    client = get_session().create_client(
        "s3",
        region_name=config.region,
        endpoint_url=config.endpoint,
        aws_access_key_id=config.accesskey,
        aws_secret_access_key=config.secretkey,
        config=client_config(concurrency, attempts),
    )
    async with client as s3:
        await ensure_bucket(s3, config)
        shared = iter(pairs)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, min(concurrency, len(pairs)))):
                    group.create_task(_worker(s3, shared, config, bar))
        except ExceptionGroup as group_exc:
            first = group_exc.exceptions[0]
            if isinstance(first, UploadError):
                raise first from None
            raise UploadError(config.redact(f"upload failed: {type(first).__name__}")) from None
        finally:
            bar.close()
    return bar.done


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m digits.tools.upload_s3_data",
        description="Upload DIR/train/<label>/* (and DIR/test/<label>/*) to S3 under a prefix.",
    )
    parser.add_argument("folder", help="the dataset folder (as written by digits.download_data)")
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"config file with an [{SECTION}] section (default ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"uploads in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        help=f"tries per request before giving up (default {DEFAULT_ATTEMPTS})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; 0 on success, 1 with a one-line message (no secrets) on failure."""
    args = build_parser().parse_args(argv)
    config: S3Config | None = None
    try:
        config = load_config(args.config)
        count = asyncio.run(
            upload(args.folder, config, args.concurrency, not args.quiet, args.attempts)
        )
    except (ConfigError, UploadError) as exc:
        message = config.redact(str(exc)) if config else str(exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 1
    where = f"s3://{config.bucket}/{config.prefix.strip('/')}".rstrip("/")
    print(f"Uploaded {count} files to {where} at {config.where()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
