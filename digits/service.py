"""The runtime every service shares: bus, workers, health, metrics, heartbeat, SIGTERM."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial

import msgspec
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from digits import bus, events, jobs, subjects
from digits.config import ConfigError, Settings
from digits.jobs import JobStore
from digits.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

Responder = Callable[[Msg], Awaitable[bytes]]


class ServiceRuntime:
    """What a service's handlers can use: the bus, the KV buckets, the job store, metrics."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.metrics = Metrics(name)
        self.stop = asyncio.Event()
        self.started_at = time.time()
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.kv: dict[str, KeyValue] = {}
        self.jobs: JobStore | None = None
        self.health_port: int | None = None
        self.ready = False  # the setup has run (/healthz says "starting" until then)
        self.health: dict[str, Callable[[], object]] = {}  # more /healthz fields, by name
        self._workers: list[bus.Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Connect, ensure streams and buckets, start health, heartbeat, dead-letter forwarder."""
        nc = await bus.connect(
            self.settings,
            f"{self.name}@{self.instance}",
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
            error_cb=self._on_error,
        )
        self.nc = nc
        self._stack.push_async_callback(self._close_nats)
        self.js = nc.jetstream()
        await bus.ensure_streams(self.js, self.settings.replicas)
        self.kv = await bus.ensure_kv(self.js, self.settings.replicas)
        self.jobs = JobStore(self.js, self.kv[subjects.KV_JOBS])
        await self._start_health()
        self._spawn(self._heartbeat_loop())
        self.add_worker(
            subjects.CONSUMERS[subjects.CONSUMER_DLQ_FORWARDER],
            partial(bus.forward_max_deliveries, self.js, on_gave_up=self._gave_up),
        )

    async def _gave_up(self, subject: str, data: bytes, reason: str) -> None:
        """A work message that ran out of deliveries ends its job in Error, with the reason."""
        if not subject.startswith(f"{subjects.WORK}."):
            return
        try:
            job_id = msgspec.msgpack.decode(data).get("job_id")
        except (msgspec.DecodeError, AttributeError):
            return
        if not isinstance(job_id, str) or not job_id:
            return
        assert self.jobs is not None
        try:
            await self.jobs.set_status(job_id, jobs.ERROR, f"{subject} gave up: {reason}")
        except jobs.JobNotFound:
            log.warning("dead letter on %s names no job %r", subject, job_id)

    def add_worker(
        self,
        spec: subjects.ConsumerSpec,
        handler: bus.Handler,
        *,
        factory: Callable[..., bus.Worker] | None = None,
    ) -> bus.Worker:
        """Run a pull-worker loop on a durable consumer until the service stops.

        ``factory`` builds a ``bus.Worker`` subclass instead (called with the JetStream context,
        the consumer spec, the handler and ``metrics``), e.g. one that prefetches.
        """
        assert self.js is not None, "start() first"
        spec = _with_settings(spec, self.settings)
        if factory is not None:
            worker = factory(self.js, spec, handler, metrics=self.metrics)
        else:
            worker = bus.Worker(
                self.js, spec, handler, metrics=self.metrics, batch=self.settings.worker_batch
            )
        self._workers.append(worker)
        self._spawn(worker.run(self.stop))
        return worker

    async def add_responder(
        self,
        subject: str,
        queue: str,
        respond: Responder,
        concurrency: int = 16,
        *,
        waiting: int | None = None,
        bound: str = "",
    ) -> Membership:
        """Answer core-NATS requests on ``subject`` in queue group ``queue``, several at once.

        Up to ``concurrency`` requests run at once and ``waiting`` more wait their turn (None:
        no bound); beyond that a request gets an immediate ``busy`` error reply, which names
        ``bound`` (the setting of the limit), so memory stays bounded under any flood. The
        returned membership can leave the queue group for a while and join it again.
        """
        assert self.nc is not None, "start() first"
        labels = (self.name, subject)
        running: set[asyncio.Task[None]] = set()
        queued: collections.deque[Msg] = collections.deque()
        setting = f" ({bound})" if bound else ""

        def run(msg: Msg) -> None:
            task = asyncio.ensure_future(answer(msg))
            running.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            while queued and len(running) < concurrency:
                run(queued.popleft())

        async def on_request(msg: Msg) -> None:
            # nats-py awaits a subscription's callbacks one by one: hand each request to a task,
            # so a long request does not hold up the quick ones (and concurrent ones can batch).
            # Nothing here waits, so a flood is answered (or refused) as fast as it comes.
            if len(running) < concurrency:
                run(msg)
            elif waiting is None or len(queued) < waiting:
                queued.append(msg)
            else:
                self.metrics.failed.labels(*labels, "busy").inc()
                if msg.reply:
                    text = (
                        f"busy: {len(running)} requests running and {len(queued)} waiting, "
                        f"the most this {self.name} process holds{setting}; try again later"
                    )
                    reply = msgspec.msgpack.encode({"ok": False, "error": text, "busy": True})
                    with contextlib.suppress(nats.errors.Error):
                        await msg.respond(reply)

        async def drain() -> None:
            while running:  # the waiting ones start as the running ones finish
                done, _ = await asyncio.wait(set(running), timeout=20)
                if not done:
                    return

        async def answer(msg: Msg) -> None:
            self.metrics.in_flight.labels(*labels).inc()
            started = time.perf_counter()
            try:
                reply = await respond(msg)
                self.metrics.handled.labels(*labels).inc()
            except Exception as exc:  # noqa: BLE001 - a bad request never kills the service
                log.exception("%s: request failed", subject)
                self.metrics.failed.labels(*labels, "error").inc()
                reply = msgspec.msgpack.encode(
                    {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                )
            finally:
                self.metrics.in_flight.labels(*labels).dec()
                self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    try:
                        await msg.respond(reply)
                    except nats.errors.MaxPayloadError:
                        too_big = f"reply of {len(reply)} bytes exceeds the server's max_payload"
                        await msg.respond(msgspec.msgpack.encode({"ok": False, "error": too_big}))

        member = Membership(self.nc, subject, queue, on_request, drain)
        await member.join()
        self._stack.push_async_callback(drain)
        self._stack.push_async_callback(member.close)
        return member

    def background(self, coro: Awaitable[None]) -> None:
        """Run a coroutine until the service stops (it should return once ``stop`` is set)."""
        self._spawn(coro)

    def defer(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` when the service stops (after the workers, before NATS closes)."""
        self._stack.push_async_callback(callback)

    async def publish(self, event: events.Event) -> None:
        """Publish an event on its subject."""
        assert self.js is not None, "start() first"
        await bus.publish_event(self.js, event)

    async def wait(self, grace_s: float = 20.0) -> None:
        """Wait for stop; then stop fetching, let in-flight work finish (or nak it), drain."""
        await self.stop.wait()
        log.info("%s: stopping", self.name)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()  # handlers nak what they hold
            await asyncio.gather(*pending, return_exceptions=True)
        await self._stack.aclose()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self.stop.is_set():
            log.error("%s: background task died: %r", self.name, task.exception())
            self.stop.set()  # let the supervisor restart us rather than limp on

    async def _heartbeat_loop(self) -> None:
        while not self.stop.is_set():
            beat = events.Heartbeat(
                service=self.name,
                instance=self.instance,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=self.started_at,
                interval_s=self.settings.heartbeat_s,
                handled=self.metrics.total(self.metrics.handled),
                failed=self.metrics.total(self.metrics.failed),
                in_flight=self.metrics.total(self.metrics.in_flight),
            )
            if self.nc is not None and self.nc.is_connected:
                with contextlib.suppress(nats.errors.Error):
                    await self.nc.publish(events.subject_for(beat), events.encode(beat))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.settings.heartbeat_s)

    async def _start_health(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.health_host, self.settings.health_port)
        await site.start()
        self._stack.push_async_callback(runner.cleanup)
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.health_port = sockets[0].getsockname()[1] if sockets else self.settings.health_port
        log.info(
            "%s: health on http://%s:%s", self.name, self.settings.health_host, self.health_port
        )

    async def mark_ready(self) -> None:
        """The setup has run: once the server has its subscriptions, /healthz says ok."""
        if self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.flush(timeout=10)  # a request sent after "ok" finds a responder
        self.ready = True

    async def _healthz(self, request: web.Request) -> web.Response:
        connected = bool(self.nc and self.nc.is_connected)
        if not self.ready:
            status = "starting"  # its consumers and responders are not all there yet
        else:
            status = "ok" if connected and not self.stop.is_set() else "degraded"
        body: dict[str, object] = {
            "service": self.name,
            "instance": self.instance,
            "nats": "connected" if connected else "disconnected",
            "status": status,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        body.update({name: field() for name, field in self.health.items()})
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _close_nats(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 10)
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()

    async def _on_disconnect(self) -> None:
        log.warning("%s: disconnected from NATS; reconnecting", self.name)

    async def _on_reconnect(self) -> None:
        log.warning("%s: reconnected to NATS at %s", self.name, self.nc and self.nc.connected_url)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("%s: NATS error: %r", self.name, exc)


def _with_settings(spec: subjects.ConsumerSpec, settings: Settings) -> subjects.ConsumerSpec:
    # DIGITS_ACK_WAIT_S / DIGITS_MAX_DELIVER replace the defaults, not a spec's own choices.
    defaults = subjects.ConsumerSpec("", "", ())
    changes: dict[str, object] = {}
    if spec.ack_wait_s == defaults.ack_wait_s:
        changes["ack_wait_s"] = settings.ack_wait_s
    if spec.max_deliver == defaults.max_deliver:
        changes["max_deliver"] = settings.max_deliver
    return replace(spec, **changes)


class Membership:
    """A responder's place in its queue group: it can leave (finishing what it holds) and rejoin.

    While it is out, the group's other members get every request; nothing sent to it before
    it left is lost (``leave`` drains the subscription and waits for the requests in hand).
    """

    def __init__(
        self,
        nc: NATS,
        subject: str,
        queue: str,
        on_request: Callable[[Msg], Awaitable[None]],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        self.nc, self.subject, self.queue = nc, subject, queue
        self._on_request, self._settle = on_request, settle
        self._sub: Subscription | None = None

    async def join(self) -> None:
        """Take requests (again)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_request)

    async def leave(self) -> None:
        """Take no more requests; return once those already sent here are answered."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await sub.drain()  # the server sends no more; what it sent is handed over
        await self._settle()

    async def close(self) -> None:
        """Unsubscribe (the service is stopping)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


def lower_priority(nice: int, *, idle: bool = False, thread_only: bool = False) -> int:
    """Raise the nice value of every thread of this process (or the calling one) to ``nice``.

    With ``idle`` (Linux), the threads also take the SCHED_IDLE policy: they run on what normal
    threads leave, and a normal thread that wakes takes their core at once (nice 19 alone still
    lets them finish a slice first). Threads started afterwards inherit their starter's value
    and policy. A value already higher stays (it is never lowered: that needs privilege).
    Returns the calling thread's value now.
    """
    if sys.platform == "linux":  # nice values are per thread
        me = threading.get_native_id()
        tids = [me] if thread_only else [int(t) for t in os.listdir("/proc/self/task")]
    else:  # per process: a lone thread cannot be lowered alone
        tids = [] if thread_only else [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            if idle and sys.platform == "linux":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as exc:  # a sandbox may refuse it: the work runs at its priority
            log.warning("cannot lower the CPU priority to nice %d: %s", nice, exc)
    return os.getpriority(os.PRIO_PROCESS, 0)


async def periodically(
    stop: asyncio.Event, interval: float, tick: Callable[[], Awaitable[None]], what: str
) -> None:
    """Call ``tick`` every ``interval`` seconds until ``stop``; a failed tick is logged."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            await tick()
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning("%s failed: %r", what, exc)


Setup = Callable[[ServiceRuntime], Awaitable[None]]


async def serve(name: str, setup: Setup, settings: Settings | None = None) -> None:
    """Run a service until SIGTERM/SIGINT: start, let ``setup`` add handlers, wait, drain."""
    settings = settings or Settings.from_env()
    runtime = ServiceRuntime(name, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop.set)
    await runtime.start()
    await setup(runtime)
    await runtime.mark_ready()
    log.info("%s: ready (instance %s)", name, runtime.instance)
    await runtime.wait()
    log.info("%s: stopped", name)


def configure(name: str) -> Settings | None:
    """Settings from the environment and logging for service ``name``; None (said) when invalid."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", flush=True)
        return None
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    return settings


def main(name: str, setup: Setup) -> int:
    """Entry point of ``python -m <service>``: configure logging, run, exit 0 on a clean stop."""
    settings = configure(name)
    if settings is None:
        return 2
    asyncio.run(serve(name, setup, settings))
    return 0
