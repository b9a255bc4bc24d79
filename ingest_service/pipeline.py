"""Dataset jobs: a create command is itemized into shards of work; the last shard finalizes."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, events, jobs
from digits.config import Settings
from digits.dataset import ShardWriter
from digits.jobs import Job, JobNotFound, JobStore, Stage
from digits.s3 import S3Error, fetch_objects, s3_client, split_s3_url
from digits.secrets import SECRET_FIELDS, SecretError, SecretStore, open_form, seal_form
from digits.store import Store
from digits.utils.constants import COLOR_PALETTE_ATTRIBUTE, TEST_DB, TRAIN_DB, VAL_DB
from ingest_service import finalize
from ingest_service.layout import (
    dataset_key,
    entries_key,
    object_claim,
    parse_title,
    shard_name,
    stage_title,
    watch_config,
)
from ingest_service.shards import ShardEncoder

log = logging.getLogger(__name__)

STAGES = (TRAIN_DB, VAL_DB, TEST_DB)
PERMANENT_S3_ERRORS = frozenset(
    {
        "NoSuchBucket",
        "InvalidBucketName",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "NoCredentialsError",
    }
)


class Pipeline:
    """The ingest service's handlers: create (coordinator), shard (worker), finalize."""

    def __init__(
        self,
        js: JetStreamContext,
        jobs_: JobStore,
        store: Store,
        settings: Settings,
        secrets: SecretStore | None,
        pool_factory: Callable[[], Executor],
        pool_size: int,
    ) -> None:
        self.js = js
        self.jobs = jobs_
        self.store = store
        self.settings = settings
        self.secrets = secrets
        self.encoder = ShardEncoder(pool_factory, pool_size)

    # --- the coordinator ---------------------------------------------------------------------

    async def on_create(self, msg: Msg) -> None:
        """Create the job (once per command), itemize, and publish one work item per shard."""
        cmd = events.decode(msg.data, events.DatasetCreate)
        job = await self._job_for(cmd)
        if job.status in jobs.TERMINAL:
            return
        if job.extra.get("plan"):
            await self.publish_shards(job)  # a redelivery after planning: same ids, deduped
            return
        await self.jobs.set_status(job.id, jobs.RUNNING)
        parse = parse_title(job.extension)
        await self.jobs.update_stage(job.id, parse, status=jobs.RUNNING)
        if job.extra.get("refused"):
            await self._fail(job.id, parse, job.extra["refused"])
            return
        try:
            form = await self._form(job)
            itemized = await asyncio.to_thread(_itemize, job.extension, form)
        except Exception as exc:  # noqa: BLE001 - a user's or a plugin's error
            log.info("dataset %s: %s", job.id, exc)
            await self._fail(job.id, parse, f"{type(exc).__name__}: {exc}")
            return
        entries, labels, manifest_extra = itemized
        if not entries.get(TRAIN_DB):
            await self._fail(job.id, parse, "no entries for train_db: nothing to train on")
            return
        plan = await self.write_plan(job.id, entries, version=1)
        if labels:
            await self.store.put(dataset_key(job.id, "labels.txt"), "\n".join(labels).encode())
        total = sum(p["count"] for p in plan.values())

        def planned(j: Job) -> Job:
            now = time.time()
            first = next(s for s in j.stages if s.name == parse)
            stages = [
                msgspec.structs.replace(
                    first,
                    status=jobs.DONE,
                    progress=1.0,
                    done=total,
                    total=total,
                    finished_at=now,
                    counts={stage: p["count"] for stage, p in plan.items()},
                )
            ]
            stages += [
                Stage(name=stage_title(s), status=jobs.RUNNING, total=p["count"], started_at=now)
                for s, p in plan.items()
            ]
            extra = {**j.extra, "version": 1, "plan": plan, "labels": labels, "done": {}}
            if manifest_extra:
                extra["manifest_extra"] = manifest_extra
            extra["encoding"] = str(form.get("encoding") or _default_encoding(j.extension))
            return msgspec.structs.replace(j, stages=stages, extra=extra)

        job = await self.jobs.update(job.id, planned)
        if job.extra.get("watch"):
            await self._claim_listed(entries)
        await self.publish_shards(job)

    async def _claim_listed(self, entries: dict[str, list]) -> None:
        # Objects the listing found are in version 1; a late notification must not add them.
        idem = await self.js.key_value("digits-idem")
        for stage_entries in entries.values():
            for url, *_ in stage_entries:
                bucket, key = split_s3_url(url)
                try:
                    await idem.create(object_claim(bucket, key), b"1")
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass

    async def write_plan(
        self, job_id: str, entries: dict[str, list], version: int
    ) -> dict[str, dict[str, int]]:
        """Store each stage's entries in shards for the workers; the plan (shards, count)."""
        size = self.settings.shard_size
        plan: dict[str, dict[str, int]] = {}
        for stage, stage_entries in entries.items():
            if not stage_entries:
                continue
            chunks = [stage_entries[i : i + size] for i in range(0, len(stage_entries), size)]
            for n, chunk in enumerate(chunks):
                key = entries_key(job_id, stage, n, version)
                await self.store.put(key, msgpack.packb(chunk))
            plan[stage] = {"shards": len(chunks), "count": len(stage_entries)}
        return plan

    async def _job_for(self, cmd: events.DatasetCreate) -> Job:
        # A redelivered command finds the job it created: the claim lives in digits-idem.
        idem = await self.js.key_value("digits-idem")
        job_id = cmd.job_id or jobs.new_job_id(cmd.occurred_at)
        claim = f"dataset-create.{cmd.event_id}"
        try:
            await idem.create(claim, job_id.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            job_id = (await idem.get(claim)).value.decode()
            try:
                return await self.jobs.get(job_id)
            except JobNotFound:
                pass
        form = dict(cmd.form)
        extra: dict[str, Any] = {"watch": watch} if (watch := watch_config(cmd.form)) else {}
        if self.secrets is not None:
            form = await seal_form(self.secrets, form, owner=cmd.owner)
        elif any(form.get(k) for k in SECRET_FIELDS):
            # Never store credentials in the clear: drop them, and fail the job with the reason.
            form = {k: v for k, v in form.items() if k not in SECRET_FIELDS}
            extra["refused"] = "the form carries credentials but DIGITS_SECRET_KEY is not set"
        job = Job(
            id=job_id,
            type="dataset",
            name=cmd.name,
            extension=cmd.extension,
            group=cmd.group,
            owner=cmd.owner,
            form=form,
            stages=[Stage(name=parse_title(cmd.extension))],
            extra=extra,
        )
        try:
            return await self.jobs.create(job)
        except jobs.JobError:
            return await self.jobs.get(job_id)

    async def publish_shards(self, job: Job) -> None:
        """Publish the current version's shards (ids derive from job, version, stage, shard)."""
        version = job.extra.get("version", 1)
        for stage, info in job.extra["plan"].items():
            for n in range(info["shards"]):
                size = min(self.settings.shard_size, info["count"] - n * self.settings.shard_size)
                work = events.IngestShard(
                    job_id=job.id,
                    stage=stage,
                    shard=n,
                    shards=info["shards"],
                    entries_key=entries_key(job.id, stage, n, version),
                    count=size,
                    version=version,
                )
                await bus.publish_event(self.js, work)

    async def _form(self, job: Job) -> dict[str, Any]:
        form = dict(job.form)
        if "secret_ref" in form:
            if self.secrets is None:
                raise SecretError("this dataset has credentials but DIGITS_SECRET_KEY is not set")
            form = await open_form(self.secrets, form, owner=job.owner)
        form["data_roots"] = list(self.settings.data_roots)
        return form

    async def _fail(self, job_id: str, stage: str | None, message: str) -> None:
        if stage:
            await self.jobs.update_stage(job_id, stage, status=jobs.ERROR)
        await self.jobs.set_status(job_id, jobs.ERROR, message)

    # --- the shard workers -------------------------------------------------------------------

    async def on_work(self, msg: Msg) -> None:
        """Dispatch a work item: a shard to encode or a dataset to finalize."""
        work = events.decode(msg.data, events.Work)
        try:
            if isinstance(work, events.IngestShard):
                await self.on_shard(work)
            else:
                await finalize.finalize(self.js, self.jobs, self.store, work)
        except Exception as exc:
            # Wrong credentials or a vanished bucket will not heal; nor will the last retry.
            permanent = isinstance(exc, S3Error) and exc.code in PERMANENT_S3_ERRORS
            last = (msg.metadata.num_delivered or 1) >= self.settings.max_deliver
            if not (permanent or last):
                raise
            where = (
                f"shard {work.shard} of {work.stage}"
                if isinstance(work, events.IngestShard)
                else "finalize"
            )
            await self._fail(work.job_id, None, f"{where}: {type(exc).__name__}: {exc}")

    async def on_shard(self, work: events.IngestShard) -> None:
        """Encode one shard into one LMDB file; record it by CAS; the last one finalizes."""
        queued = self.encoder.claim()  # until its chunks are in the pool: see PrefetchWorker
        try:
            await self._shard(work, queued)
        finally:
            queued()

    async def _shard(self, work: events.IngestShard, queued: Callable[[], None]) -> None:
        try:
            job = await self.jobs.get(work.job_id)
        except JobNotFound:
            return  # deleted meanwhile: nothing to do
        if job.status in (jobs.ABORTED, jobs.ERROR):
            return  # aborted (or failed): remaining shards are dropped
        if work.version != job.extra.get("version", 1):
            return  # a stale redelivery of an earlier version
        if str(work.shard) in job.extra.get("done", {}).get(work.stage, {}):
            await self._maybe_finalize(job)
            return
        entries = list(msgpack.unpackb(await self.store.get(work.entries_key), use_list=False))
        form = await self._form(job)
        encoding = job.extra["encoding"]  # decided when the shards were planned
        # An encoding process still running a chunk of an aborted shard may spill into ``tmp``
        # as it is removed: a file left there must not fail the shard.
        with tempfile.TemporaryDirectory(prefix="digits-shard-", ignore_cleanup_errors=True) as tmp:
            failed: list[str] = []
            if any(_is_s3(e) for e in entries):
                # Objects are fetched to local files first (bounded concurrency, streamed to
                # disk); the extension then reads them like a folder's images.
                entries, failed = await fetch_s3_entries(form, entries, Path(tmp, "objects"))
                form = {**form, "data_roots": [str(Path(tmp, "objects"))]}
            call = (job.extension, form, encoding, work.stage == TRAIN_DB)
            path = Path(tmp, "shard.lmdb")
            writer = await asyncio.to_thread(ShardWriter, path)
            try:
                stopped = self._stopped(job.id)
                results = await self.encoder.encode(
                    call, entries, writer, stopped, queued, spill_dir=tmp
                )
            except BaseException:
                await asyncio.to_thread(writer.abort)
                raise
            if results is None:
                await asyncio.to_thread(writer.abort)
                return  # aborted while encoding
            await asyncio.to_thread(writer.close)
            stats = finalize.merge_chunks(results)
            stats["skipped"] += len(failed)
            stats["reasons"] = (failed + stats["reasons"])[:20]
            stem = dataset_key(job.id, work.stage, shard_name(work.shard, work.version))
            await self.store.put_file(f"{stem}.lmdb", path)
        if stats.get("mean"):
            partial = await asyncio.to_thread(finalize.merged_mean_bytes, results)
            await self.store.put(f"{stem}.mean.npy", partial)
        await self.store.put(f"{stem}.json", msgspec.json.encode(stats))
        job = await self.jobs.update(job.id, finalize.record_shard(work, stats))
        await self._maybe_finalize(job)

    def _stopped(self, job_id: str) -> Callable[[], Awaitable[bool]]:
        async def stopped() -> bool:
            return (await self.jobs.get(job_id)).status in (jobs.ABORTED, jobs.ERROR)

        return stopped

    def close(self) -> None:
        """Stop the encoding processes."""
        self.encoder.close()

    async def _maybe_finalize(self, job: Job) -> None:
        if finalize.all_shards_done(job):
            version = job.extra.get("version", 1)
            await bus.publish_event(self.js, events.IngestFinalize(job_id=job.id, version=version))


def _itemize(
    extension_id: str, form: dict[str, Any]
) -> tuple[dict[str, list], list[str], dict[str, Any]]:
    """Run the extension's itemize_entries for each stage (blocking: runs in a thread).

    Returns the entries, the class names and what goes in the manifest's ``extra``: the colour
    palette that DIGITS's segmentation extensions keep in their userdata.
    """
    from digits.extensions.data import get_extension

    ext = get_extension(extension_id)(is_inference_db=False, **form)
    entries = {stage: list(ext.itemize_entries(stage) or []) for stage in STAGES}
    labels = ext.get_labels() if hasattr(ext, "get_labels") else getattr(ext, "labels", None)
    userdata = getattr(ext, "userdata", None)
    userdata = userdata if isinstance(userdata, dict) else {}
    if not labels:  # DIGITS's plugins name their classes in userdata["class_labels"]
        labels = userdata.get("class_labels")
    extra: dict[str, Any] = {}
    palette = userdata.get(COLOR_PALETTE_ATTRIBUTE)
    if palette is not None:
        extra[COLOR_PALETTE_ATTRIBUTE] = [int(v) for v in palette]
    return entries, [str(label) for label in (labels or [])], extra


def _is_s3(entry: Any) -> bool:
    return isinstance(entry, list | tuple) and bool(entry) and str(entry[0]).startswith("s3://")


async def fetch_s3_entries(
    form: dict[str, Any], entries: list, dest: Path
) -> tuple[list, list[str]]:
    """Download the ``s3://`` entries into ``dest``; (entries with local paths, failure reasons)."""
    dest.mkdir(parents=True, exist_ok=True)
    by_bucket: dict[str, list[str]] = {}
    for entry in entries:
        if _is_s3(entry):
            bucket, key = split_s3_url(entry[0])
            by_bucket.setdefault(bucket, []).append(key)
    fetched: dict[str, Path | Exception] = {}
    async with s3_client(
        form.get("s3_endpoint_url") or None,
        form.get("s3_accesskey") or None,
        form.get("s3_secretkey") or None,
        region=form.get("s3_region") or "us-east-1",
    ) as client:
        for bucket, keys in by_bucket.items():
            got = await fetch_objects(client, bucket, keys, dest)
            fetched.update({f"s3://{bucket}/{key}": value for key, value in got.items()})
    local, failed = [], []
    for entry in entries:
        if not _is_s3(entry):
            local.append(entry)
            continue
        result = fetched[entry[0]]
        if isinstance(result, Exception):
            failed.append(f"{entry[0]}: {result}")
        else:
            local.append((str(result), *entry[1:]))
    return local, failed


def _default_encoding(extension_id: str) -> str:
    return "png" if extension_id == events.CLASSIFICATION else "none"
