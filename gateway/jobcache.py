"""Every job in memory, as a small summary, kept current by a watch on the jobs bucket.

Pages that list jobs (home, /index.json, the New Model pickers) read this instead of fetching
records from the bucket on every request, and what they read costs the same with 10,000 jobs as
with ten: per job type an index newest first (a page is a slice), the active jobs apart (the
running panel), counts kept as they change. Memory stays bounded: every job is held as a
``JobSummary`` (the fields a list shows), full records only for active jobs and the most recently
read ones (``max_records``).

Reads are at least as fresh as the bucket when they began (read-your-writes): before answering,
the cache learns the bucket's last sequence and waits until it has applied it. Concurrent reads
share one such check, so fifty requests at once cost the bus one round trip, not fifty.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from digits.jobs import RUNNING, STATUS_NAMES, WAITING, Job, JobNotFound

log = logging.getLogger(__name__)

ACTIVE = (WAITING, RUNNING)
MAX_RECORDS = 512  # full records kept beyond the active ones


class SummaryExtra(msgspec.Struct, kw_only=True):
    """Of a job's ``extra``, what the lists show: a model's snapshot epochs."""

    snapshots: list[Any] = msgspec.field(default_factory=list)


class JobSummary(msgspec.Struct, kw_only=True):
    """What a job list shows of a job, decoded from its record without the rest."""

    id: str
    type: str
    name: str
    extension: str = ""
    group: str = ""
    owner: str = ""
    status: str = ""
    created_at: float = 0.0
    depends_on: list[str] = msgspec.field(default_factory=list)
    error: str = ""
    extra: SummaryExtra = msgspec.field(default_factory=SummaryExtra)
    revision: int = 0  # the bucket sequence of the record this summary was read from

    @property
    def status_name(self) -> str:
        """DIGITS's word for the status code."""
        return STATUS_NAMES.get(self.status, self.status)


_decode_summary = msgspec.msgpack.Decoder(JobSummary).decode
_decode_job = msgspec.msgpack.Decoder(Job).decode


@dataclass
class Listing:
    """One read of the cache: a page of one job type, the counts, the active jobs."""

    jobs: list[JobSummary]  # the page, newest first
    total: int  # jobs of that type
    counts: dict[str, int]  # jobs per type
    active: list[Job]  # waiting and running jobs of every type, newest first
    names: dict[str, str] = field(default_factory=dict)  # dataset id -> name, for the page's models
    revision: int = 0  # the bucket sequence the cache had applied


def _order(summary: JobSummary) -> tuple[float, str]:
    return (-summary.created_at, summary.id)


class JobCache:
    """The jobs bucket mirrored by a KV watcher (an ordered consumer that survives reconnects)."""

    def __init__(self, kv: KeyValue, *, max_records: int = MAX_RECORDS) -> None:
        self.kv = kv
        self.max_records = max_records
        self.summaries: dict[str, JobSummary] = {}
        self.revision = 0  # the highest bucket sequence applied
        self.synced = asyncio.Event()
        self._index: dict[str, list[tuple[float, str]]] = {}  # type -> (-created_at, id) sorted
        self._active: dict[str, Job] = {}  # waiting and running jobs, full records
        self._records: OrderedDict[str, Job] = OrderedDict()  # recently read, least recent first
        self._changed = asyncio.Condition()
        self._current: asyncio.Future[int] | None = None  # the sequence check in flight
        self._next: asyncio.Future[int] | None = None  # the one for callers who came after it
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self) -> JobCache:
        """Start watching every key (current values first, then changes)."""
        self._watcher = watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(watcher), name="job-cache")
        return self

    # --- applying changes ----------------------------------------------------------------------

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the current values are all in
                self.synced.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self._remove(entry.key)
            else:
                self._apply(entry.key, entry.value, entry.revision or 0)
            self.revision = max(self.revision, entry.revision or 0)
            async with self._changed:
                self._changed.notify_all()

    def _apply(self, key: str, value: bytes, revision: int) -> None:
        try:
            summary = _decode_summary(value)
            held = key in self._records or key in self._active
            record = _decode_job(value) if held or _active(summary) else None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("job record %s cannot be decoded: %s", key, exc)
            return
        summary.revision = revision
        old = self.summaries.get(key)
        if old is None or _order(old) != _order(summary) or old.type != summary.type:
            if old is not None:
                self._unindex(old)
            bisect.insort(self._index.setdefault(summary.type, []), _order(summary))
        self.summaries[key] = summary
        if record is None:
            return
        if _active(summary):
            self._active[key] = record
            self._records.pop(key, None)
        else:  # a job that just ended stays held: its page is still open
            self._active.pop(key, None)
            self._records[key] = record
            self._trim()

    def _trim(self) -> None:
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)

    def _remove(self, key: str) -> None:
        old = self.summaries.pop(key, None)
        if old is not None:
            self._unindex(old)
        self._active.pop(key, None)
        self._records.pop(key, None)

    def _unindex(self, summary: JobSummary) -> None:
        index = self._index.get(summary.type, [])
        at = bisect.bisect_left(index, _order(summary))
        if at < len(index) and index[at] == _order(summary):
            del index[at]

    # --- freshness -----------------------------------------------------------------------------

    async def _last_sequence(self) -> int:
        info = await self.kv._js.stream_info(self.kv._stream)  # noqa: SLF001 - the bucket's stream
        return info.state.last_seq

    def _check(self) -> asyncio.Future[int]:
        """A check of the bucket's last sequence that starts no earlier than now, shared."""
        if self._current is None:
            self._current = self._start_check()
            return self._current
        if self._next is None:  # the one in flight may have left before this caller's write
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def _start_check(self) -> asyncio.Future[int]:
        future = asyncio.ensure_future(self._last_sequence())
        future.add_done_callback(self._checked)
        return future

    def _checked(self, done: asyncio.Future[int]) -> None:
        self._current, waiting, self._next = None, self._next, None
        if waiting is None:
            return
        self._current = current = self._start_check()

        def hand_over(f: asyncio.Future[int]) -> None:
            if waiting.done():
                return
            if f.cancelled() or f.exception() is not None:
                waiting.set_exception(f.exception() or asyncio.CancelledError())
            else:
                waiting.set_result(f.result())

        current.add_done_callback(hand_over)

    async def fresh(self, timeout: float = 2.0) -> bool:
        """Wait until every change the bucket held when called is applied; False on timeout."""
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
            target = await asyncio.wait_for(asyncio.shield(self._check()), timeout)
            if self.revision >= target:
                return True
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.revision >= target), timeout
                )
        except TimeoutError:
            return False
        return True

    # --- reads ---------------------------------------------------------------------------------

    async def list(self, timeout: float = 2.0) -> list[JobSummary] | None:
        """Every job, newest first, at least as fresh as the bucket now; None if not in sync."""
        if not await self.fresh(timeout):
            return None
        return sorted(self.summaries.values(), key=_order)

    async def listing(
        self, kind: str, offset: int = 0, limit: int = 50, timeout: float = 2.0
    ) -> Listing | None:
        """Jobs ``offset`` to ``offset + limit`` of type ``kind``, with counts and active jobs."""
        if not await self.fresh(timeout):
            return None
        index = self._index.get(kind, [])
        page = [self.summaries[job_id] for _, job_id in index[offset : offset + max(limit, 0)]]
        names = {}
        for job in page:
            for dep in job.depends_on[:1]:
                if (found := self.summaries.get(dep)) is not None:
                    names[dep] = found.name
        active = sorted(self._active.values(), key=lambda j: (-j.created_at, j.id))
        counts = {t: len(ids) for t, ids in self._index.items()}
        return Listing(page, len(index), counts, active, names, self.revision)

    async def get(self, job_id: str, timeout: float = 2.0) -> Job | None:
        """The job's record, as fresh as the bucket now; JobNotFound; None if out of sync."""
        if not await self.fresh(timeout):
            return None
        summary = self.summaries.get(job_id)
        if summary is None:
            raise JobNotFound(job_id)
        job = self._active.get(job_id) or self._records.get(job_id)
        if job is not None:
            if job_id in self._records:
                self._records.move_to_end(job_id)
            return job
        try:  # not held: read it once, then keep it current
            entry = await self.kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise JobNotFound(job_id) from None
        if not entry.value:
            raise JobNotFound(job_id)
        job = _decode_job(entry.value)
        current = self.summaries.get(job_id)
        if current is not None and (entry.revision or 0) >= current.revision:
            self._records[job_id] = job
            self._trim()
        return job

    async def pick(
        self, kind: str, where: Callable[[JobSummary], bool], limit: int, timeout: float = 2.0
    ) -> tuple[list[JobSummary], int] | None:
        """The newest ``limit`` jobs of type ``kind`` that pass ``where``, and how many pass."""
        if not await self.fresh(timeout):
            return None
        found, passing = [], 0
        for _, job_id in self._index.get(kind, []):
            if where(summary := self.summaries[job_id]):
                passing += 1
                if len(found) < limit:
                    found.append(summary)
        return found, passing

    def revision_of(self, job_id: str) -> int | None:
        """The bucket sequence of the job's record as held now (None: not held)."""
        summary = self.summaries.get(job_id)
        return None if summary is None else summary.revision

    @property
    def held_records(self) -> int:
        """How many full records the cache holds (active and recently read)."""
        return len(self._active) + len(self._records)

    async def stop(self) -> None:
        """Stop watching."""
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # already gone with its connection
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _active(summary: JobSummary) -> bool:
    return summary.status in ACTIVE
