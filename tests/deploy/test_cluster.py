"""An ingest job on a 3-node JetStream cluster survives losing the work stream's leader."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import msgpack
import nats.errors
import nats.js.errors
import pytest

from digits import bus, dataset, jobs, subjects
from digits.jobs import JobStore
from tests.deploy.natsconf import user_env, user_settings
from tests.integration.test_ingest import make_folder
from tests.services import ServiceProc
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

SHARD = 10
CLASSES, PER_CLASS = 4, 100  # 300 train + 100 val entries: 40 shards


def digits_init(
    urls: list[str], env: dict[str, str], replicas: int = 3
) -> subprocess.CompletedProcess[str]:
    """Run `digits init` as the compose init service and the k8s bootstrap Job do."""
    command = [sys.executable, "-m", "digits.cli", "init", "--nats", ",".join(urls)]
    command += ["--replicas", str(replicas), "--wait", "60"]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=90
    )


def shards_done(job: jobs.Job) -> int:
    """How many shards of the job are recorded as written."""
    return sum(len(s) for s in job.extra.get("done", {}).values())


async def find_job(store: JobStore, name: str) -> jobs.Job | None:
    """The job called ``name``, or None (also while the cluster is failing over)."""
    try:
        for job in await store.list():
            if job.name == name:
                return job
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return None
    return None


async def test_ingest_survives_killing_the_work_stream_leader(cluster, passwords, tmp_path):
    init = await asyncio.to_thread(digits_init, cluster.urls, user_env(passwords, "admin"))
    assert init.returncode == 0, init.stderr + cluster.log()
    make_folder(tmp_path / "train", classes=CLASSES, per_class=PER_CLASS, size=32)
    ingest = ServiceProc(
        "ingest_service",
        ",".join(cluster.urls),
        tmp_path,
        DIGITS_REPLICAS="3",
        DIGITS_SHARD_SIZE=str(SHARD),
        DIGITS_INGEST_PROCS="1",
        DIGITS_ACK_WAIT_S="5",
        DIGITS_DATA_ROOTS=str(tmp_path),
        DIGITS_STORE_URL=(tmp_path / "store").as_uri(),
        **user_env(passwords, "ingest"),
    )
    settings = user_settings(passwords, "admin", cluster.urls, data_dir=str(tmp_path))
    nc = await bus.connect(settings, "cluster-test")
    try:
        await asyncio.to_thread(ingest.wait_healthy, 90)
        js = nc.jetstream()
        for spec in subjects.STREAMS:
            info = await js.stream_info(spec.name)
            assert info.config.num_replicas == 3, spec.name
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, spec.name
        store = JobStore(js, await js.key_value(subjects.KV_JOBS))

        name = f"cluster-{uuid.uuid4().hex[:6]}"
        form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 25}
        form.update(resize_width=32, resize_height=32, resize_channels=3, encoding="png")
        command = {"type": "dataset.create", "event_id": name, "name": name, "form": form}
        await bus.publish(
            js, subjects.CMD_DATASET_CREATE, msgpack.packb(command), msg_id=f"create:{name}"
        )

        async def started() -> jobs.Job | None:
            job = await find_job(store, name)
            return job if job is not None and shards_done(job) >= 2 else None

        before = await wait_for(started, timeout=60, interval=0.05)
        leader = (await js.stream_info(subjects.STREAM_WORK)).cluster.leader
        victim = cluster.by_name(leader)
        victim.kill()  # SIGKILL: no lame duck, no leader hand-off
        assert before.status != jobs.DONE and shards_done(before) < 40, "killed too late"

        async def finished() -> jobs.Job | None:
            job = await find_job(store, name)
            return job if job is not None and job.status in jobs.TERMINAL else None

        job = await wait_for(finished, timeout=120, interval=0.25)
        assert job.status == jobs.DONE, f"{job.error}\n{ingest.log()[-3000:]}"

        # The last work item (the finalize step) marks the job Done before it is acknowledged,
        # so its ack may land just after: wait past one ack wait (5 s) for a redelivery to settle.
        async def drained() -> object:
            info = await js.stream_info(subjects.STREAM_WORK)
            return info if info.state.messages == 0 else None

        try:
            after = await wait_for(drained, timeout=30, interval=0.25)
        except AssertionError:
            state = (await js.stream_info(subjects.STREAM_WORK)).state
            raise AssertionError(f"work items left unacknowledged: {state}") from None
        assert after.cluster.leader and after.cluster.leader != leader

        data = dataset.open(job.extra["manifest_url"])
        assert (data.count("train_db"), data.count("val_db")) == (300, 100)
        paths = set()
        for stage in ("train_db", "val_db"):
            assert data.manifest.stages[stage].skipped == 0
            paths.update(data.shard_paths(stage))
        assert len(paths) == 40  # 30 + 10 shards, none twice
        assert ingest.healthy(), "the service moved to a live node"
    finally:
        await nc.close()
        assert ingest.stop(60) == 0, ingest.log()[-3000:]
