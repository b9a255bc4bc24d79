"""The shard workers' pull loop: hold the next work item while one is being encoded."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from digits import bus
from digits.metrics import Metrics
from digits.subjects import ConsumerSpec

log = logging.getLogger(__name__)


class PrefetchWorker(bus.Worker):
    """A ``bus.Worker`` that keeps up to ``depth`` messages in hand.

    With one message at a time, the encoding processes idle while a shard is fetched, prepared
    and stored; the next one, taken when ``room`` says the pool will soon run dry, is ready when
    they finish. Settling (ack, nak, dead letter) and in-progress heartbeats are ``bus.Worker``'s.
    """

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: bus.Handler,
        *,
        metrics: Metrics | None = None,
        depth: int = 2,
        room: asyncio.Event | None = None,
    ) -> None:
        super().__init__(js, spec, handler, metrics=metrics)
        self.depth = max(1, depth)
        self.room = room  # while it is clear, no more is taken than the one being handled

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until ``stop`` is set, then finish what is held (or nak it)."""
        await bus.ensure_consumer(self.js, self.spec)
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        beat = asyncio.ensure_future(self._keep_alive())
        running: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                if running and not self._has_room(len(running)):
                    await self._wait(running, stop)
                    continue
                try:
                    # One at a time: a message in hand is one that an idle worker cannot take.
                    msgs = await sub.fetch(1, timeout=self.fetch_timeout)
                except TimeoutError:
                    continue  # nothing yet
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    log.debug("%s: fetch failed: %r", self.spec.durable, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                    continue
                for msg in msgs:
                    task = asyncio.ensure_future(self._handle_logged(msg))
                    running.add(task)
                    task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)  # stopping: finish what is held
        finally:
            for task in running:
                task.cancel()  # cancelled handlers nak their messages
            await asyncio.gather(*running, return_exceptions=True)
            beat.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _has_room(self, held: int) -> bool:
        return held < self.depth and (self.room is None or self.room.is_set())

    async def _wait(self, running: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
        """Until a handler finishes, ``room`` is set or the worker stops."""
        waits = {asyncio.ensure_future(stop.wait())}
        if self.room is not None:
            waits.add(asyncio.ensure_future(self.room.wait()))
        try:
            await asyncio.wait(running | waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
