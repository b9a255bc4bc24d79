"""Every job record in memory, kept current by a watch on the jobs bucket.

Pages that list jobs (home, /index.json) read this instead of fetching each record from the
bucket on every request. Before answering, the cache checks the bucket's last sequence, so a
change that the bucket has already stored is never missing from a page (read-your-writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from digits.jobs import Job

log = logging.getLogger(__name__)
_decode = msgspec.msgpack.Decoder(Job).decode


class JobCache:
    """The jobs bucket mirrored by a KV watcher (an ordered consumer that survives reconnects)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.jobs: dict[str, Job] = {}
        self.revision = 0  # the highest bucket sequence applied
        self.synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self) -> JobCache:
        """Start watching every key (current values first, then changes)."""
        self._watcher = watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(watcher), name="job-cache")
        return self

    async def _run(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the current values are all in
                self.synced.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self.jobs.pop(entry.key, None)
            else:
                try:
                    self.jobs[entry.key] = _decode(entry.value)
                except msgspec.DecodeError as exc:
                    log.warning("job record %s cannot be decoded: %s", entry.key, exc)
            self.revision = max(self.revision, entry.revision or 0)
            async with self._changed:
                self._changed.notify_all()

    async def _last_sequence(self) -> int:
        info = await self.kv._js.stream_info(self.kv._stream)  # noqa: SLF001 - the bucket's stream
        return info.state.last_seq

    async def list(self, timeout: float = 2.0) -> list[Job] | None:
        """Every job, newest first, at least as fresh as the bucket now; None if not in sync."""
        try:
            await asyncio.wait_for(self.synced.wait(), timeout)
            target = await self._last_sequence()
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.revision >= target), timeout
                )
        except TimeoutError:
            return None
        return sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)

    async def stop(self) -> None:
        """Stop watching."""
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # already gone with its connection
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
