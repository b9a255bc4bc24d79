"""The gateway's watched job cache: a change the bucket has stored is always on the next page."""

from __future__ import annotations

import msgspec

from tests.integration.test_jobs import new_job


def test_list_jobs_reads_its_own_writes(bus_client):
    store = bus_client.jobs
    assert bus_client.list_jobs() == []
    for round_ in range(20):  # no sleeping between the write and the read
        job = bus_client.call(store.create(new_job(f"job-{round_}")))
        listed = bus_client.list_jobs()
        assert listed[0].id == job.id and len(listed) == round_ + 1
    renamed = bus_client.call(
        store.update(job.id, lambda j: msgspec.structs.replace(j, name="renamed"))
    )
    assert bus_client.list_jobs()[0].name == renamed.name == "renamed"
    bus_client.call(store.delete(job.id))
    assert job.id not in {j.id for j in bus_client.list_jobs()}
    cached = bus_client.call(bus_client.job_cache.list())  # None would mean the fallback served
    assert cached is not None and [j.id for j in cached] == [j.id for j in bus_client.list_jobs()]
