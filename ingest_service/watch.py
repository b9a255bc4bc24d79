"""Datasets that grow: S3 object-created notifications for a watched prefix become new versions."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import posixpath
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import msgspec
import nats.js.errors
from nats.aio.msg import Msg

from digits import bus, jobs
from digits.jobs import Job, Stage
from digits.notifications import NotificationError, ObjectCreated, parse_notification
from digits.service import periodically
from digits.utils.image import SUPPORTED_EXTENSIONS
from ingest_service.finalize import finalized
from ingest_service.layout import event_claim, object_claim, stage_title
from ingest_service.pipeline import Pipeline

log = logging.getLogger(__name__)

KV_AT_ONCE = 128  # claim reads or writes of one notification in flight at a time
T = TypeVar("T")


def split_stage(url: str, pct_val: int, pct_test: int) -> str:
    """A stable stage for a new object: the same key always lands in the same split."""
    bucket = int(hashlib.sha1(url.encode()).hexdigest()[:8], 16) % 100
    if bucket < pct_val:
        return "val_db"
    if bucket < pct_val + pct_test:
        return "test_db"
    return "train_db"


class Watcher:
    """Collects announced objects per watched dataset and turns each batch into a version."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self._cache: tuple[float, list[Job]] = (0.0, [])

    async def on_notification(self, msg: Msg) -> None:
        """Handle one notification message (AWS or MinIO shape)."""
        try:
            records = parse_notification(msg.data)
        except NotificationError as exc:
            raise bus.Permanent(f"bad S3 notification: {exc}") from exc
        # One message's objects join their datasets' pending lists together, in one update a
        # dataset: a batch flushed meanwhile never splits a message, and 1,000 records cost
        # one compare-and-swap, not 1,000.
        by_job: dict[str, tuple[Job, list[ObjectCreated]]] = {}
        for record in records:
            for job in await self._watching(record.bucket, record.key):
                by_job.setdefault(job.id, (job, []))[1].append(record)
        for job, announced in by_job.values():
            await self._add(job, announced)

    async def _watching(self, bucket: str, key: str) -> list[Job]:
        stamp, cached = self._cache
        if time.monotonic() - stamp > 1.0:
            cached = await self._watching_all()
            self._cache = (time.monotonic(), cached)
        return [
            j
            for j in cached
            if j.extra["watch"]["bucket"] == bucket and key.startswith(j.extra["watch"]["prefix"])
        ]

    async def _add(self, job: Job, records: list[ObjectCreated]) -> None:
        """Add the objects not announced before to the dataset's pending list."""
        idem = await self.pipeline.js.key_value("digits-idem")
        claims = [event_claim(r.bucket, r.key, r.etag) for r in records]
        claimed = await _each(claims, partial(_claimed, idem))
        prefix = job.extra["watch"]["prefix"]
        fresh: dict[tuple[str, str], tuple[str, str]] = {}  # (url, etag) -> (label, claim)
        for record, claim, seen in zip(records, claims, claimed, strict=True):
            if seen:
                continue  # announced before: a duplicate notification
            relative = record.key[len(prefix) :]
            parts = relative.split("/")
            ext = posixpath.splitext(relative)[1].lower()
            if len(parts) != 2 or parts[0].startswith(".") or ext not in SUPPORTED_EXTENSIONS:
                log.info("dataset %s ignores s3://%s/%s", job.id, record.bucket, record.key)
                continue
            url = f"s3://{record.bucket}/{record.key}"
            fresh[(url, record.etag)] = (parts[0].replace("_", " "), claim)
        if not fresh:
            return

        def add(j: Job) -> Job | None:
            pending = list(j.extra.get("pending", []))
            held = {(p[0], p[2]) for p in pending}
            now = time.time()
            new = [[u, label, e, now] for (u, e), (label, _) in fresh.items() if (u, e) not in held]
            if not new:
                return None
            return msgspec.structs.replace(j, extra={**j.extra, "pending": pending + new})

        job = await self.pipeline.jobs.update(job.id, add)
        await _each([claim for _, claim in fresh.values()], partial(_claim, idem))
        if len(job.extra.get("pending", [])) >= self.settings.watch_batch:
            await self.flush(job.id)

    async def flush(self, job_id: str) -> None:
        """Turn the pending objects into the next version, once the previous one is final."""
        job = await self.pipeline.jobs.get(job_id)
        if not job.extra.get("pending") or not finalized(job):
            return
        idem = await self.pipeline.js.key_value("digits-idem")
        listed = set()  # objects the first version already took from the listing
        for url, *_ in job.extra["pending"]:
            bucket, _, key = url[len("s3://") :].partition("/")
            if await _claimed(idem, object_claim(bucket, key)):
                listed.add(url)
        size = self.settings.shard_size
        before = job.extra.get("version", 1)

        def plan_next(j: Job) -> Job | None:
            if j.extra.get("version", 1) != before or not finalized(j):
                return None  # someone else flushed first
            watch = j.extra["watch"]
            labels = list(j.extra.get("labels", []))
            batch = []
            for url, label, _etag, _at in j.extra.get("pending", []):
                if url in listed:
                    continue
                if label not in labels:
                    labels.append(label)
                stage = split_stage(url, watch["pct_val"], watch["pct_test"])
                batch.append([url, labels.index(label), stage])
            extra = {**j.extra, "pending": []}
            if not batch:
                return msgspec.structs.replace(j, extra=extra)
            counts: dict[str, int] = {}
            for _url, _label, stage in batch:
                counts[stage] = counts.get(stage, 0) + 1
            plan = {
                s: {"shards": math.ceil(n / size), "count": n} for s, n in sorted(counts.items())
            }
            version = before + 1
            now = time.time()
            stages = [*j.stages]
            stages += [
                Stage(
                    name=stage_title(s, version),
                    status=jobs.RUNNING,
                    total=p["count"],
                    started_at=now,
                )
                for s, p in plan.items()
            ]
            extra.update(version=version, plan=plan, done={}, labels=labels, batch=batch)
            return msgspec.structs.replace(j, stages=stages, extra=extra)

        job = await self.pipeline.jobs.update(job_id, plan_next)
        if job.extra.get("batch"):
            await self.publish_version(job)

    async def publish_version(self, job: Job) -> None:
        """Write the version's shard lists and publish its shards (safe to repeat)."""
        version = job.extra["version"]
        entries: dict[str, list] = {}
        for url, label, stage in job.extra["batch"]:
            entries.setdefault(stage, []).append((url, label))
        await self.pipeline.write_plan(job.id, dict(sorted(entries.items())), version)
        await self.pipeline.publish_shards(job)

        def published(j: Job) -> Job | None:
            if j.extra.get("version") != version or "batch" not in j.extra:
                return None
            extra = {k: v for k, v in j.extra.items() if k != "batch"}
            return msgspec.structs.replace(j, extra=extra)

        await self.pipeline.jobs.update(job.id, published)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush batches that waited long enough; republish a version a crash left unpublished."""
        interval = self.settings.watch_interval_s
        await periodically(stop, interval, lambda: self.tick(interval), "watch tick")

    async def tick(self, interval: float) -> None:
        """One pass over the watched datasets."""
        self._cache = (0.0, [])
        now = time.time()
        for job in await self._watching_all():
            if job.extra.get("batch"):
                await self.publish_version(job)
            pending = job.extra.get("pending") or []
            if pending and now - min(p[3] for p in pending) >= interval:
                await self.flush(job.id)

    async def _watching_all(self) -> list[Job]:
        """The datasets under watch now (read from the job bucket)."""
        return [
            j
            for j in await self.pipeline.jobs.list()
            if j.extra.get("watch") and j.status not in (jobs.ABORTED, jobs.ERROR)
        ]


async def _claimed(idem: Any, claim: str) -> bool:
    try:
        await idem.get(claim)
    except nats.js.errors.KeyNotFoundError:
        return False
    return True


async def _claim(idem: Any, claim: str) -> None:
    """Mark an announcement as taken (a repeat of it is then a duplicate)."""
    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
        await idem.create(claim, b"1")


async def _each(items: list[str], call: Callable[[str], Awaitable[T]]) -> list[T]:
    """``call`` on every item, KV_AT_ONCE requests in flight at a time; the results in order."""
    results: list[T] = []
    for start in range(0, len(items), KV_AT_ONCE):
        results += await asyncio.gather(*(call(i) for i in items[start : start + KV_AT_ONCE]))
    return results
