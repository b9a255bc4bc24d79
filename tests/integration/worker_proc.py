"""A worker process for crash tests: ``python -m tests.integration.worker_proc URL DURABLE MODE``.

MODE ``crash-first`` SIGKILLs itself on a message's first delivery, ``crash-always`` on every
delivery, ``ok`` handles everything. Handled messages are recorded in the KV bucket
``test-results`` as ``pid:deliveries`` under the payload's text.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import nats

from digits import bus, subjects

RESULTS = "test-results"


def spec(durable: str, ack_wait_s: float = 1.0, max_deliver: int = 5) -> subjects.ConsumerSpec:
    """The consumer the crash tests share: one per test, on its own work subject."""
    return subjects.ConsumerSpec(
        durable,
        subjects.STREAM_WORK,
        (f"{subjects.WORK}.test.{durable}",),
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
    )


async def run(url: str, durable: str, mode: str, max_deliver: int) -> None:
    """Handle messages until SIGTERM."""
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    js = nc.jetstream()
    kv = await js.key_value(RESULTS)

    async def handler(msg) -> None:
        deliveries = msg.metadata.num_delivered
        if mode == "crash-always" or (mode == "crash-first" and deliveries == 1):
            os.kill(os.getpid(), signal.SIGKILL)
        await kv.put(msg.data.decode(), f"{os.getpid()}:{deliveries}".encode())

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await bus.Worker(js, spec(durable, max_deliver=max_deliver), handler).run(stop)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
