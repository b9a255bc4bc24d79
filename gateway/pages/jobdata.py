"""What the job pages read: job records, progress, durations, dataset files in the store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import nats.errors
import nats.js.errors
from flask import abort, current_app

from digits import events, subjects
from digits.dataset import MANIFEST, Manifest
from digits.jobs import DONE, RUNNING, STATUS_NAMES, TERMINAL, Job, JobNotFound
from digits.store import StoreError, open_store
from gateway.pages.common import bus_client, job_store

POLL = "load delay:500ms"  # self-polling partials: a change shows within about half a second


def find_job(job_id: str, kind: str | None = None) -> Job:
    """The job record, or a 404 naming the id (a job of another type counts as unknown)."""
    try:
        job = bus_client().call(job_store().get(job_id))
    except JobNotFound:
        job = None
    if job is None or (kind is not None and job.type != kind):
        abort(404, description=f"no {kind or 'job'} with id {job_id!r}")
    return job


def all_jobs() -> list[Job]:
    """Every job, newest first (from the gateway's watched job cache)."""
    job_store()  # 503 while not connected
    return bus_client().list_jobs()


def dependents(job_id: str) -> list[Job]:
    """The jobs that use ``job_id`` (models trained on a dataset)."""
    return bus_client().call(job_store().dependents(job_id))


def is_finished(job: Job) -> bool:
    """Whether the job has ended (Done, Aborted or Error): its partials stop polling."""
    return job.status in TERMINAL


def last_train_progress(job_id: str) -> events.TrainProgress | None:
    """The last train.progress event of a model job, if any."""
    client = bus_client()
    assert client.nc is not None
    subject = subjects.evt_job(job_id, "train.progress")

    async def last() -> Any:
        return await client.nc.jetstream().get_last_msg(subjects.STREAM_EVT, subject)

    try:
        msg = client.call(last())
    except (nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
        return None
    try:
        return events.decode(msg.data, events.TrainProgress)
    except ValueError:
        return None


def progress(job: Job) -> float:
    """The job's progress in 0..1: its stages for a dataset, its epochs for a model."""
    if job.status == DONE:
        return 1.0
    if job.type == "model":
        if job.status != RUNNING:
            return 0.0
        last = last_train_progress(job.id)
        epochs = float(job.form.get("train_epochs") or 30)
        return min((last.epoch if last else 0.0) / epochs, 1.0)
    if not job.stages:
        return 0.0
    return sum(min(max(s.progress, 0.0), 1.0) for s in job.stages) / len(job.stages)


def duration(start: float | None, end: float | None) -> str:
    """A readable span such as ``3m 12s`` (running spans end now)."""
    if start is None:
        return ""
    seconds = max(0, int((end or time.time()) - start))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def status_name(code: str) -> str:
    """DIGITS's word for a status code."""
    return STATUS_NAMES.get(code, code)


def dataset_root(job: Job) -> str | None:
    """The store URL of a finished dataset's root (without ``manifest.json``)."""
    url = job.extra.get("manifest_url")
    if not isinstance(url, str) or not url:
        return None
    return url[: -len(MANIFEST)].rstrip("/") if url.endswith(MANIFEST) else url.rstrip("/")


def _store_kw() -> dict[str, Any]:
    settings = current_app.config["SETTINGS"]
    return {"endpoint_url": settings.s3_endpoint_url, "region": settings.s3_region}


def local_root(root: str) -> Path | None:
    """The local directory of a file:// dataset root, else None."""
    parsed = urlparse(root)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def read_dataset_file(job: Job, key: str) -> bytes | None:
    """The bytes of ``key`` under the dataset's root in the artifact store, or None."""
    root = dataset_root(job)
    if root is None:
        return None

    async def read() -> bytes:
        async with open_store(root, **_store_kw()) as store:
            return await store.get(key)

    try:
        return bus_client().call(read(), timeout=30)
    except (StoreError, KeyError, OSError, ValueError, TimeoutError):
        return None


def manifest_of(job: Job) -> Manifest | None:
    """The manifest of a finished dataset, or None while it has none."""
    data = read_dataset_file(job, MANIFEST)
    if data is None:
        return None
    try:
        return Manifest.from_json(data)
    except ValueError:
        return None


def open_dataset(job: Job) -> Any:
    """The dataset's files (digits.dataset.Dataset; downloaded once when the store is S3)."""
    from digits import dataset

    root = dataset_root(job)
    if root is None:
        abort(404, description=f"dataset {job.id} has no files yet")
    cache = Path(current_app.config["SETTINGS"].data_dir) / "cache" / "datasets" / job.id
    return dataset.open(root, cache_dir=cache, **_store_kw())
