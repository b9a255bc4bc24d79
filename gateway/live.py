"""Job events from the bus, as the pages need them: the last training progress of each job, and
a feed for the pages' server-sent event streams.

One core-NATS subscription on every job event (``digits.v1.evt.job.>``) feeds it; it keeps
no history (the stream has that), only per job the last TrainProgress and a count of events,
for the jobs heard from most recently (``max_jobs``). Each open event stream is a bounded queue:
a page that does not read fast enough loses the oldest notices, never the gateway's memory,
and a notice only says "look again", so none is needed twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from digits import events, subjects

log = logging.getLogger(__name__)

MAX_JOBS = 4096  # jobs whose last progress is kept
LISTENER_QUEUE = 64  # notices an event stream may fall behind by
EVERY = "*"  # listen to every job
_PREFIX = f"{subjects.EVT}.job."


@dataclass(frozen=True)
class Notice:
    """What an event stream tells its page: which job, which kind of event, its count."""

    job_id: str
    name: str  # the event's subject name: status, stage.progress, train.progress, ...
    version: int  # events heard for this job


class Listener:
    """One event stream's queue of notices (for one job, or for every job)."""

    def __init__(self, hub: LiveHub, job_id: str) -> None:
        self.hub, self.job_id = hub, job_id
        self.queue: queue.Queue[Notice] = queue.Queue(LISTENER_QUEUE)
        self.dropped = 0

    def offer(self, notice: Notice) -> None:
        """Queue a notice, dropping the oldest when full (called on the bus loop)."""
        while True:
            try:
                self.queue.put_nowait(notice)
                return
            except queue.Full:
                self.dropped += 1
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass

    def next(self, timeout: float) -> Notice | None:
        """The next notice, or None after ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop listening."""
        self.hub.unlisten(self)


class LiveHub:
    """The last progress per job and the listeners of open event streams."""

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self.max_jobs = max_jobs
        self.heard = 0  # job events heard in all
        self._jobs: OrderedDict[str, tuple[int, events.TrainProgress | None]] = OrderedDict()
        self._listeners: dict[str, set[Listener]] = {}
        self._lock = threading.Lock()

    async def start(self, nc: NATS) -> LiveHub:
        """Subscribe to every job event."""
        await nc.subscribe(f"{_PREFIX}>", cb=self._on_event)
        return self

    async def _on_event(self, msg: Msg) -> None:
        job_id, _, name = msg.subject[len(_PREFIX) :].partition(".")
        if not job_id or not name:
            return
        progress = None
        if name == "train.progress":
            try:
                progress = events.decode(msg.data, events.TrainProgress)
            except (ValueError, msgspec.DecodeError):
                log.warning("ignoring a malformed train.progress event on %s", msg.subject)
        self.note(job_id, name, progress)

    def note(self, job_id: str, name: str, progress: events.TrainProgress | None = None) -> None:
        """Record an event of ``job_id`` and tell its listeners."""
        with self._lock:
            count, last = self._jobs.pop(job_id, (0, None))
            self._jobs[job_id] = (count + 1, progress or last)
            while len(self._jobs) > self.max_jobs:
                self._jobs.popitem(last=False)
            self.heard += 1
            notice = Notice(job_id, name, count + 1)
            targets = [*self._listeners.get(job_id, ()), *self._listeners.get(EVERY, ())]
        for listener in targets:
            listener.offer(notice)

    def remember(self, job_id: str, progress: events.TrainProgress) -> None:
        """Keep a progress read from the stream, unless a newer one was heard meanwhile."""
        with self._lock:
            count, last = self._jobs.get(job_id, (0, None))
            if last is None:
                self._jobs[job_id] = (count, progress)

    def last_progress(self, job_id: str) -> events.TrainProgress | None:
        """The last TrainProgress heard for the job (None: none heard, or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id, (0, None))[1]

    def version(self, job_id: str) -> int:
        """How many events of the job were heard (0: none, or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id, (0, None))[0]

    def listen(self, job_id: str = EVERY) -> Listener:
        """A new listener for one job's events (or every job's)."""
        listener = Listener(self, job_id)
        with self._lock:
            self._listeners.setdefault(job_id, set()).add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        """Remove a listener (again is harmless)."""
        with self._lock:
            found = self._listeners.get(listener.job_id)
            if found is not None:
                found.discard(listener)
                if not found:
                    del self._listeners[listener.job_id]

    @property
    def listeners(self) -> int:
        """Open listeners, all jobs together."""
        with self._lock:
            return sum(len(s) for s in self._listeners.values())
