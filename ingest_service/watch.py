"""Datasets that grow: S3 object-created notifications for a watched prefix become new versions."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import posixpath
import time
from typing import Any

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
        for record in records:
            for job in await self._watching(record.bucket, record.key):
                await self._add(job, record)

    async def _watching(self, bucket: str, key: str) -> list[Job]:
        stamp, cached = self._cache
        if time.monotonic() - stamp > 1.0:
            cached = [
                j
                for j in await self.pipeline.jobs.list()
                if j.extra.get("watch") and j.status not in (jobs.ABORTED, jobs.ERROR)
            ]
            self._cache = (time.monotonic(), cached)
        return [
            j
            for j in cached
            if j.extra["watch"]["bucket"] == bucket and key.startswith(j.extra["watch"]["prefix"])
        ]

    async def _add(self, job: Job, record: ObjectCreated) -> None:
        idem = await self.pipeline.js.key_value("digits-idem")
        claim = event_claim(record.bucket, record.key, record.etag)
        if await _claimed(idem, claim):
            return  # announced before: a duplicate notification
        relative = record.key[len(job.extra["watch"]["prefix"]) :]
        parts = relative.split("/")
        ext = posixpath.splitext(relative)[1].lower()
        if len(parts) != 2 or parts[0].startswith(".") or ext not in SUPPORTED_EXTENSIONS:
            log.info("dataset %s ignores s3://%s/%s", job.id, record.bucket, record.key)
            return
        url = f"s3://{record.bucket}/{record.key}"
        label = parts[0].replace("_", " ")

        def add(j: Job) -> Job | None:
            pending = list(j.extra.get("pending", []))
            if any(p[0] == url and p[2] == record.etag for p in pending):
                return None
            pending.append([url, label, record.etag, time.time()])
            return msgspec.structs.replace(j, extra={**j.extra, "pending": pending})

        job = await self.pipeline.jobs.update(job.id, add)
        try:
            await idem.create(claim, b"1")
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
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
