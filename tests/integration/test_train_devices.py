"""Device selection end to end: the real train service, its CPU split into 2 logical devices.

``DIGITS_TRAIN_CPU_DEVICES=2`` makes the service offer two logical CPU devices as devices 0 and 1,
so MirroredStrategy runs for real on a machine without a GPU.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
import pytest

from digits import events, jobs, subjects
from digits.download_data import synthetic
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_jobs import job_store
from tests.integration.test_train import DATASET_FORM, LENET, create_model, job_events
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """A synthetic 4-class 28x28 set, 40 images a class."""
    synthetic.generate(tmp_path / "synthetic", classes=4, per_class=40, size=28, seed=3)
    return tmp_path / "synthetic" / "train"


def info_json(tmp_path: Path, job_id: str) -> dict:
    """The model's info.json, read from the test's file store."""
    return json.loads((tmp_path / "store" / "models" / job_id / "info.json").read_text())


async def test_lenet_trains_mirrored_over_two_devices_and_bad_selections_fail(
    nats_server, nc, stack, small_folder, tmp_path
):
    await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service"),
        asyncio.to_thread(stack, "train_service", DIGITS_TRAIN_CPU_DEVICES="2"),
    )
    await create_dataset(
        nats_server.url, "small", {**DATASET_FORM, "folder_train": str(small_folder)}
    )
    dataset = await finished_job(nc, "small", timeout=90)
    assert dataset.status == jobs.DONE, dataset.error

    form = {**LENET, "train_epochs": 2, "snapshot_interval": 1, "select_gpus": "0,1"}
    await create_model(nats_server.url, "mirrored", dataset.id, form)
    model = await finished_job(nc, "mirrored", timeout=120)
    assert model.status == jobs.DONE, model.error
    assert model.extra["num_replicas_in_sync"] == 2
    assert model.extra["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    info = info_json(tmp_path, model.id)
    assert info["num_replicas_in_sync"] == 2 and info["snapshots"] == [1, 2]
    found = await job_events(nc, model.id)
    train = [e for e in found if isinstance(e, events.TrainProgress) and e.phase == "train"]
    val = [e for e in found if isinstance(e, events.TrainProgress) and e.phase == "val"]
    assert train and train[-1].epoch == 2 and [e.epoch for e in val] == [1, 2]
    assert val[-1].metrics["val_accuracy"] >= 0.6, val[-1].metrics
    assert [e.epoch for e in found if isinstance(e, events.SnapshotSaved)] == [1, 2]

    # One selected device: one replica, pinned to it.
    one = {**LENET, "train_epochs": 1, "select_gpus": "1"}
    await create_model(nats_server.url, "one", dataset.id, one)
    single = await finished_job(nc, "one", timeout=90)
    assert single.status == jobs.DONE, single.error
    assert single.extra["devices"] == ["/device:CPU:1"]
    assert info_json(tmp_path, single.id)["num_replicas_in_sync"] == 1

    # Devices the worker does not have, or batches that cannot be split: Error, named.
    bad = {**LENET, "select_gpus": "0,5"}
    await create_model(nats_server.url, "missing", dataset.id, bad)
    missing = await finished_job(nc, "missing", timeout=30)
    assert missing.status == jobs.ERROR
    assert "CPU 5 is not available on this worker; available CPUs: 0, 1" in missing.error
    await create_model(nats_server.url, "counted", dataset.id, {**LENET, "select_gpu_count": 3})
    counted = await finished_job(nc, "counted", timeout=30)
    assert counted.status == jobs.ERROR and "select_gpu_count 3" in counted.error
    odd = {**LENET, "batch_size": 31, "select_gpus": "0,1"}
    await create_model(nats_server.url, "odd", dataset.id, odd)
    odd_job = await finished_job(nc, "odd", timeout=30)
    assert odd_job.status == jobs.ERROR and "batch_size 31" in odd_job.error

    # Abort under the strategy: stops at the next batch, keeps its snapshots.
    long = {**LENET, "train_epochs": 40, "batch_size": 8, "snapshot_interval": 1}
    await create_model(nats_server.url, "long", dataset.id, long)
    store = await job_store(nc)

    async def snapshotted() -> jobs.Job | None:
        for job in await store.list():
            if job.name == "long" and job.extra.get("snapshots"):
                return job
        return None

    job = await wait_for(snapshotted, timeout=90, interval=0.2)
    assert job.extra["num_replicas_in_sync"] == 2  # nothing selected: all the worker's devices
    await nc.jetstream().publish(
        subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": job.id})
    )
    aborted = await finished_job(nc, "long", timeout=30)
    assert aborted.status == jobs.ABORTED


async def test_a_mirrored_job_resumes_from_its_checkpoint_after_sigkill(
    nats_server, nc, stack, small_folder
):
    ingest = stack("ingest_service")
    await create_dataset(
        nats_server.url, "small", {**DATASET_FORM, "folder_train": str(small_folder)}
    )
    dataset = await finished_job(nc, "small", timeout=90)
    assert dataset.status == jobs.DONE, dataset.error
    assert ingest.healthy()
    trainer = await asyncio.to_thread(stack, "train_service", DIGITS_TRAIN_CPU_DEVICES="2")
    form = {**LENET, "train_epochs": 12, "batch_size": 8, "snapshot_interval": 1}
    await create_model(nats_server.url, "killed", dataset.id, {**form, "select_gpus": "0,1"})
    store = await job_store(nc)

    async def two_snapshots() -> jobs.Job | None:
        for job in await store.list():
            if job.name == "killed" and len(job.extra.get("snapshots", [])) >= 2:
                return job
        return None

    await wait_for(two_snapshots, timeout=90, interval=0.1)
    trainer.proc.kill()
    await asyncio.to_thread(trainer.proc.wait, 10)
    second = await asyncio.to_thread(stack, "train_service", DIGITS_TRAIN_CPU_DEVICES="2")
    killed = await finished_job(nc, "killed", timeout=120)
    assert f"job {killed.id} resumes after epoch" in second.log()
    assert killed.status == jobs.DONE, killed.error
    assert killed.extra["snapshots"] == list(range(1, 13))
    assert killed.extra["num_replicas_in_sync"] == 2
    progress = [e for e in await job_events(nc, killed.id) if isinstance(e, events.TrainProgress)]
    seq = [e.epoch for e in progress if e.phase == "train"]
    after_two = seq[seq.index(next(x for x in seq if x >= 2)) :]
    assert max(seq) == 12 and min(after_two) > 1, f"restarted from scratch: {seq}"


def thread_nices(pid: int) -> set[int]:
    """The nice values of a process's threads (field 19 of each /proc/<pid>/task/<tid>/stat)."""
    found = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rpartition(")")[2].split()  # after the (command name)
        found.add(int(fields[16]))
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_the_train_service_runs_below_the_serving_services_unless_told(stack):
    """DIGITS_TRAIN_NICE (19 by default): every thread, TensorFlow's too, takes what is left."""
    default = stack("train_service")
    assert thread_nices(default.proc.pid) == {19}
    told = stack("train_service", DIGITS_TRAIN_NICE="0")
    assert thread_nices(told.proc.pid) == {0}
