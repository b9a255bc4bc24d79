"""The services run under their own NATS users, and each is refused what it must not publish."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import msgpack
import nats.errors
import nats.js.errors
import pytest

from digits import bus, dataset, events, jobs, subjects
from digits.jobs import JobStore
from digits.natsserver import NatsServer, free_port
from digits.secrets import SecretBox
from tests.deploy.natsconf import node_config, user_env, user_settings
from tests.deploy.test_cluster import digits_init, find_job
from tests.integration.test_ingest import make_folder
from tests.services import ServiceProc
from tests.waiting import wait_for, wait_for_sync

pytestmark = pytest.mark.timeout(180)

# What each user must never publish: another service's work, commands it does not issue,
# buckets it does not own.
REFUSED: dict[str, tuple[str, ...]] = {
    "gateway": (subjects.WORK_TRAIN, subjects.WORK_INGEST_SHARD, f"$KV.{subjects.KV_JOBS}.x"),
    "ingest": (subjects.WORK_TRAIN, subjects.CMD_MODEL_CREATE, f"$KV.{subjects.KV_USERS}.x"),
    "train": (subjects.WORK_INGEST_SHARD, subjects.CMD_DATASET_CREATE, f"$KV.{subjects.KV_IDEM}"),
    "view": (subjects.CMD_JOB_DELETE, subjects.WORK_TRAIN, subjects.evt_job("x", "status")),
    "minio": (subjects.CMD_DATASET_CREATE, subjects.WORK_INGEST_SHARD, f"{subjects.RPC_INFER}.x"),
}


@pytest.fixture
def server(tmp_path, passwords):
    """One nats-server with JetStream and deploy/nats/accounts.conf, on free ports."""
    config = node_config(tmp_path / "conf", "single")
    nats_server = NatsServer(tmp_path / "js", extra_args=("-c", str(config))).start()
    try:
        yield nats_server
    finally:
        nats_server.stop()


def gateway_health(port: int) -> dict | None:
    """The gateway's /healthz.json, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz.json", timeout=2) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return None


async def refusals(settings, subjects_: tuple[str, ...]) -> list[str]:
    """Publish to each subject as the settings' user; the server's permission errors."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await bus.connect(settings, f"probe-{settings.nats_user}", error_cb=on_error)
    try:
        for subject in subjects_:
            await nc.publish(subject, b"\x80")
        await nc.flush()
        await wait_for(lambda: len(errors) >= len(subjects_), timeout=10)
        assert nc.is_connected, "a refused publish does not cost the connection"
    finally:
        await nc.close()
    return errors


async def test_each_service_user_may_do_its_work_and_nothing_else(server, passwords, tmp_path):
    urls = [server.url]
    init = await asyncio.to_thread(digits_init, urls, user_env(passwords, "admin"), 1)
    assert init.returncode == 0, init.stderr
    common = {
        "DIGITS_DATA_ROOTS": str(tmp_path),
        "DIGITS_STORE_URL": (tmp_path / "store").as_uri(),
        "DIGITS_SECRET_KEY": SecretBox.generate_key(),
        "DIGITS_INGEST_PROCS": "1",
        "DIGITS_HARDWARE_S": "1",
        "DIGITS_LOG_LEVEL": "DEBUG",  # NATS errors, permission violations included, are debug
    }
    gateway_port = free_port()
    procs = {
        name: ServiceProc(module, server.url, tmp_path, **common, **user_env(passwords, name))
        for name, module in (("ingest", "ingest_service"), ("train", "train_service"))
        + (("view", "view_service"),)
    }
    procs["gateway"] = ServiceProc(
        "gateway",
        server.url,
        tmp_path,
        **common,
        **user_env(passwords, "gateway"),
        DIGITS_PORT=str(gateway_port),
        DIGITS_ADMIN_PASSWORD=uuid.uuid4().hex,
    )
    admin = await bus.connect(user_settings(passwords, "admin", urls), "admin")
    as_gateway = await bus.connect(user_settings(passwords, "gateway", urls), "as-gateway")
    try:
        for name in ("ingest", "train", "view"):
            await asyncio.to_thread(procs[name].wait_healthy, 120)

        # Every service's heartbeat reaches the gateway's subscription: all four alive.
        def all_alive() -> bool:
            if procs["gateway"].proc.poll() is not None:
                raise AssertionError(procs["gateway"].log())
            health = gateway_health(gateway_port)
            return bool(health) and health["status"] == "ok"

        await asyncio.to_thread(wait_for_sync, all_alive, 60)

        # The gateway's commands: ingest builds a dataset under its own user ...
        js = as_gateway.jetstream()
        make_folder(tmp_path / "train", classes=2, per_class=10)
        form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 50}
        form.update(resize_width=8, resize_height=8, resize_channels=1)
        await bus.publish_event(js, events.DatasetCreate(name="perm-ds", form=form))
        # ... and train records a model job, here one whose dataset does not exist.
        missing = "20990101-000000-dead"
        await bus.publish_event(
            js, events.ModelCreate(name="perm-model", dataset_id=missing, form={})
        )
        store = JobStore(admin.jetstream(), await admin.jetstream().key_value(subjects.KV_JOBS))

        async def finished(name: str) -> jobs.Job | None:
            job = await find_job(store, name)
            return job if job is not None and job.status in jobs.TERMINAL else None

        ds = await wait_for(lambda: finished("perm-ds"), timeout=60, interval=0.2)
        assert ds.status == jobs.DONE, f"{ds.error}\n{procs['ingest'].log()[-3000:]}"
        data = dataset.open(ds.extra["manifest_url"])
        assert (data.count("train_db"), data.count("val_db")) == (10, 10)
        model = await wait_for(lambda: finished("perm-model"), timeout=60, interval=0.2)
        assert model.status == jobs.ERROR and missing in model.error

        # The gateway asks, view answers (allow_responses lets it publish only the reply).
        reply = await as_gateway.request(subjects.RPC_INFER_CLASSIFY, b"\x80", timeout=20)
        assert msgpack.unpackb(reply.data)["ok"] is False

        # Each user is refused the subjects it must not publish to, by the server ...
        for user, forbidden in REFUSED.items():
            settings = user_settings(passwords, user, urls)
            errors = await refusals(settings, forbidden)
            for subject in forbidden:
                # nats-py lower-cases the server's -ERR text.
                expected = f'permissions violation for publish to "{subject}"'.lower()
                assert any(expected in e.lower() for e in errors), (user, subject, errors)
        # ... and nothing it tried reached a stream.
        for subject in (subjects.WORK_TRAIN, subjects.WORK_INGEST_SHARD, subjects.CMD_JOB_DELETE):
            stream = subjects.STREAM_WORK if ".work." in subject else subjects.STREAM_CMD
            with pytest.raises(nats.js.errors.NotFoundError):
                await admin.jetstream().get_last_msg(stream, subject)
        for name, proc in procs.items():
            assert "permissions violation" not in proc.log().lower(), (name, proc.log()[-3000:])
    finally:
        for client in (admin, as_gateway):
            try:
                await client.close()
            except nats.errors.Error:
                pass
        for proc in procs.values():
            assert proc.stop(60) == 0, proc.log()[-3000:]


async def test_the_gateway_creates_and_writes_its_shared_buckets_and_no_one_else_may(
    server, passwords
):
    urls = [server.url]
    gateway = await bus.connect(user_settings(passwords, "gateway", urls), "as-gateway")
    try:
        buckets = await bus.ensure_kv(gateway.jetstream())  # none exist yet: it creates them
        for name in (subjects.KV_LOGINS, subjects.KV_PENDING):
            status = await buckets[name].status()
            assert status.ttl == subjects.KV_BUCKETS[name]["ttl"], name
            revision = await buckets[name].create("k", b"1")
            await buckets[name].update("k", b"2", last=revision)
            assert (await buckets[name].get("k")).value == b"2"
    finally:
        await gateway.close()
    forbidden = (f"$KV.{subjects.KV_LOGINS}.k", f"$KV.{subjects.KV_PENDING}.k")
    for user in ("ingest", "view"):
        errors = await refusals(user_settings(passwords, user, urls), forbidden)
        for subject in forbidden:
            expected = f'permissions violation for publish to "{subject}"'.lower()
            assert any(expected in e.lower() for e in errors), (user, subject, errors)
