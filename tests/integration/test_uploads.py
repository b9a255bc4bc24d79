"""Uploads end with their jobs: job deletion, the TTL sweep (in-process, as a service, by CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from aiobotocore.session import get_session

from digits import bus, events, jobs, subjects, uploads
from digits.jobs import Job, JobError
from digits.store import FileStore, S3Store, Store
from tests.integration.test_jobs import job_store
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TTL = 3600.0
LATER = time.time() + 2 * TTL  # "now" for a sweep that finds every upload expired


def upload_key(owner: str = "alice") -> str:
    """A key as the gateway names an uploaded archive."""
    return f"uploads/pretrained/{owner}/{uuid.uuid4().hex}.tar.gz"


def model(**kw) -> Job:
    """A model job record with a fresh id."""
    return Job(id=jobs.new_job_id(), type="model", name="tuned", **kw)


@pytest.fixture(params=["file", "s3"])
async def store(request, tmp_path) -> AsyncIterator[Store]:
    """The real FileStore, or the real S3Store on a fresh bucket of moto's server."""
    if request.param == "file":
        yield FileStore(tmp_path / "store")
        return
    url = request.getfixturevalue("moto_url")
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    name = f"digits-{uuid.uuid4().hex[:12]}"
    session = get_session()
    async with session.create_client("s3", "us-east-1", endpoint_url=url, **creds) as s3:
        await s3.create_bucket(Bucket=name)
    s3_store = S3Store(name, "store", endpoint_url=url, access_key="testing", secret_key="testing")
    try:
        yield s3_store
    finally:
        await s3_store.close()


async def test_the_sweep_removes_only_expired_uploads_no_job_refers_to(nc, store, caplog):
    jobs_ = await job_store(nc)
    orphan, used, legacy_used, legacy_orphan = (upload_key() for _ in range(4))
    legacy_uuid = f"uploads/pretrained/{uuid.uuid4()}.tar.gz"  # the older layout, no owner
    for key in (orphan, used, legacy_used, legacy_orphan, legacy_uuid):
        await store.put(key, b"archive")
    await store.put("models/m1/info.json", b"{}")  # not an upload: never swept
    await jobs_.create(model(uploads=[used], status=jobs.DONE))
    # A record written before Job.uploads existed names its archive only in the form.
    await jobs_.create(model(form={"method": "pretrained", "pretrained_archive": legacy_used}))

    fresh = await uploads.sweep(store, jobs_, TTL)
    assert fresh.removed == [], "younger than the TTL: all kept"
    assert sorted(fresh.fresh) == sorted([orphan, used, legacy_used, legacy_orphan, legacy_uuid])

    caplog.set_level("INFO", logger="digits.uploads")
    report = await uploads.sweep(store, jobs_, TTL, now=LATER)
    assert sorted(report.removed) == sorted([orphan, legacy_orphan, legacy_uuid])
    assert sorted(report.referenced) == sorted([used, legacy_used])
    assert report.failed == [] and report.fresh == []
    assert json.loads(json.dumps(report.to_dict()))["removed"] == report.removed
    assert sorted(await store.list()) == sorted(["models/m1/info.json", used, legacy_used])
    for key in report.removed:
        assert f"upload sweep: removed {key}" in caplog.text
    assert "upload sweep: 3 removed, 2 kept (referenced)" in caplog.text

    again = await uploads.sweep(store, jobs_, TTL, now=LATER)
    assert again.removed == [] and sorted(again.referenced) == sorted([used, legacy_used])


async def test_a_dry_run_names_what_would_go_and_removes_nothing(nc, store):
    jobs_ = await job_store(nc)
    key = upload_key()
    await store.put(key, b"archive")
    report = await uploads.sweep(store, jobs_, TTL, now=LATER, dry_run=True)
    assert report.removed == [key] and report.to_dict()["dry_run"] is True
    assert await store.exists(key)


async def test_sweeps_at_once_and_missing_keys_are_no_trouble(nc, store):
    jobs_ = await job_store(nc)
    keys = [upload_key() for _ in range(6)]
    for key in keys:
        await store.put(key, b"archive")
    # A job naming an upload that is not (or no longer) in the store.
    await jobs_.create(model(uploads=[upload_key()]))
    reports = await asyncio.gather(*(uploads.sweep(store, jobs_, TTL, now=LATER) for _ in range(3)))
    assert all(r.failed == [] for r in reports)
    assert {k for r in reports for k in r.removed} == set(keys)
    assert await store.list("uploads/") == []


async def test_an_unreadable_job_record_stops_the_sweep_before_it_removes_anything(nc, tmp_path):
    store = FileStore(tmp_path / "store")
    jobs_ = await job_store(nc)
    key = upload_key()
    await store.put(key, b"archive")
    kv = await nc.jetstream().key_value(subjects.KV_JOBS)
    await kv.put("20260101-000000-bad0", msgpack.packb({"id": 7, "type": ["not a job"]}))
    with pytest.raises(JobError, match="20260101-000000-bad0 cannot be decoded"):
        await uploads.sweep(store, jobs_, TTL, now=LATER)
    assert await store.exists(key)


async def test_a_bad_ttl_is_named():
    with pytest.raises(ValueError, match="upload TTL 0 must be a positive"):
        await uploads.sweep(FileStore("/nonexistent"), None, 0)  # type: ignore[arg-type]


async def test_the_scheduler_records_the_upload_a_model_form_names(nc):
    from train_service.scheduler import Scheduler

    js = nc.jetstream()
    jobs_ = await job_store(nc)
    await bus.ensure_consumer(js, subjects.CONSUMERS[subjects.CONSUMER_MODEL_COMMANDS])
    key = upload_key()
    form = {"method": "pretrained", "pretrained_archive": key, "learning_rate": "0.1,0.01"}
    command = events.ModelCreate(name="tuned", dataset_id="20260101-000000-none", form=form)
    await bus.publish_event(js, command)
    spec = subjects.CONSUMERS[subjects.CONSUMER_MODEL_COMMANDS]
    sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
    [msg] = await sub.fetch(1, timeout=5)
    await Scheduler(js, jobs_).on_create(msg)
    await msg.ack()
    made = await jobs_.list()
    assert len(made) == 2, "a learning-rate sweep: two jobs, one upload"
    assert [j.uploads for j in made] == [[key], [key]]


# ---------------------------------------------------------------- with the ingest service


@pytest.fixture
def ingest(stack):
    """A real ingest service on the test's file store, sweeping every second."""
    return stack("ingest_service", DIGITS_UPLOAD_SWEEP_S="1", DIGITS_UPLOAD_TTL_S="60")


def put_upload(root: Path, key: str, age_s: float = 0.0) -> Path:
    """A file under the store root, as the gateway leaves one, made ``age_s`` seconds old."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"archive")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


async def delete_job(nc, job_id: str) -> None:
    """Publish job.delete as plain msgpack, as any system would."""
    payload = msgpack.packb({"type": "job.delete", "job_id": job_id})
    await nc.jetstream().publish(subjects.CMD_JOB_DELETE, payload)


async def test_deleting_the_last_job_that_uses_an_upload_removes_it(nc, tmp_path, stack):
    stack("ingest_service", DIGITS_UPLOAD_SWEEP_S="0")  # only the deletion removes it here
    jobs_ = await job_store(nc)
    key = upload_key()
    archive = put_upload(tmp_path / "store", key)
    first = await jobs_.create(model(uploads=[key], status=jobs.DONE))
    second = await jobs_.create(model(uploads=[key], status=jobs.RUNNING))
    files = put_upload(tmp_path / "store", f"models/{first.id}/info.json")
    await delete_job(nc, first.id)
    await wait_for(lambda: not files.exists(), timeout=20)
    assert archive.exists(), "the second job still uses it"
    await delete_job(nc, second.id)
    await wait_for(lambda: not archive.exists(), timeout=20)
    with pytest.raises(jobs.JobNotFound):
        await jobs_.get(second.id)


async def test_the_ingest_service_sweeps_expired_unreferenced_uploads(nc, tmp_path, ingest):
    jobs_ = await job_store(nc)
    root = tmp_path / "store"
    orphan, used, fresh = upload_key(), upload_key(), upload_key()
    paths = {key: put_upload(root, key, age_s=7200) for key in (orphan, used)}
    paths[fresh] = put_upload(root, fresh)
    for status in (jobs.WAITING, jobs.RUNNING, jobs.DONE):
        await jobs_.create(model(uploads=[used], status=status))
    await wait_for(lambda: not paths[orphan].exists(), timeout=30)
    log = ingest.log()
    assert f"upload sweep: removed {orphan}" in log and "1 removed" in log
    await asyncio.sleep(2)  # sweeps after the first one
    assert paths[used].exists() and paths[fresh].exists()
    assert ingest.healthy()


def test_digits_sweep_prints_what_it_removed(nats_server, tmp_path):
    root = tmp_path / "store"
    orphan, fresh = upload_key(), upload_key()
    put_upload(root, orphan, age_s=7200)
    put_upload(root, fresh)
    env = {
        **os.environ,
        "DIGITS_NATS_URL": nats_server.url,
        "DIGITS_STORE_URL": root.as_uri(),
        "DIGITS_UPLOAD_TTL_S": "3600",
    }
    subprocess.run([sys.executable, "-m", "digits.cli", "init"], env=env, check=True)

    def sweep(*args: str) -> tuple[int, dict, str]:
        done = subprocess.run(
            [sys.executable, "-m", "digits.cli", "sweep", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, json.loads(done.stdout or "{}"), done.stderr

    code, dry, log = sweep("--dry-run")
    assert code == 0, log
    assert dry["removed"] == [orphan] and dry["dry_run"] is True
    assert (root / orphan).exists()
    code, report, log = sweep()
    assert code == 0 and report["removed"] == [orphan] and report["kept_fresh"] == [fresh]
    assert f"upload sweep: removed {orphan}" in log
    assert not (root / orphan).exists() and (root / fresh).exists()
    code, shorter, _ = sweep("--ttl", "0.001")
    assert code == 0 and shorter["removed"] == [fresh]
    code, _, error = sweep("--ttl", "-5")
    assert code == 2 and "--ttl -5.0 must be a positive number of seconds" in error
