"""What the job pages read: job records (pending ones too), progress, the home page's job lists,
durations, dataset files in the store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import msgspec
import nats.errors
import nats.js.errors
from flask import abort, current_app, render_template
from markupsafe import Markup

from digits import events, subjects
from digits.dataset import MANIFEST, Manifest
from digits.jobs import (
    DONE,
    INITIALIZED,
    RUNNING,
    STATUS_NAMES,
    TERMINAL,
    WAITING,
    Job,
    JobNotFound,
)
from digits.registry import is_ref
from digits.store import StoreError, open_store
from gateway import ownership
from gateway.context import bus_client, job_store, pending
from gateway.inference import resolve_ref
from gateway.jobcache import JobSummary, Listing
from gateway.pages.common import fragments

_encode = msgspec.msgpack.Encoder().encode
# Live partials: asked again on each server-sent notice of their job; while no event stream is
# open (refused, or gone), they poll themselves, so a change shows within about half a second;
# while one is open they still ask every SAFETY_POLL, in case a notice was lost on the way.
SAFETY_POLL = "10s"


def live_trigger(delay: str) -> str:
    """The hx-trigger of a live partial that polls every ``delay`` while no stream is open."""
    return (
        f"load[!window.digitsLive] delay:{delay}, "
        f"load[window.digitsLive] delay:{SAFETY_POLL}, digits-poll, sse:job"
    )


POLL = live_trigger("500ms")
MODEL_POLL = live_trigger("1s")  # the model's status partial: training reports per epoch
TABS = ("datasets", "models")  # the home page's job lists
ACTIVE = (WAITING, RUNNING)
PAGE_SIZE = 50  # jobs per page of the home page's lists


def find_job(job_id: str, kind: str | None = None) -> Job:
    """The job record, or a 404 naming the id (a job of another type counts as unknown)."""
    job_store()  # 503 while not connected
    try:
        job = bus_client().get_job(job_id)
    except JobNotFound:
        job = None
    if job is None or (kind is not None and job.type != kind):
        abort(404, description=f"no {kind or 'job'} with id {job_id!r}")
    return job


def find_model(job_id: str) -> tuple[Job | None, bool]:
    """(the model job, whether it is only pending), None when there is no such model."""
    job_store()  # 503 while not connected
    try:
        job = bus_client().get_job(job_id)
    except JobNotFound:
        summary = pending().get(job_id)
        if summary is None or summary.get("type") != "model":
            return None, False
        job = Job(
            id=job_id,
            type="model",
            name=summary["name"],
            owner=summary.get("owner", ""),
            group=summary.get("group", ""),
            status=INITIALIZED,
        )
        return job, True
    return (job, False) if job.type == "model" else (None, False)


def model_or_ref_404(job_id: str) -> tuple[Job, str]:
    """The model job a URL names (a job id or ``name@alias``/``name@vN``) and what to ask for.

    A ref is asked for as it is, so that the view service follows the alias; the job it names
    now is checked (a 404 names what is unknown, a 403 another user's model).
    """
    if is_ref(job_id):
        return model_or_404(resolve_ref(job_id)), job_id
    job = model_or_404(job_id)
    return job, job.id


def model_or_404(job_id: str, use: str | None = "run") -> Job:
    """The model job (or the pending one this gateway submitted) the caller may ``use``.

    A 404 names an unknown id; a 403 names another user's model. ``use=None`` only reads it.
    """
    job, _ = find_model(job_id)
    if job is None:
        abort(404, description=f"no model with id {job_id!r}")
    if use:
        ownership.require_use(job, use)
    return job


def listing(kind: str, offset: int = 0, limit: int = PAGE_SIZE) -> Listing:
    """A page of the jobs of type ``kind`` with the counts and the active jobs (the cache)."""
    job_store()  # 503 while not connected
    return bus_client().listing(kind, offset, limit)


def dependents(job_id: str) -> list[Job] | list[JobSummary]:
    """The jobs that use ``job_id`` (models trained on a dataset)."""
    job_store()  # 503 while not connected
    return bus_client().dependents(job_id)


def record_digest(job: Job) -> str:
    """A digest of the job's record as read: it changes with every revision of the record."""
    return hashlib.blake2b(_encode(job), digest_size=9).hexdigest()


def is_finished(job: Job) -> bool:
    """Whether the job has ended (Done, Aborted or Error): its partials stop polling."""
    return job.status in TERMINAL


def last_train_progress(job_id: str) -> events.TrainProgress | None:
    """The last train.progress event of a model job, if any (heard live, else from the stream)."""
    client = bus_client()
    heard = client.live.last_progress(job_id)
    if heard is not None:
        return heard
    assert client.nc is not None
    subject = subjects.evt_job(job_id, "train.progress")

    async def last() -> Any:
        return await client.nc.jetstream().get_last_msg(subjects.STREAM_EVT, subject)

    try:
        msg = client.call(last())
    except (nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
        return None
    try:
        found = events.decode(msg.data, events.TrainProgress)
    except ValueError:
        return None
    client.live.remember(job_id, found)
    return found


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


def job_time(stamp: float | None) -> str:
    """A Unix time as ``2026-11-26 22:12:10 UTC``."""
    if not stamp:
        return ""
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_url(job: Job) -> str:
    """The page of a job."""
    return f"/{job.type}s/{job.id}"


def _groups(found: Sequence[Job | JobSummary]) -> list[tuple[str, list[Job | JobSummary]]]:
    """Jobs by group name: the ungrouped ones first, then the groups alphabetically."""
    groups: dict[str, list[Job | JobSummary]] = {}
    for job in found:
        groups.setdefault(job.group, []).append(job)
    return sorted(groups.items(), key=lambda item: (item[0] != "", item[0].lower()))


def running_jobs(active: Sequence[Job]) -> list[dict[str, Any]]:
    """The waiting and running jobs, with their progress and elapsed time."""
    return [
        {"job": j, "progress": progress(j), "elapsed": duration(j.created_at, None)}
        for j in active
        if j.status in ACTIVE
    ]


def running_panel(active: Sequence[Job], revision: int) -> Markup:
    """The running jobs panel, rendered once per change, progress event or second (elapsed)."""
    # The panel changes with the jobs, their progress events, and every second (elapsed).
    key = (revision, bus_client().live.heard, int(time.time()))
    return fragments("running", 4).get(
        key,
        lambda: render_template(
            "home/_running.html", running=running_jobs(active), poll=POLL, status_name=status_name
        ),
    )


def page_number(text: str | None) -> int:
    """The 1-based page a ``?page=`` asks for (1 when missing or not a positive number)."""
    try:
        return max(int(text or 1), 1)
    except ValueError:
        return 1


def tab_context(
    tab: str, messages: list[tuple[str, str]] | None = None, page: int = 1
) -> dict[str, Any]:
    """What the job list of ``tab`` shows: one page of it, newest first."""
    kind = "dataset" if tab == "datasets" else "model"
    found = listing(kind, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(-(-found.total // PAGE_SIZE), 1)
    if page > pages:  # past the end (jobs went away): show the last page
        page = pages
        found = listing(kind, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    active = {j.id: j for j in found.active}
    rows = {
        j.id: {
            "progress": progress(active[j.id]) if j.id in active else None,
            "dataset": (j.depends_on[0], found.names.get(j.depends_on[0], j.depends_on[0]))
            if j.depends_on
            else None,
        }
        for j in found.jobs
    }
    client = bus_client()
    live = client.live.heard if active.keys() & rows.keys() else 0  # progress bars move
    key = (tab, page, found.revision, live)  # the table shows the jobs as of this revision
    table = fragments("job-tables").get(
        key,
        lambda: render_template(
            "home/_jobs.html",
            tab=tab,
            groups=_groups(found.jobs),
            rows=rows,
            status_name=status_name,
        ),
    )
    return {
        "tab": tab,
        "table": table,
        "counts": {t: found.counts.get(t[:-1], 0) for t in TABS},
        "page": page,
        "pages": pages,
        "page_size": PAGE_SIZE,
        "total": found.total,
        "running_panel": running_panel(found.active, found.revision),
        "messages": messages or [],
        "status_name": status_name,
        "poll": POLL,
        "revision": found.revision,
    }


def render_tab(tab: str, messages: list[tuple[str, str]] | None = None, page: int = 1) -> str:
    """The job list partial of ``tab`` (with action messages, after a bulk action)."""
    return render_template("home/_tab.html", **tab_context(tab, messages, page))
