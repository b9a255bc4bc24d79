"""The bus: connect, ensure streams/consumers/KV, publish with dedup ids, the pull-worker loop."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from digits import events, subjects
from digits.config import ConfigError, Settings
from digits.metrics import Metrics
from digits.subjects import ConsumerSpec, StreamSpec

log = logging.getLogger(__name__)

# Dead-letter headers: the original subject, where it came from and why it gave up.
H_REASON = "Digits-Dlq-Reason"
H_SUBJECT = "Digits-Dlq-Subject"
H_STREAM = "Digits-Dlq-Stream"
H_CONSUMER = "Digits-Dlq-Consumer"
H_SEQ = "Digits-Dlq-Seq"
H_DELIVERIES = "Digits-Dlq-Deliveries"
MSG_ID = "Nats-Msg-Id"
_NAME = re.compile(r"^[^\s.*>/\\]+$")  # a stream or consumer name: one subject token


class Transient(Exception):
    """The handler could not finish now; redeliver after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(Exception):
    """The message can never succeed: terminate it and dead-letter it with this reason."""


Handler = Callable[[Msg], Awaitable[None]]


async def connect(settings: Settings, name: str, **kwargs: Any) -> NATS:
    """Connect to the configured NATS servers, reconnecting forever."""
    opts: dict[str, Any] = {
        "servers": list(settings.nats_urls),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
    }
    if settings.nats_creds:
        _require_nkeys(settings.nats_creds)
        opts["user_credentials"] = settings.nats_creds
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password or ""
    if settings.nats_tls_ca or settings.nats_tls_cert:
        ctx = ssl.create_default_context(cafile=settings.nats_tls_ca)
        if settings.nats_tls_cert:
            ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        opts["tls"] = ctx
    opts.update(kwargs)
    return await nats.connect(**opts)


def _require_nkeys(creds: str) -> None:
    # nats-py signs the server's nonce with nkeys, an optional dependency: say so up front.
    try:
        import nkeys  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"DIGITS_NATS_CREDS={creds!r} needs the nkeys package to sign in; pip install nkeys"
        ) from None


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    """The JetStream configuration of a stream spec."""
    return StreamConfig(
        name=spec.name,
        description=spec.description or None,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
        max_age=spec.max_age_s,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=spec.duplicate_window_s,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create every stream of subjects.STREAMS, or update it to the wanted config."""
    for spec in subjects.STREAMS:
        config = stream_config(spec, replicas)
        try:
            info = await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(spec.name)  # another service created it first
        # A service started without DIGITS_REPLICAS must not shrink a cluster's R3 streams.
        config.num_replicas = max(replicas, info.config.num_replicas or 1)
        await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, replicas: int = 1) -> dict[str, KeyValue]:
    """Create or open every KV bucket of subjects.KV_BUCKETS."""
    buckets: dict[str, KeyValue] = {}
    for name, opts in subjects.KV_BUCKETS.items():
        try:
            buckets[name] = await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=name,
                description=opts.get("description"),
                history=opts.get("history", 1),
                ttl=opts.get("ttl"),
                storage=StorageType.FILE,
                replicas=replicas,
            )
            buckets[name] = await js.create_key_value(config)
    return buckets


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    """The JetStream configuration of a durable pull consumer spec."""
    filters = list(spec.filter_subjects)
    return ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        backoff=list(spec.backoff_s) or None,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        max_ack_pending=1000,
        deliver_policy=DeliverPolicy.NEW if spec.deliver_new else DeliverPolicy.ALL,
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create the durable consumer, or update it to the wanted config."""
    config = consumer_config(spec)
    try:
        await js.add_consumer(spec.stream, config)
    except nats.js.errors.BadRequestError:
        # The server refused the change (e.g. another filter): the existing config stays.
        log.warning("consumer %s exists with a config that cannot change; keeping it", spec.durable)


async def ensure_all(js: JetStreamContext, replicas: int = 1) -> dict[str, KeyValue]:
    """Streams, KV buckets and every durable consumer: what `digits init` creates."""
    await ensure_streams(js, replicas)
    buckets = await ensure_kv(js, replicas)
    for spec in subjects.CONSUMERS.values():
        await ensure_consumer(js, spec)
    return buckets


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    attempts: int = 5,
    first_timeout: float | None = None,
) -> PubAck:
    """Publish to a stream with a content-derived Nats-Msg-Id, retrying with the same id."""
    hdrs = {**(headers or {}), MSG_ID: msg_id}
    delay = 0.1
    for attempt in range(1, attempts + 1):
        wait = first_timeout if attempt == 1 and first_timeout is not None else timeout
        try:
            return await js.publish(subject, payload, timeout=wait, headers=hdrs)
        except (TimeoutError, nats.js.errors.NoStreamResponseError) as exc:
            if attempt == attempts:
                raise
            log.debug("publish %s (id %s) attempt %d: %r", subject, msg_id, attempt, exc)
        except nats.js.errors.ServiceUnavailableError:
            if attempt == attempts:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def publish_event(js: JetStreamContext, event: events.Event, **kwargs: Any) -> PubAck:
    """Publish a typed event on its subject with its dedup id."""
    return await publish(
        js,
        events.subject_for(event),
        events.encode(event),
        msg_id=events.msg_id_for(event),
        **kwargs,
    )


async def dead_letter(
    js: JetStreamContext,
    *,
    subject: str,
    data: bytes,
    stream: str,
    consumer: str,
    seq: int,
    deliveries: int,
    reason: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Keep a message that gave up in the dead-letter stream, with its reason."""
    hdrs = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-")}
    hdrs.update(
        {
            H_REASON: _one_line(reason)[:1000],
            H_SUBJECT: subject,
            H_STREAM: stream,
            H_CONSUMER: consumer,
            H_SEQ: str(seq),
            H_DELIVERIES: str(deliveries),
        }
    )
    await publish(
        js,
        subjects.dlq(stream, consumer),
        data,
        msg_id=f"dlq:{stream}:{seq}",
        headers=hdrs,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        return f"malformed payload: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Worker:
    """A durable pull consumer's loop: fetch what there is capacity for, map outcomes to acks."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Handler,
        *,
        metrics: Metrics | None = None,
        batch: int = 1,
        fetch_timeout: float = 1.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.js = js
        self.spec = spec
        self.handler = handler
        self.metrics = metrics
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.retry_delay = retry_delay
        self._held: dict[int, Msg] = {}  # by id(): Msg is not hashable
        self._m = _WorkerMetrics(metrics, spec.durable) if metrics else None

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until ``stop`` is set, then finish or nak what is held."""
        await ensure_consumer(self.js, self.spec)
        sub = await self.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        beat = asyncio.ensure_future(self._keep_alive())
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout)
                except TimeoutError:
                    continue  # nothing yet (nats' own TimeoutError is one too)
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    # Disconnected or the server is restarting: leave it to redelivery.
                    log.debug("%s: fetch failed: %r", self.spec.durable, exc)
                    await _sleep_or_stop(stop, 0.5)
                    continue
                if len(msgs) == 1:
                    await self._handle_logged(msgs[0])
                    continue
                # gather() cancels the handlers if this loop is cancelled: they nak.
                await asyncio.gather(*(self._handle_logged(m) for m in msgs))
        finally:
            beat.cancel()
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass

    async def _handle_logged(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - settling failed; the server redelivers
            log.error("%s: %r", self.spec.durable, exc)

    async def handle(self, msg: Msg) -> None:
        """Run the handler on one message and settle it: ack, nak(delay), term + dead letter."""
        deliveries = msg.metadata.num_delivered or 1
        m = self._m
        if m:
            if deliveries > 1:
                m.redelivered.inc()
            m.in_flight.inc()
        self._held[id(msg)] = msg
        started = time.perf_counter()
        try:
            await self.handler(msg)
        except asyncio.CancelledError:
            await _quietly(msg.nak())
            raise
        except Permanent as exc:
            await self._give_up(msg, deliveries, _reason(exc))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await self._give_up(msg, deliveries, _reason(exc))
        except Exception as exc:  # noqa: BLE001 - any other failure is retried, then dead-lettered
            if deliveries >= self.spec.max_deliver:
                reason = f"gave up after {deliveries} deliveries: {_reason(exc)}"
                await self._give_up(msg, deliveries, reason)
            else:
                delay = exc.delay if isinstance(exc, Transient) else self._backoff(deliveries)
                log.warning(
                    "%s: delivery %d failed, retry in %.1fs: %s",
                    self.spec.durable,
                    deliveries,
                    delay,
                    _reason(exc),
                )
                if m:
                    m.nak.inc()
                await _quietly(msg.nak(delay=delay))
        else:
            await _quietly(msg.ack())
            if m:
                m.handled.inc()
        finally:
            self._held.pop(id(msg), None)
            if m:
                m.in_flight.dec()
                m.latency.observe(time.perf_counter() - started)

    def _backoff(self, deliveries: int) -> float:
        return min(self.retry_delay * 2 ** (deliveries - 1), 30.0)

    async def _give_up(self, msg: Msg, deliveries: int, reason: str) -> None:
        log.error("%s: dead-lettering %s: %s", self.spec.durable, msg.subject, reason)
        meta = msg.metadata
        await dead_letter(
            self.js,
            subject=msg.subject,
            data=msg.data,
            stream=meta.stream,
            consumer=meta.consumer,
            seq=meta.sequence.stream,
            deliveries=deliveries,
            reason=reason,
            headers=dict(msg.headers or {}),
        )
        await _quietly(msg.term())
        if self._m:
            self._m.term.inc()
            self._m.dead_lettered.inc()

    async def _keep_alive(self) -> None:
        # One loop for every held message: in_progress() well inside ack_wait, so long work is
        # not redelivered (a message held for less than an interval is never touched).
        interval = max(self.spec.ack_wait_s / 3, 0.05)
        seen: set[int] = set()
        while True:
            await asyncio.sleep(interval)
            held = dict(self._held)
            for key in held.keys() & seen:
                await _quietly(held[key].in_progress())
            seen = set(held)


class _WorkerMetrics:
    """A worker's labelled metric children, looked up once."""

    def __init__(self, metrics: Metrics, consumer: str) -> None:
        labels = (metrics.service, consumer)
        self.handled = metrics.handled.labels(*labels)
        self.nak = metrics.failed.labels(*labels, "nak")
        self.term = metrics.failed.labels(*labels, "term")
        self.redelivered = metrics.redelivered.labels(*labels)
        self.dead_lettered = metrics.dead_lettered.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels)
        self.latency = metrics.latency.labels(*labels)


GaveUp = Callable[[str, bytes, str], Awaitable[None]]  # (subject, data, reason) of a dead letter


async def forward_max_deliveries(
    js: JetStreamContext, msg: Msg, on_gave_up: GaveUp | None = None
) -> None:
    """Turn a MAX_DELIVERIES advisory into a dead letter holding the original message.

    ``on_gave_up`` then hears of it (a service ends the message's job, so none stays Running).
    """
    try:
        advisory = json.loads(msg.data)
        stream, consumer = advisory["stream"], advisory["consumer"]
        seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise Permanent(f"unreadable advisory: {exc!r}") from exc
    names = [n for n in (stream, consumer) if not (isinstance(n, str) and _NAME.match(n))]
    if names or seq < 1:
        raise Permanent(
            f"unreadable advisory: stream {stream!r}, consumer {consumer!r}, stream_seq {seq} "
            "(names are one subject token, sequences start at 1)"
        )
    try:
        original = await js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        log.warning("advisory for %s seq %d: message already gone", stream, seq)
        return
    reason = (
        f"not acknowledged after {deliveries} deliveries "
        "(the worker crashed or ran past ack_wait each time)"
    )
    await dead_letter(
        js,
        subject=original.subject or "",
        data=original.data or b"",
        stream=stream,
        consumer=consumer,
        seq=seq,
        deliveries=deliveries,
        reason=reason,
        headers=dict(original.headers or {}),
    )
    info = await js.stream_info(stream)
    if info.config.retention == RetentionPolicy.WORK_QUEUE:
        # A work queue keeps what nobody acked; the dead letter now holds it.
        try:
            await js.delete_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            pass
    if on_gave_up is not None:
        await on_gave_up(original.subject or "", original.data or b"", reason)


async def _quietly(aw: Awaitable[Any]) -> None:
    # Acks on a lost connection fail; the server redelivers, and handlers are idempotent.
    try:
        await aw
    except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
        log.debug("ack verb failed: %r", exc)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
