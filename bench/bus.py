"""Bus benchmark: digits.bus.Worker against a bare nats-py pull loop, latency and throughput.

Run as ``python bench/bus.py [--messages N] [--quick]``. It starts its own nats-server with
JetStream in a temporary directory, prints readable lines to stderr and, as the last line on
stdout, one JSON object with the figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from digits import bus, subjects
from digits.metrics import Metrics
from digits.subjects import ConsumerSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script too
from bench.common import (  # noqa: E402
    Stack,
    Timer,
    arguments,
    finish,
    machine,
    ratios,
    say,
    show,
    start,
    summary,
)

PAD = b"x" * 120  # a small work item: send time (8 bytes) plus padding
FETCH_TIMEOUT = 1.0  # the Worker's default; the baseline uses the same
LATENCY_GAP_S = 0.002  # pause between latency samples so the queue is empty
LATENCY_WARMUP = 20
DONE_TIMEOUT_S = 120.0
WORKER_KEYS = ("1_worker", "2_workers")  # the figures of 1 and 2 consumers

# The real work-queue stream and a real work consumer, renamed per measurement.
_WORK_STREAM = next(s for s in subjects.STREAMS if s.name == subjects.STREAM_WORK)
_WORK_CONSUMER = subjects.CONSUMERS[subjects.CONSUMER_INGEST]

Handler = Callable[[Msg], Awaitable[None]]


class Counter:
    """Counts handled messages and when the first and the last were handled."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        """Record one handled message."""
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        if self.count >= self.expected and not self.done.is_set():
            self.last = now
            self.done.set()

    def rate(self) -> float:
        """Messages per second between the first and the expected-th message."""
        span = self.last - self.first
        return (self.expected - 1) / span if span > 0 else float("nan")


class Bench:
    """One nats-server and the measurements run against it."""

    def __init__(self, stack: Stack, nc: NATS) -> None:
        self.url = stack.url
        self.settings = stack.settings
        self.serial = 0
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    async def fresh(self, label: str) -> tuple[ConsumerSpec, str]:
        """A new work-queue stream and consumer spec for one measurement, and its subject."""
        self.serial += 1
        tag = f"{label}{self.serial}"
        subject = f"bench.{tag}.item"
        stream = dataclasses.replace(
            _WORK_STREAM, name=f"BENCH_{tag.upper()}", subjects=(f"bench.{tag}.>",)
        )
        await self.js.add_stream(bus.stream_config(stream))
        spec = dataclasses.replace(
            _WORK_CONSUMER, durable=f"bench-{tag}", stream=stream.name, filter_subjects=(subject,)
        )
        return spec, subject

    async def drop(self, spec: ConsumerSpec) -> None:
        """Delete a measurement's stream."""
        await self.js.delete_stream(spec.stream)

    async def wait_empty(self, stream: str, timeout: float = 5.0) -> int:
        """Wait until a work-queue stream holds no message (all acked); return what is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = (await self.js.stream_info(stream)).state.messages
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.01)

    async def prepublish(self, subject: str, count: int, framework: bool) -> float:
        """Publish ``count`` items (framework publish or bare js.publish); return msgs/s."""
        js = self.js
        chunk = 256
        timer = Timer()
        for lo in range(0, count, chunk):
            hi = min(lo + chunk, count)
            if framework:
                aws = [
                    bus.publish(js, subject, PAD, msg_id=f"{subject}:{i}") for i in range(lo, hi)
                ]
            else:
                aws = [js.publish(subject, PAD) for _ in range(lo, hi)]
            await asyncio.gather(*aws)
        return count / timer.seconds

    # --- consumers ---------------------------------------------------------------------------

    async def start_consumers(
        self, spec: ConsumerSpec, handler: Handler, n: int, batch: int, framework: bool
    ) -> tuple[list[NATS], list[asyncio.Task[None]], asyncio.Event, list[Metrics]]:
        """Start ``n`` consumers on the durable, each on its own connection."""
        stop = asyncio.Event()
        conns: list[NATS] = []
        tasks: list[asyncio.Task[None]] = []
        metrics: list[Metrics] = []
        if framework:
            await bus.ensure_consumer(self.js, spec)
        else:
            await self.js.add_consumer(spec.stream, bus.consumer_config(spec))
        for i in range(n):
            if framework:
                nc = await bus.connect(self.settings, f"bench-worker-{i}")
                m = Metrics("bench")
                worker = bus.Worker(
                    nc.jetstream(),
                    spec,
                    handler,
                    metrics=m,
                    batch=batch,
                    fetch_timeout=FETCH_TIMEOUT,
                )
                tasks.append(asyncio.create_task(worker.run(stop)))
                metrics.append(m)
            else:
                nc = await nats.connect(self.url, name=f"bench-baseline-{i}")
                sub = await nc.jetstream().pull_subscribe_bind(spec.durable, stream=spec.stream)
                tasks.append(asyncio.create_task(baseline_loop(sub, handler, batch, stop)))
            conns.append(nc)
        return conns, tasks, stop, metrics

    async def stop_consumers(
        self, conns: list[NATS], tasks: list[asyncio.Task[None]], stop: asyncio.Event
    ) -> None:
        """Set the stop event, wait for the loops to finish, close their connections."""
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=FETCH_TIMEOUT + 3)
        for task in pending:
            say(f"  consumer loop did not stop within {FETCH_TIMEOUT + 3}s; cancelling")
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                say(f"  consumer loop failed: {task.exception()!r}")
        for nc in conns:
            await nc.close()

    # --- measurements ------------------------------------------------------------------------

    async def latency(self, samples: int, framework: bool) -> dict[str, float]:
        """Publish-to-handler latency (ms) with one consumer, batch=1, one message at a time."""
        spec, subject = await self.fresh("lat" + ("f" if framework else "b"))
        got = asyncio.Event()
        lat_ns: list[int] = []

        async def handler(msg: Msg) -> None:
            lat_ns.append(time.perf_counter_ns() - int.from_bytes(msg.data[:8], "big"))
            got.set()

        conns, tasks, stop, _ = await self.start_consumers(spec, handler, 1, 1, framework)
        try:
            for i in range(samples + LATENCY_WARMUP):
                got.clear()
                payload = time.perf_counter_ns().to_bytes(8, "big") + PAD
                if framework:
                    await bus.publish(self.js, subject, payload, msg_id=f"{subject}:{i}")
                else:
                    await self.js.publish(subject, payload)
                await asyncio.wait_for(got.wait(), 10)
                await asyncio.sleep(LATENCY_GAP_S)
        finally:
            await self.stop_consumers(conns, tasks, stop)
        left = await self.wait_empty(spec.stream)
        await self.drop(spec)
        if left:
            say(f"  warning: {left} latency messages not acked")
        ms = [v / 1e6 for v in lat_ns[LATENCY_WARMUP:]]
        return summary(ms, "p50", "p99", "mean", "max", digits=4)

    async def throughput(
        self, messages: int, workers: int, batch: int, framework: bool
    ) -> tuple[float, float]:
        """Handled-and-acked msgs/s over pre-published items; also the pre-publish rate."""
        side = "f" if framework else "b"
        spec, subject = await self.fresh(f"tp{side}{workers}w{batch}b")
        pub_rate = await self.prepublish(subject, messages, framework)
        queued = (await self.js.stream_info(spec.stream)).state.messages
        if queued != messages:
            say(f"  warning: stream holds {queued} of {messages} published items")
        counter = Counter(queued)

        async def handler(msg: Msg) -> None:
            counter.hit()

        conns, tasks, stop, metrics = await self.start_consumers(
            spec, handler, workers, batch, framework
        )
        try:
            await asyncio.wait_for(counter.done.wait(), DONE_TIMEOUT_S)
        finally:
            await self.stop_consumers(conns, tasks, stop)
        left = await self.wait_empty(spec.stream)
        if left:
            say(f"  warning: {left} messages left unacked in {spec.stream}")
        if counter.count != queued:
            say(f"  warning: handled {counter.count} deliveries for {queued} items")
        if metrics:
            handled = sum(m.total(m.handled) for m in metrics)
            if handled != counter.count:
                say(f"  warning: metrics count {handled} handled, handler saw {counter.count}")
        await self.drop(spec)
        return counter.rate(), pub_rate


async def baseline_loop(sub: Any, handler: Handler, batch: int, stop: asyncio.Event) -> None:
    """The bare nats-py pull loop: fetch, handle, ack, until ``stop`` is set."""
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=FETCH_TIMEOUT)
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from fetch(batch>1)
                continue
            for msg in msgs:
                await handler(msg)
                await msg.ack()
    finally:
        await sub.unsubscribe()


def throughput_key(batch: int) -> tuple[str, str]:
    """The figures' key of a fetch batch size, and the suffix of its ratios' names."""
    suffix = "" if batch == 1 else f"_batch{batch}"
    return f"throughput_msgs_s{suffix}", suffix


def compared(side: dict[str, Any], batches: list[int]) -> dict[str, float]:
    """One side's figures that are compared, by the name of their ratio."""
    figures = {f"latency_{p}": side["latency_ms"][p] for p in ("p50", "p99")}
    for batch in batches:
        key, suffix = throughput_key(batch)
        figures.update({f"throughput_{w}{suffix}": side[key][w] for w in WORKER_KEYS})
    figures["prepublish"] = side["prepublish_msgs_s"]
    return figures


async def run(messages: int, samples: int, batches: list[int], repeats: int) -> dict[str, Any]:
    """Start a server, run every measurement for both sides, return the figures."""
    results: dict[str, dict[str, Any]] = {"framework": {}, "baseline": {}}
    with Stack("digits-bench-bus-") as stack:
        stack.start_server()
        async with stack.client("bench-admin") as nc:
            bench = Bench(stack, nc)
            for name, fw in (("framework", True), ("baseline", False)):
                lat = await bench.latency(samples, fw)
                results[name]["latency_ms"] = lat
                say(show(f"{name} latency", lat) + f"  ({samples} samples)")
            pubs: dict[str, list[float]] = {"framework": [], "baseline": []}
            for batch in batches:
                key, _ = throughput_key(batch)
                for workers, wkey in enumerate(WORKER_KEYS, 1):
                    rates: dict[str, list[float]] = {"framework": [], "baseline": []}
                    for _ in range(repeats):
                        # Interleave the two sides so drift affects both alike.
                        for name, fw in (("framework", True), ("baseline", False)):
                            rate, pub = await bench.throughput(messages, workers, batch, fw)
                            rates[name].append(rate)
                            pubs[name].append(pub)
                            say(
                                f"{name:9s} batch={batch:<2d} {workers} worker(s): "
                                f"{rate:8.1f} msgs/s handled+acked  "
                                f"(pre-publish {pub:8.1f} msgs/s)"
                            )
                    for name, values in rates.items():
                        results[name].setdefault(key, {})[wkey] = round(
                            statistics.median(values), 1
                        )
            for name, values in pubs.items():
                results[name]["prepublish_msgs_s"] = round(statistics.median(values), 1)
    fw, bl = results["framework"], results["baseline"]
    return {
        "bench": "bus",
        "messages": messages,
        "latency_samples": samples,
        "batches": batches,
        "repeats": repeats,
        "framework": fw,
        "baseline": bl,
        "ratio": ratios(compared(fw, batches), compared(bl, batches)),
        "machine": machine("nats-py", cpu_model=False, nats_server=stack.server_version),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the JSON line."""
    parser = arguments(__doc__, "fewer messages, under ~30 s")
    parser.add_argument("--messages", type=int, default=None, help="items per throughput run")
    parser.add_argument("--samples", type=int, default=None, help="latency samples per side")
    parser.add_argument("--no-batch16", action="store_true", help="only batch=1")
    parser.add_argument(
        "--repeats", type=int, default=None, help="throughput runs per figure (median kept)"
    )
    args = parser.parse_args(argv)
    messages = args.messages or (2000 if args.quick else 5000)
    samples = args.samples or (200 if args.quick else 500)
    repeats = args.repeats or (1 if args.quick else 3)
    if messages < 2 or samples < 2 or repeats < 1:
        parser.error("--messages and --samples must be at least 2, --repeats at least 1")
    batches = [1] if args.no_batch16 else [1, 16]
    timer = start()
    return finish(asyncio.run(run(messages, samples, batches, repeats)), timer)


if __name__ == "__main__":
    sys.exit(main())
