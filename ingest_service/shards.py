"""Encoding one shard: chunks to the process pool, streamed into one LMDB file as they return."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from digits import bus
from digits.dataset import ShardWriter
from ingest_service.encode import ChunkResult, encode_chunk, spilled_samples

MIN_CHUNK = 16  # entries per task: enough to amortize the hand-over to a process
MAX_CHUNK = 128  # ... and few enough that every process gets several chunks of a shard
CHECK_EVERY_S = 2.0  # how often a running shard looks for an abort


class Slots:
    """At most ``limit`` chunks in the pool; waiting chunks are served oldest shard first.

    A service holds a second shard while one encodes (so that its next shard is ready, and its
    finished one is stored, while the encoders work): the older shard keeps the processes, so
    it finishes as soon as it alone would, and the younger fills them as the older runs out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        """Wait for a slot; a lower ``priority`` (an older shard) is served first."""
        if self.used < self.limit and not self._waiting:
            self.used += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back (to the oldest waiting shard, if any)."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes on: ``used`` is unchanged
                return
        self.used -= 1


class ShardEncoder:
    """The service's encoding processes, shared by the shards it holds."""

    def __init__(self, pool_factory: Callable[[], Executor], pool_size: int) -> None:
        self.pool_factory = pool_factory
        self.pool = pool_factory()
        self.pool_size = pool_size
        self.slots = Slots(2 * pool_size)  # one chunk running and one queued per process
        self.room = asyncio.Event()  # set while no shard held here waits to reach the pool
        self.room.set()
        self._waiting = 0
        self._tickets = itertools.count()

    def chunk_size(self, count: int) -> int:
        """Entries per chunk: several chunks per process, within MIN_CHUNK..MAX_CHUNK."""
        return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(count / (8 * self.pool_size))))

    def claim(self) -> Callable[[], None]:
        """Count a shard as waiting to reach the pool, until the returned call (once or more).

        A worker takes its next shard only when ``room`` is set: late enough that a shard is not
        held back from an idle worker elsewhere, early enough to be ready when the pool is.
        """
        self._waiting += 1
        self.room.clear()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._waiting -= 1
                if not self._waiting:
                    self.room.set()

        return release

    async def encode(
        self,
        call: tuple[str, dict[str, Any], str, bool],
        entries: list,
        writer: ShardWriter,
        stopped: Callable[[], Awaitable[bool]],
        queued: Callable[[], None] = lambda: None,
        spill_dir: str | None = None,
    ) -> list[ChunkResult] | None:
        """Encode ``entries`` into ``writer`` in order; the chunks' stats, or None if stopped.

        ``call`` is (extension id, form, encoding, want_mean). ``stopped`` is asked every few
        seconds (an abort); a failure is raised, and the message is redelivered. ``queued`` is
        called once the last chunk has its slot in the pool. With ``spill_dir``, the encoding
        processes hand their samples over in files there rather than through the pool's pipe.
        """
        extension_id, form, encoding, want_mean = call
        size = self.chunk_size(len(entries))
        chunks = [entries[i : i + size] for i in range(0, len(entries), size)]
        ticket = next(self._tickets)
        loop = asyncio.get_running_loop()
        unqueued = len(chunks)
        if not unqueued:
            queued()

        async def run(n: int, chunk: list) -> ChunkResult:
            nonlocal unqueued
            await self.slots.acquire(ticket)
            unqueued -= 1
            if not unqueued:
                queued()
            pool = self.pool
            spill = None if spill_dir is None else os.path.join(spill_dir, f"chunk-{n:05d}.msgpack")
            try:
                return await loop.run_in_executor(
                    pool, encode_chunk, extension_id, form, chunk, encoding, want_mean, spill
                )
            except BrokenProcessPool:
                # An encoding process died (killed, or a decoder crashed): a new pool serves the
                # retry; the broken one never would.
                if self.pool is pool:
                    self.pool = self.pool_factory()
                    pool.shutdown(wait=False, cancel_futures=True)
                raise bus.Transient("an encoding process died; retrying", 1.0) from None
            finally:
                self.slots.release()

        tasks = [asyncio.ensure_future(run(n, c)) for n, c in enumerate(chunks)]
        results: list[ChunkResult] = []
        check_at = loop.time() + CHECK_EVERY_S
        try:
            for task in tasks:  # in order: samples are written as their chunk returns
                while not task.done():
                    await asyncio.wait({task}, timeout=max(0.0, check_at - loop.time()))
                    if loop.time() >= check_at:
                        if await stopped():
                            return None
                        check_at = loop.time() + CHECK_EVERY_S
                result = task.result()
                if result.count:
                    await asyncio.to_thread(_write, writer, result)
                result.samples = []  # written: only the stats are kept
                results.append(result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return results

    def close(self) -> None:
        """Stop the encoding processes."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _write(writer: ShardWriter, result: ChunkResult) -> None:
    for sample in spilled_samples(result):
        writer.put_encoded(sample, count_labels=False)  # the chunk counted its labels
