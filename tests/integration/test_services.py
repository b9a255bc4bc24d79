"""The services as processes: foreign commands, health, metrics, SIGTERM, NATS restarts."""

from __future__ import annotations

import asyncio

import msgpack
import nats
import pytest

from digits import bus, jobs, subjects
from digits.natsserver import NatsServer
from tests.integration.test_jobs import job_events, job_store, new_job
from tests.services import ServiceProc
from tests.waiting import wait_for


@pytest.fixture
def services(tmp_path):
    """Start services by module name; all are stopped (and must exit 0) at the end."""
    started: list[ServiceProc] = []

    def start(module: str, url: str, **env: str) -> ServiceProc:
        proc = ServiceProc(module, url, tmp_path, **env)
        started.append(proc)
        return proc.wait_healthy()

    yield start
    for proc in started:
        assert proc.stop() == 0, proc.log()


async def status_of(store, job_id: str) -> str:
    """A job's status code."""
    return (await store.get(job_id)).status


async def test_plain_msgpack_command_from_a_foreign_client_is_acted_on(nats_server, nc, services):
    ingest = await asyncio.to_thread(services, "ingest_service", nats_server.url)
    store = await job_store(nc)
    job = await store.create(new_job("cats-vs-dogs"))
    await store.set_status(job.id, jobs.RUNNING)
    # A system that knows nothing of this code base: plain nats-py and msgpack.packb.
    foreign = await nats.connect(nats_server.url)
    try:
        foreign_js = foreign.jetstream()
        await foreign_js.publish(
            "digits.v1.cmd.job.abort", msgpack.packb({"type": "job.abort", "job_id": job.id})
        )
        await foreign_js.publish("digits.v1.cmd.job.abort", msgpack.packb([1, 2, 3]))
        await foreign_js.publish(
            "digits.v1.cmd.job.edit",
            msgpack.packb({"type": "job.edit", "job_id": job.id, "notes": "stopped early"}),
        )
    finally:
        await foreign.close()

    async def edited() -> bool:
        return (await store.get(job.id)).notes == "stopped early"

    await wait_for(edited, timeout=20)
    final = await store.get(job.id)
    assert final.status == jobs.ABORTED
    assert final.history[-1].message == "aborted by request"
    found = await job_events(store.js, job.id)
    assert any(getattr(e, "status", None) == "A" for e in found)
    status, body = ingest.get("/metrics")
    assert status == 200
    text = body.decode()
    assert 'digits_messages_handled_total{consumer="job-commands",service="ingest"} 2.0' in text
    assert (
        'digits_messages_dead_lettered_total{consumer="job-commands",service="ingest"} 1.0' in text
    )


async def test_abort_of_a_finished_job_is_rejected_with_a_reason(nats_server, nc, services):
    await asyncio.to_thread(services, "ingest_service", nats_server.url)
    store = await job_store(nc)
    job = await store.create(new_job())
    await store.set_status(job.id, jobs.DONE)
    sub = await nc.subscribe(subjects.evt_job(job.id, "rejected"))
    await nc.jetstream().publish(
        subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": job.id})
    )
    msg = await sub.next_msg(timeout=20)
    rejected = msgpack.unpackb(msg.data)
    assert rejected["type"] == "command.rejected"
    assert rejected["reason"] == f"job {job.id} is already Done"
    assert await status_of(store, job.id) == jobs.DONE


async def test_view_service_answers_plain_msgpack_requests(nats_server, nc, services):
    await asyncio.to_thread(services, "view_service", nats_server.url)
    request = {"job_id": "20260101-000000-dead", "image": b"\x89PNG"}
    reply = await nc.request(subjects.RPC_INFER_CLASSIFY, msgpack.packb(request), timeout=10)
    assert msgpack.unpackb(reply.data) == {
        "ok": False,
        "error": "no job with id '20260101-000000-dead'",
    }
    reply = await nc.request(subjects.RPC_INFER_CLASSIFY, b"\xc1", timeout=10)
    assert msgpack.unpackb(reply.data)["error"].startswith("malformed ClassifyOne request")
    reply = await nc.request(subjects.RPC_INFER_MANY, msgpack.packb({"job_id": "x"}), timeout=10)
    assert msgpack.unpackb(reply.data)["ok"] is False


async def test_services_report_health_and_stop_cleanly_on_sigterm(nats_server, tmp_path):
    for module in ("ingest_service", "train_service", "view_service"):
        proc = await asyncio.to_thread(ServiceProc(module, nats_server.url, tmp_path).wait_healthy)
        status, body = proc.get("/metrics")
        assert status == 200 and b"digits_messages_in_flight" in body
        assert await asyncio.to_thread(proc.stop) == 0, proc.log()


async def test_services_survive_a_nats_server_restart_without_losing_work(
    nats_server, services, tmp_path
):
    await asyncio.to_thread(services, "ingest_service", nats_server.url)
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        store = await job_store(nc)
        created = [await store.create(new_job(f"set-{i}")) for i in range(20)]
        js = nc.jetstream()
        for job in created[:10]:
            await js.publish(
                subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": job.id})
            )
        nats_server.kill()  # a crash, not a clean shutdown
        restarted = NatsServer(
            nats_server.store_dir, port=nats_server.port, monitor_port=nats_server.monitor_port
        )
        nats_server.proc = restarted.start().proc
        for job in created[10:]:
            # The server may still be recovering its streams: bus.publish retries, same id.
            payload = msgpack.packb({"type": "job.abort", "job_id": job.id})
            await bus.publish(js, subjects.CMD_JOB_ABORT, payload, msg_id=job.id, attempts=30)

        async def all_aborted() -> bool:
            return all([await status_of(store, j.id) == jobs.ABORTED for j in created])

        await wait_for(all_aborted, timeout=60, interval=0.5)
        for job in created:
            history = [h.status for h in (await store.get(job.id)).history]
            assert history == ["I", "A"], f"{job.id} processed twice: {history}"
    finally:
        await nc.close()
