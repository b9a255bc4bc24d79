"""``python -m ingest_service``: dataset jobs (coordinator and shard workers) and job commands."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from digits import subjects, uploads
from digits.commands import handle_job_command
from digits.extensions.data import get_extensions
from digits.secrets import SecretBox, SecretStore
from digits.service import ServiceRuntime, main, periodically
from digits.store import store_from_settings
from ingest_service.encode import watch_parent
from ingest_service.pipeline import Pipeline
from ingest_service.watch import Watcher
from ingest_service.worker import PrefetchWorker

NAME = "ingest"
log = logging.getLogger(__name__)


async def setup(rt: ServiceRuntime) -> None:
    """Register this service's consumers."""
    assert rt.js is not None and rt.jobs is not None
    # Load the data extensions now, so that a broken plugin is logged when the service starts.
    extensions = await asyncio.to_thread(get_extensions)
    log.info("data extensions: %s", ", ".join(sorted(extensions)))
    settings = rt.settings
    store = store_from_settings(settings)
    rt.defer(store.close)
    secrets = None
    if settings.secret_key:
        secrets = SecretStore(rt.kv[subjects.KV_SECRETS], SecretBox(settings.secret_key))
    size = settings.ingest_procs or os.cpu_count() or 1

    def new_pool() -> ProcessPoolExecutor:
        # spawn: the encoding processes must not inherit the event loop or the NATS sockets.
        return ProcessPoolExecutor(
            size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=watch_parent,
            initargs=(os.getpid(),),
        )

    pipeline = Pipeline(rt.js, rt.jobs, store, settings, secrets, new_pool, size)

    async def shutdown_pool() -> None:
        await asyncio.to_thread(pipeline.close)

    rt.defer(shutdown_pool)
    rt.add_worker(
        subjects.CONSUMERS[subjects.CONSUMER_JOB_COMMANDS],
        partial(handle_job_command, rt.js, rt.jobs, store=store),
    )
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_DATASET_COMMANDS], pipeline.on_create)
    # Shards and finalize: a second work item in hand while one encodes (see PrefetchWorker).
    depth = max(2, settings.worker_batch)
    rt.add_worker(
        subjects.CONSUMERS[subjects.CONSUMER_INGEST],
        pipeline.on_work,
        factory=partial(PrefetchWorker, depth=depth, room=pipeline.encoder.room),
    )
    watcher = Watcher(pipeline)
    rt.add_worker(subjects.CONSUMERS[subjects.CONSUMER_S3_NOTIFICATIONS], watcher.on_notification)
    rt.background(watcher.run(rt.stop))
    if settings.upload_sweep_s > 0:
        # Deleting a job removes its uploads; the sweep removes those that no job refers to.
        jobs = rt.jobs

        async def sweep() -> None:
            await uploads.sweep(store, jobs, settings.upload_ttl_s)

        rt.background(periodically(rt.stop, settings.upload_sweep_s, sweep, "upload sweep"))


if __name__ == "__main__":
    sys.exit(main(NAME, setup))
