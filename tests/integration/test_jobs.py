"""Job records in KV: CAS updates, status history, events, dedup of retried publishes."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import nats.errors
import pytest

from digits import bus, events, jobs, subjects
from digits.jobs import Job, JobError, JobStore


async def job_store(nc) -> JobStore:
    """A JobStore on its own connection's JetStream context."""
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.ensure_kv(js)
    return JobStore(js, kv[subjects.KV_JOBS])


async def job_events(js, job_id: str) -> list[events.Event]:
    """Every event stored for one job, in order."""
    sub = await js.subscribe(subjects.evt_job_all(job_id), ordered_consumer=True)
    found = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            found.append(events.decode(msg.data))
    except TimeoutError:
        return found
    finally:
        await sub.unsubscribe()


def new_job(name: str = "mnist", type: str = "dataset", **kw) -> Job:
    """A job record with a fresh id."""
    return Job(id=jobs.new_job_id(), type=type, name=name, extension="image-classification", **kw)


async def test_two_concurrent_updates_through_cas_lose_nothing(nats_server):
    first = await nats.connect(nats_server.url)
    second = await nats.connect(nats_server.url)
    try:
        store_a, store_b = await job_store(first), await job_store(second)
        job = await store_a.create(new_job())

        def bump(key: str):
            def mutate(j: Job) -> Job:
                counts = {
                    **j.extra.get("counts", {}),
                    key: j.extra.get("counts", {}).get(key, 0) + 1,
                }
                return msgspec.structs.replace(j, extra={**j.extra, "counts": counts})

            return mutate

        updates = [store_a.update(job.id, bump("a")) for _ in range(25)]
        updates += [store_b.update(job.id, bump("b")) for _ in range(25)]
        await asyncio.gather(*updates)
        final = await store_a.get(job.id)
        assert final.extra["counts"] == {"a": 25, "b": 25}
    finally:
        await first.close()
        await second.close()


async def test_status_history_and_an_event_per_change(nc):
    store = await job_store(nc)
    job = await store.create(new_job())
    await store.set_status(job.id, jobs.RUNNING)
    await store.update_stage(job.id, "Create DB (train)", status=jobs.RUNNING, total=10)
    await store.update_stage(job.id, "Create DB (train)", done=10, progress=1.0, status=jobs.DONE)
    await store.set_status(job.id, jobs.DONE)
    await store.set_status(job.id, jobs.RUNNING)  # a finished job stays finished
    final = await store.get(job.id)
    assert [h.status for h in final.history] == ["I", "R", "D"]
    assert final.history[0].at <= final.history[1].at <= final.history[2].at
    stage = final.stage("Create DB (train)")
    assert stage is not None and stage.status == "D" and stage.done == 10
    assert stage.started_at is not None and stage.finished_at >= stage.started_at
    found = await job_events(store.js, job.id)
    statuses = [(e.previous, e.status) for e in found if isinstance(e, events.JobStatusChanged)]
    assert statuses == [(None, "I"), ("I", "R"), ("R", "D")]
    stages = [(e.status, e.done) for e in found if isinstance(e, events.StageProgress)]
    assert stages == [("R", 0), ("D", 10)]


async def test_delete_is_refused_while_a_model_uses_the_dataset(nc):
    store = await job_store(nc)
    dataset = await store.create(new_job("digits"))
    model = await store.create(new_job("lenet", type="model", depends_on=[dataset.id]))
    with pytest.raises(JobError, match=r"cannot delete dataset 'digits'.*used by lenet"):
        await store.delete(dataset.id)
    await store.delete(model.id)
    await store.delete(dataset.id)
    with pytest.raises(jobs.JobNotFound):
        await store.get(dataset.id)


async def test_create_refuses_a_duplicate_id_and_a_bad_type(nc):
    store = await job_store(nc)
    job = await store.create(new_job())
    with pytest.raises(JobError, match="already exists"):
        await store.create(job)
    with pytest.raises(JobError, match="'pipeline' is not one of dataset, model"):
        await store.create(new_job(type="pipeline"))


async def test_list_names_each_job_once_while_jobs_change(nats_server, nc):
    store = await job_store(nc)
    created = [await store.create(new_job(f"job{i}")) for i in range(40)]
    writer = await nats.connect(nats_server.url)
    other = await job_store(writer)
    stop = asyncio.Event()

    async def churn() -> None:
        n = 0
        while not stop.is_set():
            job = created[n % len(created)]
            await other.update(job.id, lambda j, n=n: msgspec.structs.replace(j, extra={"n": n}))
            n += 1

    task = asyncio.create_task(churn())
    try:
        for _ in range(200):
            listed = [j.id for j in await store.list()]
            assert len(listed) == len(set(listed)) == len(created)
    finally:
        stop.set()
        await task
        await writer.close()


async def test_publish_retried_after_a_timeout_with_the_same_id_is_stored_once(nc):
    js = nc.jetstream()
    await bus.ensure_streams(js)
    subject = subjects.evt_job("20261127-000000-abcd", "status")
    with pytest.raises(nats.errors.TimeoutError):
        # The ack cannot arrive in a microsecond: the publish times out after it was sent.
        await js.publish(subject, b"payload", timeout=1e-6, headers={bus.MSG_ID: "retry-test"})
    ack = await bus.publish(js, subject, b"payload", msg_id="retry-test")
    assert ack.duplicate
    # bus.publish's own retry path: first attempt times out, the retry is a duplicate.
    ack = await bus.publish(js, subject, b"other", msg_id="retry-2", first_timeout=1e-6)
    assert ack.duplicate
    info = await js.stream_info(subjects.STREAM_EVT)
    assert info.state.messages == 2
