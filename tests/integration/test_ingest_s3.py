"""Datasets from S3: created by a command alone, and grown by object-created notifications."""

from __future__ import annotations

import asyncio
import io
import json

import nats.errors
import numpy as np
import pytest
from PIL import Image

from digits import dataset, events, jobs, subjects
from digits.s3 import s3_client
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_jobs import job_store
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

ACCESS, SECRET = "AKIDDIGITSTEST", "digits-test-secret-value"


def png(value: int) -> bytes:
    """A small grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


async def upload(endpoint: str, bucket: str, objects: dict[str, bytes]) -> dict[str, str]:
    """Create the bucket if needed and put the objects; their etags."""
    etags = {}
    async with s3_client(endpoint, ACCESS, SECRET) as s3:
        try:
            await s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        for key, data in objects.items():
            etags[key] = (await s3.put_object(Bucket=bucket, Key=key, Body=data))["ETag"].strip('"')
    return etags


def aws_notification(bucket: str, objects: dict[str, str]) -> bytes:
    """An AWS S3 event with one ObjectCreated:Put record per object (keys URL-encoded)."""
    from urllib.parse import quote_plus

    records = [
        {
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": bucket},
                "object": {"key": quote_plus(key, safe="/"), "eTag": etag, "size": 70},
            },
        }
        for key, etag in objects.items()
    ]
    return json.dumps({"Records": records}).encode()


def minio_notification(bucket: str, key: str, etag: str) -> bytes:
    """MinIO's NATS payload for one new object."""
    record = {
        "eventName": "s3:ObjectCreated:Put",
        "eventSource": "minio:s3",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag, "size": 70}},
    }
    return json.dumps(
        {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [record]}
    ).encode()


@pytest.fixture
def ingest(stack):
    """An ingest service with a file store and a quick watch interval."""
    return stack("ingest_service", DIGITS_WATCH_INTERVAL_S="0.5", DIGITS_MAX_DELIVER="2")


def s3_form(endpoint: str, bucket: str, **extra) -> dict:
    """A Use S3 form, credentials included (they go to the secret store)."""
    return {
        "method": "s3",
        "s3_endpoint_url": endpoint,
        "s3_bucket": bucket,
        "s3_path": "train",
        "s3_accesskey": ACCESS,
        "s3_secretkey": SECRET,
        "s3_pct_val": 25,
        "resize_width": 8,
        "resize_height": 8,
        "resize_channels": 1,
        **extra,
    }


async def test_an_s3_dataset_is_created_by_the_command_alone(
    nats_server, nc, ingest, moto_url, unique
):
    objects = {f"train/class{c}/{i:03d}.png": png(40 * c) for c in range(3) for i in range(20)}
    await upload(moto_url, f"b-{unique}", objects)
    await create_dataset(nats_server.url, "from-s3", s3_form(moto_url, f"b-{unique}"))
    job = await finished_job(nc, "from-s3")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert data.labels == ["class0", "class1", "class2"]
    assert (data.count("train_db"), data.count("val_db")) == (45, 15)
    for feature, label in data.samples("val_db"):
        assert int(feature.mean()) == 40 * label
    # The credentials went to the secret store: the job record and the events hold a reference.
    assert "secret_ref" in job.form and "s3_secretkey" not in job.form
    kv = await nc.jetstream().key_value(subjects.KV_JOBS)
    assert SECRET.encode() not in (await kv.get(job.id)).value
    sub = await nc.jetstream().subscribe(subjects.evt_job_all(job.id), ordered_consumer=True)
    try:
        while True:
            assert SECRET.encode() not in (await sub.next_msg(timeout=0.5)).data
    except nats.errors.TimeoutError:
        pass
    assert SECRET not in ingest.log()


async def test_a_watched_prefix_grows_by_notifications_and_duplicates_do_not(
    nats_server, nc, ingest, moto_url, unique
):
    bucket = f"w-{unique}"
    first = {f"train/cat/{i:02d}.png": png(10) for i in range(8)}
    first |= {f"train/dog/{i:02d}.png": png(200) for i in range(8)}
    listed = await upload(moto_url, bucket, first)
    form = s3_form(moto_url, bucket, s3_watch=True, s3_pct_val=0)
    await create_dataset(nats_server.url, "watched", form)
    job = await finished_job(nc, "watched")
    assert job.status == jobs.DONE, job.error
    updated = await nc.subscribe(subjects.evt_job(job.id, "dataset.updated"))

    new = {"train/cat/new 1.png": png(12), "train/dog/new-2.png": png(198)}
    new |= {f"train/bird/{i}.png": png(100) for i in range(3)}
    etags = await upload(moto_url, bucket, new)
    js = nc.jetstream()
    s3_subject = f"{subjects.S3}.{bucket}"
    two = dict(list(etags.items())[:2])
    await js.publish(s3_subject, aws_notification(bucket, two))
    await js.publish(s3_subject, aws_notification(bucket, two))  # a repeat: no new samples
    for key, etag in list(etags.items())[2:]:
        await js.publish(s3_subject, minio_notification(bucket, key, etag))
    late = "train/cat/00.png"  # already taken from the listing by version 1
    await js.publish(s3_subject, aws_notification(bucket, {late: listed[late]}))
    await js.publish(s3_subject, json.dumps({"Event": "s3:TestEvent"}).encode())
    await js.publish(s3_subject, b"<xml>not json</xml>")

    fact = events.decode((await updated.next_msg(timeout=60)).data, events.DatasetUpdated)
    assert fact.version == 2
    assert sum(fact.added.values()) == 5
    assert sum(fact.counts.values()) == 21
    data = dataset.open(fact.manifest_url)
    assert data.labels == ["cat", "dog", "bird"]
    assert data.manifest.version == 2
    labels = [label for stage in data.stages for _, label in data.samples(stage)]
    assert np.bincount(labels).tolist() == [9, 9, 3]
    # The same notifications again, later: nothing new.
    await js.publish(s3_subject, aws_notification(bucket, two))
    await asyncio.sleep(2)
    store = await job_store(nc)
    record = await store.get(job.id)
    assert record.extra["version"] == 2
    # The record lists each finalized version: what it added and the counts then.
    listed = record.extra["versions"]
    assert [v["version"] for v in listed] == [1, 2]
    assert listed[1]["added"] == fact.added and listed[1]["counts"] == fact.counts
    assert sum(listed[0]["counts"].values()) == 16 and listed[0]["at"] <= listed[1]["at"]

    async def dead_lettered() -> bool:
        info = await js.stream_info(subjects.STREAM_DLQ)
        return info.state.messages >= 1

    await wait_for(dead_lettered, timeout=20)
    dlq = await js.subscribe(
        subjects.dlq(subjects.STREAM_S3, subjects.CONSUMER_S3_NOTIFICATIONS), ordered_consumer=True
    )
    letter = await dlq.next_msg(timeout=5)
    assert letter.data == b"<xml>not json</xml>"
    assert "not JSON" in letter.headers["Digits-Dlq-Reason"]
    assert ingest.healthy()


async def test_one_notification_of_many_objects_makes_one_version(
    nats_server, nc, stack, moto_url, unique
):
    """Its records join the pending list together: a flush by the (tiny) interval or by the
    batch size does not split the message into several versions."""
    stack("ingest_service", DIGITS_WATCH_INTERVAL_S="0.05", DIGITS_WATCH_BATCH="100")
    bucket = f"many-{unique}"
    first = {f"train/c{c}/first{i}.png": png(50 + 100 * c) for c in range(2) for i in range(4)}
    await upload(moto_url, bucket, first)
    await create_dataset(nats_server.url, "many", s3_form(moto_url, bucket, s3_watch=True))
    job = await finished_job(nc, "many")
    assert job.status == jobs.DONE, job.error
    updated = await nc.subscribe(subjects.evt_job(job.id, "dataset.updated"))
    objects = {f"train/c{i % 2}/{i:03d}.png": png(50 + 100 * (i % 2)) for i in range(150)}
    etags = await upload(moto_url, bucket, objects)
    await nc.jetstream().publish(f"{subjects.S3}.{bucket}", aws_notification(bucket, etags))
    fact = events.decode((await updated.next_msg(timeout=60)).data, events.DatasetUpdated)
    assert (fact.version, sum(fact.added.values())) == (2, 150)
    await asyncio.sleep(1.0)  # 20 intervals: nothing is left over for a version 3
    record = await (await job_store(nc)).get(job.id)
    assert record.extra["version"] == 2 and not record.extra.get("pending"), record.extra


async def test_a_bucket_that_does_not_exist_fails_the_job_naming_it(
    nats_server, nc, ingest, moto_url, unique
):
    await create_dataset(nats_server.url, "no-bucket", s3_form(moto_url, f"missing-{unique}"))
    job = await finished_job(nc, "no-bucket")
    assert job.status == jobs.ERROR
    assert f"missing-{unique}" in job.error and "NoSuchBucket" in job.error
    assert SECRET not in job.error
