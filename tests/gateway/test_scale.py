"""Ten thousand job records: every list a user sees still works, a page at a time."""

from __future__ import annotations

import asyncio
import re

import msgspec
import pytest

from digits import jobs
from digits.jobs import Job

DATASETS, MODELS, RUNNING = 9_000, 1_000, 5


def populate(bus_client) -> tuple[list[str], list[str]]:
    """Store 10,000 job records straight into the bucket, as services write them."""
    store = bus_client.jobs
    datasets = [f"20260101-{i:06d}-da7a" for i in range(DATASETS)]
    models = [f"20260102-{i:06d}-m0de" for i in range(MODELS)]
    records = [
        Job(
            id=job_id,
            type="dataset",
            name=f"dataset-{i}",
            status=jobs.RUNNING if i < RUNNING else jobs.DONE,
            created_at=1_700_000_000 + i,
        )
        for i, job_id in enumerate(datasets)
    ]
    records += [
        Job(
            id=job_id,
            type="model",
            name=f"model-{i}",
            depends_on=[datasets[i % 10]],
            status=jobs.DONE,
            created_at=1_800_000_000 + i,
            extra={"snapshots": [1.0, 2.0]},
        )
        for i, job_id in enumerate(models)
    ]

    async def put_all() -> None:
        for lo in range(0, len(records), 500):
            chunk = records[lo : lo + 500]
            await asyncio.gather(*(store.kv.put(j.id, msgspec.msgpack.encode(j)) for j in chunk))

    bus_client.call(put_all(), timeout=120)
    return datasets, models


@pytest.fixture
def many(bus_client):
    """The 10,000 records, and the cache in step with them."""
    found = populate(bus_client)
    assert len(bus_client.list_jobs()) == DATASETS + MODELS
    return found


def test_the_job_store_reads_ten_thousand_records_in_one_scan(bus_client, many):
    datasets, models = many
    store = bus_client.jobs
    keys = bus_client.call(store.keys(), timeout=60)
    assert len(keys) == DATASETS + MODELS and keys == sorted(datasets + models)
    listed = bus_client.call(store.list(), timeout=60)
    assert len(listed) == len(keys) and listed[0].id == models[-1]  # newest first
    users = bus_client.call(store.dependents(datasets[3]), timeout=60)
    assert {u.id for u in users} == {m for i, m in enumerate(models) if i % 10 == 3}
    bus_client.call(store.kv.delete(models[0]))
    assert len(bus_client.call(store.keys(), timeout=60)) == len(keys) - 1  # gone, not listed


def test_home_pages_through_ten_thousand_jobs(browser, bus_client, many):
    datasets, models = many
    first = browser.get("/").get_data(as_text=True)
    assert "Datasets (9000)" in first and "Models (1000)" in first
    assert "page 1 of 180" in first and first.count('<tr data-job="') == 50 + RUNNING
    assert f'data-job="{datasets[-1]}"' in first  # newest first
    last = browser.get("/?tab=datasets&page=180", htmx=True).get_data(as_text=True)
    assert "page 180 of 180" in last and f'data-job="{datasets[0]}"' in last
    assert 'rel="next"' not in last and 'rel="prev"' in last
    beyond = browser.get("/?page=100000", htmx=True).get_data(as_text=True)
    assert "page 180 of 180" in beyond
    for bad in ("0", "-3", "x"):
        assert "page 1 of 180" in browser.get(f"/?page={bad}", htmx=True).get_data(as_text=True)
    running = browser.get("/running", htmx=True).get_data(as_text=True)
    assert running.count('<tr data-job="') == RUNNING  # the active jobs only


def test_index_json_is_paginated_with_digits_fields(client, bus_client, many):
    from tests.gateway.conftest import ADMIN

    datasets, models = many
    page = client.get("/index.json?per_page=1000&page=2", headers=ADMIN).get_json()
    assert page["total"] == {"datasets": DATASETS, "models": MODELS}
    assert len(page["datasets"]) == 1000 and page["models"] == []
    assert page["next"] == "/index.json?page=3&per_page=1000"
    assert page["datasets"][0]["id"] == datasets[DATASETS - 1001]
    fields = {"id", "name", "status", "type", "extension", "group", "owner", "submitted"}
    assert fields <= set(page["datasets"][0])
    end = client.get("/index.json?per_page=1000&page=9", headers=ADMIN).get_json()
    assert len(end["datasets"]) == 1000 and end["next"] is None
    default = client.get("/index.json", headers=ADMIN).get_json()
    assert len(default["datasets"]) == len(default["models"]) == 100
    for bad in ("per_page=5000", "page=0", "per_page=x"):
        refused = client.get(f"/index.json?{bad}", headers=ADMIN)
        assert refused.status_code == 400 and bad.split("=")[1] in refused.get_json()["error"]


def test_the_new_model_pickers_list_the_newest(browser, bus_client, many):
    datasets, models = many
    html = browser.get("/models/images/classification/new").get_data(as_text=True)
    options = re.findall(r'<option value="(\d{8}-\d{6}-da7a)"', html)
    assert len(options) == 200 and options[0] == datasets[-1]
    assert "the 200 newest of 9000 datasets" in html
    assert "the 200 newest of 1000 models with snapshots" in html
    old = browser.get(f"/models/images/classification/new?dataset={datasets[0]}")
    chosen = old.get_data(as_text=True)
    assert re.search(rf'<option value="{datasets[0]}" selected', chosen)


def test_the_job_cache_holds_few_full_records(bus_client, many):
    from gateway.jobcache import JobCache

    datasets, _ = many
    cache = bus_client.call(JobCache(bus_client.jobs.kv, max_records=10).start())
    try:
        for job_id in datasets[-50:]:  # fifty job pages opened
            assert bus_client.call(cache.get(job_id)).id == job_id
        assert len(cache.summaries) == DATASETS + MODELS
        assert cache.held_records <= 10 + RUNNING
    finally:
        bus_client.call(cache.stop())
