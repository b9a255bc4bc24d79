"""The pull-worker loop against a real nats-server: retries, crashes, poison, dead letters."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from functools import partial

import msgpack
import nats.js.api
import nats.js.errors
import pytest

from digits import bus, subjects
from digits.metrics import Metrics
from tests.integration import worker_proc
from tests.waiting import wait_for


@pytest.fixture
async def js(nc):
    """JetStream with every stream and KV bucket ensured, plus the crash tests' results bucket."""
    context = nc.jetstream()
    await bus.ensure_streams(context)
    await bus.ensure_kv(context)
    await context.create_key_value(bucket=worker_proc.RESULTS)
    return context


@pytest.fixture
async def running() -> AsyncIterator[list]:
    """Start Worker loops in the background; stop them all at the end of the test."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []

    def start(worker: bus.Worker) -> None:
        tasks.append(asyncio.ensure_future(worker.run(stop)))

    yield start  # type: ignore[misc]
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def publish_work(js, durable: str, text: str) -> None:
    """Publish one work item on the test consumer's subject."""
    subject = worker_proc.spec(durable).filter_subjects[0]
    await bus.publish(js, subject, text.encode(), msg_id=f"{durable}:{text}")


async def dead_letters(js, durable: str) -> list:
    """Every dead letter of the test consumer, oldest first."""
    sub = await js.pull_subscribe(subjects.dlq(subjects.STREAM_WORK, durable), stream="DIGITS_DLQ")
    try:
        return await sub.fetch(100, timeout=0.5)
    except TimeoutError:  # nats' TimeoutError, or asyncio's raw one right at the deadline
        return []
    finally:
        await sub.unsubscribe()


async def test_transient_error_is_redelivered_after_its_delay(js, running, unique):
    seen: list[tuple[int, float]] = []

    async def handler(msg) -> None:
        seen.append((msg.metadata.num_delivered, time.monotonic()))
        if msg.metadata.num_delivered == 1:
            raise bus.Transient("object store busy", delay=1.5)

    running(bus.Worker(js, worker_proc.spec(unique), handler))
    await publish_work(js, unique, "job-1")
    await wait_for(lambda: len(seen) >= 2, timeout=15)
    (first, t1), (second, t2) = seen[:2]
    assert (first, second) == (1, 2)
    assert t2 - t1 >= 1.4, f"redelivered after {t2 - t1:.2f}s, before the 1.5s delay"
    await asyncio.sleep(0.5)
    assert len(seen) == 2, "acked after success: no further delivery"


async def test_poison_message_is_dead_lettered_and_the_worker_goes_on(js, running, unique):
    handled: list[str] = []
    metrics = Metrics("test")

    async def handler(msg) -> None:
        if msg.data == b"poison":
            raise ValueError("cannot parse 'poison'")
        handled.append(msg.data.decode())

    spec = worker_proc.spec(unique, max_deliver=3)
    running(bus.Worker(js, spec, handler, metrics=metrics, retry_delay=0.1))
    await publish_work(js, unique, "poison")
    await publish_work(js, unique, "good")
    await wait_for(lambda: handled == ["good"], timeout=15)
    letters: list = []

    async def dead_lettered() -> bool:
        letters[:] = await dead_letters(js, unique)
        return len(letters) == 1

    await wait_for(dead_lettered, timeout=15)
    letter = letters[0]
    assert letter.data == b"poison"
    reason = letter.headers[bus.H_REASON]
    assert reason == "gave up after 3 deliveries: ValueError: cannot parse 'poison'"
    assert letter.headers[bus.H_SUBJECT] == spec.filter_subjects[0]
    assert letter.headers[bus.H_DELIVERIES] == "3"

    # The poison message is gone from the work queue: terminated, not redelivered.
    async def settled() -> bool:
        info = await js.consumer_info(subjects.STREAM_WORK, unique)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(settled, timeout=5)
    assert b'digits_messages_dead_lettered_total{consumer="' in metrics.render()


async def test_malformed_payload_is_dead_lettered_at_once(js, running, unique):
    from digits import events

    async def handler(msg) -> None:
        events.decode(msg.data, events.Command)

    running(bus.Worker(js, worker_proc.spec(unique), handler))
    await publish_work(js, unique, "not msgpack at all")
    letters: list = []

    async def dead_lettered() -> bool:
        letters[:] = await dead_letters(js, unique)
        return bool(letters)

    await wait_for(dead_lettered, timeout=10)
    assert letters[0].headers[bus.H_DELIVERIES] == "1"
    assert letters[0].headers[bus.H_REASON].startswith("malformed payload:")


def spawn_worker(url: str, durable: str, mode: str, max_deliver: int = 5) -> subprocess.Popen:
    """Start a worker process and wait until it is fetching."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.worker_proc",
            url,
            durable,
            mode,
            str(max_deliver),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline().strip() == "ready"
    return proc


async def test_worker_killed_mid_message_is_redelivered_to_another_worker(js, nats_server, unique):
    kv = await js.key_value(worker_proc.RESULTS)
    first = spawn_worker(nats_server.url, unique, "crash-first")
    await publish_work(js, unique, "item-1")
    code = await asyncio.to_thread(first.wait, 20)
    assert code == -9, "the first worker died by SIGKILL while holding the message"
    second = spawn_worker(nats_server.url, unique, "ok")
    try:

        async def recorded() -> bool:
            try:
                return bool((await kv.get("item-1")).value)
            except nats.js.errors.KeyNotFoundError:
                return False

        await wait_for(recorded, timeout=20)
        pid, deliveries = (await kv.get("item-1")).value.decode().split(":")
        assert int(pid) == second.pid != first.pid
        assert int(deliveries) == 2
    finally:
        second.terminate()
        assert await asyncio.to_thread(second.wait, 10) == 0


async def test_message_that_crashes_every_worker_ends_in_dead_letters(
    js, nats_server, running, unique
):
    running(
        bus.Worker(
            js,
            subjects.CONSUMERS[subjects.CONSUMER_DLQ_FORWARDER],
            partial(bus.forward_max_deliveries, js),
        )
    )
    await publish_work(js, unique, "deadly")
    for _ in range(2):
        proc = spawn_worker(nats_server.url, unique, "crash-always", max_deliver=2)
        assert await asyncio.to_thread(proc.wait, 20) == -9
    survivor = spawn_worker(nats_server.url, unique, "ok", max_deliver=2)
    try:
        letters: list = []

        async def dead_lettered() -> bool:
            letters[:] = await dead_letters(js, unique)
            return bool(letters)

        await wait_for(dead_lettered, timeout=30)
        assert letters[0].data == b"deadly"
        assert "not acknowledged after 2 deliveries" in letters[0].headers[bus.H_REASON]
        kv = await js.key_value(worker_proc.RESULTS)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("deadly")
        info = await js.stream_info(subjects.STREAM_WORK)
        assert info.state.messages == 0, "the dead letter holds it; the work queue does not"
    finally:
        survivor.terminate()
        await asyncio.to_thread(survivor.wait, 10)


async def test_a_work_message_that_runs_out_of_deliveries_ends_its_job_in_error(
    nats_server, tmp_path
):
    """Before, a train job whose worker crashed max_deliver times stayed Running for ever."""
    from digits import jobs
    from digits.config import Settings
    from digits.service import ServiceRuntime

    settings = Settings.from_env(
        {"DIGITS_NATS_URL": nats_server.url, "DIGITS_DATA_DIR": str(tmp_path)}
    )
    service = ServiceRuntime("test", settings)
    await service.start()
    try:
        assert service.js is not None and service.jobs is not None
        job = jobs.Job(id=jobs.new_job_id(), type="model", name="m", status=jobs.RUNNING)
        await service.jobs.create(job)
        work = {"type": "train.work", "job_id": job.id}
        await service.js.publish(subjects.WORK_TRAIN, msgpack.packb(work))
        # A worker that takes the message and dies without an ack, once (max_deliver=1).
        sub = await service.js.pull_subscribe(
            subjects.WORK_TRAIN,
            durable="crashing",
            config=nats.js.api.ConsumerConfig(ack_wait=1, max_deliver=1),
        )
        [taken] = await sub.fetch(1, timeout=5)
        assert msgpack.unpackb(taken.data)["job_id"] == job.id

        async def ended() -> jobs.Job | None:
            found = await service.jobs.get(job.id)
            return found if found.status == jobs.ERROR else None

        failed = await wait_for(ended, timeout=30)
        assert "gave up" in failed.error and "1 deliveries" in failed.error, failed.error
    finally:
        service.stop.set()
        await service.wait()


async def test_healthz_says_starting_until_the_setup_has_run_then_a_request_finds_its_responder(
    nats_server, nc, tmp_path
):
    """Before, /healthz said ok before the setup subscribed: a request right after had no one."""
    import json
    import urllib.error
    import urllib.request

    from digits.config import Settings
    from digits.service import ServiceRuntime

    def healthz(port: int) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    settings = Settings.from_env(
        {"DIGITS_NATS_URL": nats_server.url, "DIGITS_DATA_DIR": str(tmp_path)}
    )
    service = ServiceRuntime("test", settings)
    await service.start()
    try:
        assert service.health_port is not None
        status, body = await asyncio.to_thread(healthz, service.health_port)
        assert (status, body["status"], body["nats"]) == (503, "starting", "connected")

        async def echo(msg) -> bytes:
            return msg.data

        await service.add_responder("test.readiness", "test", echo)
        await service.mark_ready()
        status, body = await asyncio.to_thread(healthz, service.health_port)
        assert (status, body["status"]) == (200, "ok")
        reply = await nc.request("test.readiness", b"ping", timeout=5)
        assert reply.data == b"ping"
    finally:
        service.stop.set()
        await service.wait()
