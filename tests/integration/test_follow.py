"""Models that follow their data: bounds, coalescing, a deleted dataset, and the real loop on S3."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

import msgpack
import msgspec
import numpy as np
import pytest
from PIL import Image

from digits import events, jobs, subjects
from digits.jobs import Job
from digits.registry import Registry
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_ingest_s3 import aws_notification, s3_form, upload
from tests.integration.test_registry import model_job, setup
from tests.integration.test_train import LENET, create_model
from tests.waiting import wait_for
from train_service.follow import Follower

pytestmark = pytest.mark.timeout(600)


@contextlib.asynccontextmanager
async def follower_of(nc, **follow) -> AsyncIterator[tuple[Registry, Follower, Job, Job, list]]:
    """A registered model (v1 done) that follows a Done dataset; what model.create it publishes."""
    store, reg, worker = await setup(nc)
    v1 = await model_job(store)
    dataset_id = v1.depends_on[0]
    extra = {"finalized": 1, "counts": {"train_db": 30, "val_db": 10}}
    await store.update(dataset_id, lambda j: msgspec.structs.replace(j, extra=extra))
    fields = {
        "name": "shapes",
        "mode": "finetune",
        "alias": "production",
        "metric": "val_loss",
        "promote_margin": 0.0,
        "follow_min_new_samples": 5,
        "follow_min_interval_s": 0.0,
    }
    fields.update(follow)
    await worker.register_job(v1, fields, events.ModelCreate(name="x", dataset_id=dataset_id))
    published: list = []
    js = nc.jetstream()
    sub = await js.subscribe(subjects.CMD_MODEL_CREATE, ordered_consumer=True)

    async def collect():
        async for msg in sub.messages:
            published.append(events.decode(msg.data, events.ModelCreate))

    task = asyncio.get_running_loop().create_task(collect())
    follower = Follower(js, store, reg)
    try:
        # v1 was done at registration: the follower is free (nothing training).
        await follower.ended(await store.get(v1.id))
        yield reg, follower, v1, await store.get(dataset_id), published
    finally:
        task.cancel()
        await sub.unsubscribe()


async def grow(nc, dataset: Job, version: int, samples: int) -> events.DatasetUpdated:
    """Record a new version of ``dataset`` with ``samples`` samples in all; its update event."""
    store, _, _ = await setup(nc)
    counts = {"train_db": samples - samples // 4, "val_db": samples // 4}
    extra = {"finalized": version, "version": version, "counts": counts}
    await store.update(dataset.id, lambda j: msgspec.structs.replace(j, extra={**j.extra, **extra}))
    return events.DatasetUpdated(
        job_id=dataset.id, manifest_url="file:///m", version=version, counts=counts
    )


async def test_updates_start_versions_within_bounds_and_coalesce_while_one_trains(nc):
    async with follower_of(nc) as (reg, follower, v1, dataset, published):
        model = await follower.consider("shapes", **_args(await grow(nc, dataset, 2, 42)))
        assert model.follow.training == "" and model.follow.pending == 2
        assert "has 2 new samples, fewer than 5" in model.changes[-1].reason
        model = await follower.consider("shapes", **_args(await grow(nc, dataset, 3, 50)))
        child = model.follow.training
        assert child and model.follow.last_dataset_version == 3 and model.follow.pending == 0
        await wait_for(lambda: published, timeout=5)
        cmd = published[0]
        assert (cmd.job_id, cmd.event_id, cmd.dataset_id) == (child, f"follow-{child}", dataset.id)
        assert cmd.form["method"] == "previous" and cmd.form["previous_networks"] == v1.id
        assert cmd.form["registry_name"] == "shapes" and "follow" not in cmd.form
        assert cmd.form["registry_lineage"] == {
            "parent_version": 1,
            "snapshot": None,
            "mode": "finetune",
        }
        assert cmd.owner == "alice"
        # Two updates while the child trains: remembered, not lost, not started.
        for version, samples in ((4, 60), (5, 70)):
            model = await follower.consider(
                "shapes", **_args(await grow(nc, dataset, version, samples))
            )
        assert model.follow.training == child and model.follow.pending == 5
        assert "dataset v5 arrived while" in model.changes[-1].reason
        assert len(published) == 1
        # The child ends: the next version starts on the newest dataset version.
        store, _, _ = await setup(nc)
        ended = Job(
            id=child,
            type="model",
            name="c",
            owner="alice",
            status=jobs.DONE,
            depends_on=[dataset.id],
            extra={"registry": {"name": "shapes", "version": 2}},
        )
        await follower.ended(ended)
        model = await reg.get("shapes")
        assert model.follow.training not in ("", child) and model.follow.last_dataset_version == 5
        await wait_for(lambda: len(published) == 2, timeout=5)
        # A redelivered update of a version already trained changes nothing.
        again = await follower.consider("shapes", **_args(await grow(nc, dataset, 5, 70)))
        assert again.follow == model.follow and len(published) == 2


async def test_the_minimum_interval_holds_a_version_back_and_the_sweep_starts_it(nc):
    held_back = follower_of(nc, follow_min_interval_s=1.5)
    async with held_back as (reg, follower, v1, dataset, published):
        model = await follower.consider("shapes", **_args(await grow(nc, dataset, 2, 60)))
        assert model.follow.pending == 2 and "may start in" in model.changes[-1].reason
        await asyncio.sleep(1.6)
        await follower.sweep()
        assert (await reg.get("shapes")).follow.training
        await wait_for(lambda: published, timeout=5)


async def test_a_follower_whose_dataset_is_deleted_stops_saying_why(nc):
    async with follower_of(nc) as (reg, follower, v1, dataset, published):
        store, _, _ = await setup(nc)
        await store.kv.delete(dataset.id)  # gone (its models were deleted first, or by hand)
        await follower.sweep()
        model = await reg.get("shapes")
        assert model.follow.stopped == f"dataset {dataset.id} was deleted"
        assert model.changes[-1].kind == "stopped"
        # Once stopped, updates start nothing.
        await follower.consider("shapes", version=9, samples=999)
        assert not published and not (await reg.get("shapes")).follow.training


async def test_a_follower_whose_parent_job_is_deleted_stops_saying_why(nc):
    async with follower_of(nc) as (reg, follower, v1, dataset, published):
        store, _, _ = await setup(nc)
        await store.kv.delete(v1.id)  # v1 (production) deleted by hand while it is followed
        update = await grow(nc, dataset, 2, 60)
        await follower.consider("shapes", **_args(update))
        why = f"v1's job {v1.id} was deleted: nothing to start from"
        model = await reg.get("shapes")
        assert model.follow.stopped == why and not model.follow.training
        assert model.changes[-1].kind == "stopped" and model.changes[-1].reason == why
        await follower.sweep()  # no retry of the claim, nothing published
        await follower.consider("shapes", version=3, samples=999)
        assert not published and (await reg.get("shapes")).follow.stopped == why


def _args(event: events.DatasetUpdated) -> dict:
    return {"version": event.version, "samples": sum(event.counts.values())}


# --- the whole loop with the real services ---------------------------------------------------


class Requester:
    """Classifies one image on ``shapes@production`` until stopped; each reply's job and outcome."""

    def __init__(self, nc, image: bytes) -> None:
        self.nc = nc
        self.payload = msgpack.packb({"job_id": "shapes@production", "image": image, "top_k": 1})
        self.replies: list[tuple[str, bool, str]] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        """Request until told to stop; a failure is recorded, never raised."""
        while not self.stop.is_set():
            try:
                msg = await self.nc.request(subjects.RPC_INFER_CLASSIFY, self.payload, timeout=30)
                reply = msgpack.unpackb(msg.data)
                self.replies.append((reply.get("job_id", ""), bool(reply.get("ok")), str(reply)))
            except Exception as exc:  # noqa: BLE001 - a failed request is what the test counts
                self.replies.append(("", False, repr(exc)))
            await asyncio.sleep(0.02)

    def answered_by(self, job_id: str) -> bool:
        """Whether a reply came from ``job_id``."""
        return any(ok and job == job_id for job, ok, _ in self.replies)


def shape_png(label: int, rng: np.random.Generator) -> bytes:
    """A 28x28 grey image: a bright square (label 1) or a dark one (label 0), with noise."""
    pixels = rng.normal(60, 20, (28, 28))
    pixels[6:22, 6:22] += 150 if label else -40
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def batch(tag: str, per_class: int, rng, swap: bool = False) -> dict[str, bytes]:
    """Objects under train/<class>/; ``swap`` files each class's images under the other class."""
    out = {}
    for c, name in enumerate(("dark", "bright")):
        for i in range(per_class):
            out[f"train/{name}/{tag}-{i:03d}.png"] = shape_png(1 - c if swap else c, rng)
    return out


async def test_a_follower_retrains_on_new_objects_and_only_a_better_version_is_promoted(
    nats_server, nc, stack, moto_url, unique
):
    _, train, _ = await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service", DIGITS_WATCH_INTERVAL_S="0.5"),
        asyncio.to_thread(stack, "train_service"),
        asyncio.to_thread(stack, "view_service"),
    )
    rng = np.random.default_rng(3)
    bucket = f"f-{unique}"
    await upload(moto_url, bucket, batch("a", 40, rng))
    form = s3_form(moto_url, bucket, s3_watch=True, resize_width=28, resize_height=28)
    await create_dataset(nats_server.url, "shapes-data", form)
    data = await finished_job(nc, "shapes-data", timeout=120)
    assert data.status == jobs.DONE, data.error
    model_form = {
        **LENET,
        "train_epochs": 3,
        "snapshot_interval": 1,
        "registry_name": "shapes",
        "follow": "finetune",
        "promote_metric": "val_loss",
        "follow_min_new_samples": 10,
    }
    await create_model(nats_server.url, "shapes-lenet", data.id, model_form)
    _, reg, _ = await setup(nc)

    async def version_done(number: int):
        try:
            model = await reg.get("shapes")
            version = model.version(number)
        except Exception:  # noqa: BLE001 - not there yet
            return None
        return model if version.state != "training" else None

    model = await wait_for(lambda: version_done(1), timeout=240, interval=0.5)
    assert model.version(1).state == "done", model.version(1).note
    assert model.aliases == {"production": 1}
    # From now on a client classifies on shapes@production without pause.
    client = Requester(nc, shape_png(1, rng))
    requests = asyncio.get_running_loop().create_task(client.run())

    async def registered(number: int):
        model = await reg.get("shapes")
        return model if model.latest() >= number else None

    async def announce(etags: dict[str, str]) -> None:
        await nc.jetstream().publish(f"{subjects.S3}.{bucket}", aws_notification(bucket, etags))

    async def notify(objects: dict[str, bytes]) -> None:
        await announce(await upload(moto_url, bucket, objects))

    # More of the same: version 2 trains by itself on dataset version 2, fine-tuned, and wins.
    # The train service is SIGKILLed while v2 trains: the alias stays until v2 is done.
    await notify(batch("b", 40, rng))
    store, _, _ = await setup(nc)

    async def v2_running():
        model = await registered(2)
        if model is None:
            return None
        return (await store.get(model.version(2).job_id)).status == jobs.RUNNING

    await wait_for(v2_running, timeout=120, interval=0.05)
    train.proc.kill()
    train.proc.wait(10)
    model = await reg.get("shapes")
    assert model.version(2).state == "training" and model.aliases == {"production": 1}
    await asyncio.to_thread(stack, "train_service")
    model = await wait_for(lambda: version_done(2), timeout=240, interval=0.5)
    v2 = model.version(2)
    assert v2.state == "done", v2.note
    assert (v2.dataset_id, v2.dataset_version, v2.parent_version, v2.mode) == (
        data.id,
        2,
        1,
        "finetune",
    )
    assert v2.snapshot == 3.0
    assert model.aliases == {"production": 2}, model.version(2).note
    assert "beats v1's" in v2.note
    assert await reg.resolve("shapes@production") == v2.job_id
    # The alias moved: replies come from v2, and no request failed before, during or after.
    await wait_for(lambda: client.answered_by(v2.job_id), timeout=60, interval=0.1)
    client.stop.set()
    await requests
    answered = {job for job, ok, _ in client.replies if ok}
    failed = [error for _, ok, error in client.replies if not ok]
    assert not failed, failed[:3]
    assert answered == {model.version(1).job_id, v2.job_id}, answered
    assert len(client.replies) >= 20

    # Mislabelled new data: version 3 trains, is worse, and the alias stays, saying why. More of
    # it arrives while v3 trains: it is held for the next version (v4), not lost, not in parallel.
    # The second batch is uploaded first and announced once the first is being ingested (as
    # dataset v3): it becomes dataset v4, ready within seconds, while model v3 still trains.
    worse, more = batch("c", 60, rng, swap=True), batch("d", 60, rng, swap=True)
    held_back = await upload(moto_url, bucket, more)
    await notify(worse)

    async def ingesting(version: int) -> bool:
        return (await store.get(data.id)).extra.get("version", 1) >= version

    await wait_for(lambda: ingesting(3), timeout=60, interval=0.05)
    await announce(held_back)
    await wait_for(lambda: registered(3), timeout=120, interval=0.2)

    async def settled():
        model = await reg.get("shapes")
        f = model.follow  # every one of the 400 objects trained on, nothing in flight
        return model if f.last_samples == 400 and not f.training and not f.pending else None

    model = await wait_for(settled, timeout=300, interval=0.5)
    log = "\n".join(f"{c.kind} v{c.version}: {c.reason}" for c in model.changes)
    later = model.versions[2:]
    assert len(later) >= 2 and all(v.state == "done" for v in later), log
    assert all(v.parent_version == 2 and v.mode == "finetune" for v in later), log
    seen = [v.dataset_version for v in model.versions]
    assert seen == sorted(set(seen)) and seen[-1] == model.follow.last_dataset_version, log
    assert model.aliases == {"production": 2}, log
    assert all("does not beat v2's" in v.note for v in later), log
    assert any(f"arrived while {later[0].job_id} trains" in c.reason for c in model.changes), log
    refused = [c.version for c in model.changes if c.kind == "refused"]
    assert refused == [v.version for v in later], log
    # Every change was an event.
    sub = await nc.jetstream().subscribe(subjects.evt_registry_all("shapes"), ordered_consumer=True)
    kinds = []
    try:
        while True:
            kinds.append(events.decode((await sub.next_msg(timeout=1)).data).kind)
    except TimeoutError:
        pass
    assert kinds.count("promoted") == 2 and kinds.count("refused") == len(later), log
    assert kinds.count("version") == len(model.versions) - 1 and "follow" in kinds, log
