"""Two gateway replicas on one nats-server share the login limit and the just-submitted jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask

from digits import subjects
from gateway.accounts import LIMITER_BUS_TIMEOUT_S, SharedLoginLimiter, login_key
from gateway.context import bus_of, limiter_of
from tests.gateway.conftest import ADMIN, ADMIN_PASSWORD, Browser, add_job, basic, make_app
from tests.gateway.test_api import FOLDER_FORM, MODEL_FORM
from tests.gateway.test_pages_datasets import FORM as PAGE_DATASET_FORM
from tests.gateway.test_pages_models import VALID as PAGE_MODEL_FORM
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def replicas(nats_server, tmp_path, monkeypatch) -> Iterator[tuple[Flask, Flask]]:
    """Two gateway apps, each with its own bus client, on the same nats-server."""
    monkeypatch.setenv("DIGITS_ADMIN_PASSWORD", ADMIN_PASSWORD)
    apps: list[Flask] = []
    try:
        for name in ("a", "b"):
            apps.append(make_app(nats_server, tmp_path / f"gateway-{name}", LOGIN_LIMIT=4))
        assert bus_of(apps[0]) is not bus_of(apps[1])
        yield apps[0], apps[1]
    finally:
        for app in apps:
            bus_of(app).close()


def test_failed_logins_over_both_replicas_hit_one_limit(replicas):
    a, b = (app.test_client() for app in replicas)
    wrong = basic("admin", "wrong")
    for client in (a, b, a, b):  # two failures on each: half the limit per replica
        assert client.get("/index.json", headers=wrong).status_code == 401
    for client in (a, b):
        limited = client.get("/index.json", headers=ADMIN)
        assert limited.status_code == 429, "the right password waits too, on either replica"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # The login form on a replica counts the same key.
    page = Browser(replicas[1].test_client())
    assert page.login().status_code == 429
    # Another address is a key of its own; the username and address are stored only hashed.
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert b.get("/index.json", headers=ADMIN, environ_base=other).status_code == 200
    limiter = limiter_of(replicas[0])
    assert isinstance(limiter, SharedLoginLimiter)
    key = login_key("admin", "127.0.0.1")
    assert "admin" not in key and "127.0.0.1" not in key
    entry = bus_of(replicas[0]).call(limiter.kv.get(key))
    assert b"admin" not in entry.value and b"wrong" not in entry.value


def test_failures_counted_at_once_on_both_replicas_are_not_lost(replicas):
    limiters = [SharedLoginLimiter.open(bus_of(app), 16, 60.0) for app in replicas]
    start = threading.Barrier(16)

    def fail(limiter: SharedLoginLimiter) -> None:
        start.wait()
        limiter.failed("mallory", "10.1.1.1")

    threads = [threading.Thread(target=fail, args=(limiters[i % 2],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    fresh = SharedLoginLimiter.open(bus_of(replicas[0]), 16, 60.0)  # nothing counted in-process
    assert fresh.blocked("mallory", "10.1.1.1") > 0, "a lost update would leave it under 16"
    assert fresh.blocked("mallory", "10.1.1.2") == 0


def test_old_failures_leave_the_window(replicas):
    limiters = [SharedLoginLimiter.open(bus_of(app), 2, 1.0) for app in replicas]
    limiters[0].failed("eve", "10.2.2.2")
    limiters[1].failed("eve", "10.2.2.2")
    assert 0 < limiters[0].blocked("eve", "10.2.2.2") <= 1.0
    time.sleep(1.1)
    assert limiters[1].blocked("eve", "10.2.2.2") == 0


def test_a_window_longer_than_the_bucket_keeps_entries_is_refused(replicas):
    ttl = subjects.KV_BUCKETS[subjects.KV_LOGINS]["ttl"]
    with pytest.raises(ValueError, match=f"LOGIN_WINDOW_S {ttl + 1!r}"):
        SharedLoginLimiter.open(bus_of(replicas[0]), 5, ttl + 1)


def test_jobs_submitted_through_one_replica_show_on_the_other(replicas):
    a, b = (app.test_client() for app in replicas)
    created = a.post("/datasets/images/classification.json", data=FOLDER_FORM, headers=ADMIN)
    assert created.status_code == 200
    job_id = created.get_json()["id"]
    # No ingest service runs: only the pending bucket knows the job.
    shown = b.get(f"/datasets/{job_id}.json", headers=ADMIN)
    assert shown.status_code == 200, shown.get_data(as_text=True)
    assert shown.get_json()["status"] == "Initialized" and shown.get_json()["name"] == "digits"
    status = b.get(f"/jobs/{job_id}/status", headers=ADMIN).get_json()
    assert status == {"id": job_id, "status": "Initialized", "type": "dataset"}
    assert b.get(f"/models/{job_id}.json", headers=ADMIN).status_code == 404, "not a model"
    assert b.get("/datasets/20990101-000000-beef.json", headers=ADMIN).status_code == 404

    dataset = add_job(bus_of(replicas[0]), type="dataset", name="digits", owner="admin")
    model = a.post(
        "/models/images/classification.json",
        data={**MODEL_FORM, "dataset": dataset.id},
        headers=ADMIN,
    )
    assert model.status_code == 200
    model_id = model.get_json()["id"]
    found = b.get(f"/models/{model_id}.json", headers=ADMIN)
    assert found.status_code == 200 and found.get_json()["status"] == "Initialized"

    # The pages too: submitted through A's forms, shown by B's.
    page_a, page_b = Browser(a), Browser(b)
    assert page_a.login().status_code == 302 and page_b.login().status_code == 302
    response = page_a.post("/datasets/images/classification", PAGE_DATASET_FORM)
    assert response.status_code == 303
    page_dataset = response.headers["Location"].rsplit("/", 1)[1]
    page = page_b.get(f"/datasets/{page_dataset}")
    assert page.status_code == 200 and "Initialized" in page.get_data(as_text=True)
    response = page_a.post(
        "/models/images/classification", {**PAGE_MODEL_FORM, "dataset": dataset.id}
    )
    assert response.status_code == 303
    page_model = response.headers["Location"].rsplit("/", 1)[1]
    page = page_b.get(f"/models/{page_model}")
    assert page.status_code == 200 and "Initialized" in page.get_data(as_text=True)


def test_without_the_bus_each_replica_goes_on_alone(replicas, nats_server, caplog):
    limiter = limiter_of(replicas[0])
    assert isinstance(limiter, SharedLoginLimiter)
    with replicas[0].app_context():
        from gateway.context import pending

        jobs = pending()
        jobs.add("20990101-000000-0001", {"id": "x", "type": "dataset", "name": "before"})
        nats_server.stop()
        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        for _ in range(4):
            assert limiter.blocked("admin", "10.3.3.3") == 0
            limiter.failed("admin", "10.3.3.3")
        assert limiter.blocked("admin", "10.3.3.3") > 0, "counted in this gateway meanwhile"
        jobs.add("20990101-000000-0002", {"id": "y", "type": "model", "name": "during"})
        assert jobs.get("20990101-000000-0002")["name"] == "during"
        assert jobs.get("20990101-000000-0001")["name"] == "before"
        assert jobs.get("20990101-000000-0003") is None
        # Each of the 11 bus calls gave up after its 2 s instead of hanging the login.
        assert time.monotonic() - started < 11 * LIMITER_BUS_TIMEOUT_S + 10
        # Back on the bus, the other replica answers again from the bucket.
        nats_server.start()
        wait_for_sync(lambda: all(bus_of(app).nc.is_connected for app in replicas), 30)
    with replicas[1].app_context():
        from gateway.context import pending

        assert pending().get("20990101-000000-0001")["name"] == "before"
    logged = caplog.text
    assert f"{subjects.KV_LOGINS} cannot be reached" in logged
    assert f"{subjects.KV_PENDING} cannot be reached" in logged
    assert "admin" not in logged and "10.3.3.3" not in logged
