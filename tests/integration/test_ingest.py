"""Dataset ingest end to end: a create command in, LMDB shards, mean, histogram and manifest out."""

from __future__ import annotations

import asyncio
import uuid

import msgpack
import nats
import nats.errors
import numpy as np
import psutil
import pytest
from PIL import Image

from digits import dataset, events, jobs, subjects
from tests.integration.test_jobs import job_store
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


def make_folder(root, classes: int, per_class: int, size: int = 12, mode: str = "L") -> None:
    """Class sub-folders of small PNGs whose brightness depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.full((size, size + 4), 20 * c, np.uint8)
            pixels = np.clip(base + rng.integers(0, 10, base.shape), 0, 255).astype(np.uint8)
            if mode == "RGB":
                pixels = np.stack([pixels] * 3, axis=-1)
            Image.fromarray(pixels, mode).save(folder / f"{i:04d}.png")


@pytest.fixture
def ingest(stack):
    """A real ingest service with a file store, data roots = tmp_path, small shards."""
    return stack("ingest_service", DIGITS_SHARD_SIZE="300", DIGITS_INGEST_PROCS="2")


async def create_dataset(nats_url: str, name: str, form: dict) -> str:
    """Publish a dataset.create command with plain msgpack, as any system would; the command id."""
    nc = await nats.connect(nats_url)
    try:
        command_id = uuid.uuid4().hex
        payload = {"type": "dataset.create", "event_id": command_id, "name": name, "form": form}
        await nc.jetstream().publish(
            subjects.CMD_DATASET_CREATE,
            msgpack.packb(payload),
            headers={"Nats-Msg-Id": f"create:{command_id}"},
        )
        return command_id
    finally:
        await nc.close()


async def finished_job(nc, name: str, timeout: float = 120) -> jobs.Job:
    """Wait until the job called ``name`` has finished; the record."""
    store = await job_store(nc)

    async def finished() -> jobs.Job | None:
        for job in await store.list():
            if job.name == name and job.status in jobs.TERMINAL:
                return job
        return None

    return await wait_for(finished, timeout=timeout, interval=0.25)


async def test_folder_of_ten_classes_becomes_a_dataset(nats_server, nc, ingest, tmp_path):
    make_folder(tmp_path / "train", classes=10, per_class=200)
    sub = await nc.subscribe(f"{subjects.EVT}.job.*.dataset.ready")
    form = {
        "method": "folder",
        "folder_train": str(tmp_path / "train"),
        "folder_pct_val": 25,
        "folder_pct_test": 10,
        "resize_width": 16,
        "resize_height": 12,
        "resize_channels": 1,
        "encoding": "png",
    }
    await create_dataset(nats_server.url, "ten-classes", form)
    job = await finished_job(nc, "ten-classes")
    assert job.status == jobs.DONE, job.error
    ready = events.decode((await sub.next_msg(timeout=10)).data, events.DatasetReady)
    assert ready.job_id == job.id and ready.num_labels == 10
    counts = ready.counts
    assert sum(counts.values()) == 2000 and ready.skipped == {s: 0 for s in counts}
    assert counts == {"train_db": 1300, "val_db": 500, "test_db": 200}
    assert [s.name for s in job.stages] == [
        "Parse Folder (train/val)",
        "Create DB (train)",
        "Create DB (val)",
        "Create DB (test)",
    ]
    assert all(s.status == jobs.DONE and s.finished_at for s in job.stages)
    data = dataset.open(ready.manifest_url)
    assert data.labels == [f"class{c:02d}" for c in range(10)]
    assert len(data.shard_paths("train_db")) == 5  # 1300 entries in shards of 300
    features, labels = zip(*data.samples("val_db"), strict=True)
    assert len(features) == 500 and features[0].shape == (12, 16, 1)
    assert np.bincount(labels).tolist() == [50] * 10
    # Brightness is 20 * class (+ noise 0..9): the stored pixels keep that relation.
    for feature, label in zip(features[:50], labels[:50], strict=True):
        assert 20 * label <= feature.mean() <= 20 * label + 9
    mean = data.mean()
    assert mean.shape == (12, 16, 1) and abs(mean.mean() - (90 + 4.5)) < 1.0
    assert data.manifest.stages["train_db"].histogram == {f"class{c:02d}": 130 for c in range(10)}
    store_dir = tmp_path / "store" / "datasets" / job.id
    assert (store_dir / "mean.png").is_file() and (store_dir / "labels.txt").is_file()
    leftovers = list((store_dir / "work").rglob("*.msgpack"))
    assert not leftovers, "work lists are removed once the dataset is ready"


@pytest.mark.parametrize(
    ("encoding", "channels", "resize_mode"),
    [("jpg", 3, "crop"), ("none", 1, "fill"), ("png", 3, "half_crop"), ("jpg", 1, "squash")],
)
async def test_each_encoding_channel_count_and_resize_mode(
    nats_server, nc, ingest, tmp_path, encoding, channels, resize_mode
):
    make_folder(tmp_path / "train", classes=3, per_class=20, mode="RGB")
    form = {
        "method": "folder",
        "folder_train": str(tmp_path / "train"),
        "folder_pct_val": 25,
        "resize_width": 10,
        "resize_height": 8,
        "resize_channels": channels,
        "resize_mode": resize_mode,
        "encoding": encoding,
    }
    await create_dataset(nats_server.url, f"variant-{encoding}", form)
    job = await finished_job(nc, f"variant-{encoding}")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert data.manifest.encoding == encoding
    assert data.count("train_db") == 45 and data.count("val_db") == 15
    feature, _ = next(iter(data.samples("train_db")))
    assert feature.shape == (8, 10, channels) and feature.dtype == np.uint8


async def test_corrupt_images_are_skipped_and_counted(nats_server, nc, ingest, tmp_path):
    make_folder(tmp_path / "train", classes=2, per_class=10)
    (tmp_path / "train" / "class00" / "zero.png").write_bytes(b"")
    (tmp_path / "train" / "class01" / "junk.png").write_bytes(b"not an image at all")
    good = (tmp_path / "train" / "class00" / "0000.png").read_bytes()
    (tmp_path / "train" / "class01" / "cut.png").write_bytes(good[: len(good) // 2])
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 0}
    form.update(resize_width=8, resize_height=8, resize_channels=1)
    await create_dataset(nats_server.url, "with-corrupt", form)
    job = await finished_job(nc, "with-corrupt")
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    train = data.manifest.stages["train_db"]
    assert (train.count, train.skipped) == (20, 3)  # 23 entries in = 20 written + 3 skipped
    assert len(job.extra["skip_reasons"]) == 3
    assert any("zero.png" in r for r in job.extra["skip_reasons"])


async def test_a_folder_outside_the_data_roots_fails_the_job_with_a_clear_error(
    nats_server, nc, ingest, tmp_path
):
    form = {"method": "folder", "folder_train": "/etc", "folder_pct_val": 25}
    await create_dataset(nats_server.url, "outside", form)
    job = await finished_job(nc, "outside")
    assert job.status == jobs.ERROR
    assert "/etc" in job.error and str(tmp_path) in job.error
    assert ingest.healthy(), "the service keeps serving"


async def test_a_redelivered_create_command_makes_one_job(nats_server, nc, ingest, tmp_path):
    make_folder(tmp_path / "train", classes=2, per_class=5)
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 0}
    form.update(resize_width=8, resize_height=8, resize_channels=1)
    command_id = await create_dataset(nats_server.url, "once", form)
    await finished_job(nc, "once")
    # The same command again, past the duplicate window (another msg id): the same job answers.
    payload = {"type": "dataset.create", "event_id": command_id, "name": "once", "form": form}
    await nc.jetstream().publish(subjects.CMD_DATASET_CREATE, msgpack.packb(payload))
    await asyncio.sleep(2)
    named = [j for j in await (await job_store(nc)).list() if j.name == "once"]
    assert len(named) == 1


def shards_done(job: jobs.Job) -> int:
    """How many shards of the job are recorded as written."""
    return sum(len(s) for s in job.extra.get("done", {}).values())


async def wait_shards(nc, name: str, at_least: int) -> jobs.Job:
    """Wait until the job called ``name`` has recorded ``at_least`` shards."""
    store = await job_store(nc)

    async def progressed() -> jobs.Job | None:
        for job in await store.list():
            if job.name == name and shards_done(job) >= at_least:
                return job
        return None

    return await wait_for(progressed, timeout=120, interval=0.1)


@pytest.fixture
def slow_ingest(stack):
    """Start ingest services with one encoding process, shards of 100, a short ack_wait."""
    return lambda: stack("ingest_service", DIGITS_SHARD_SIZE="100", DIGITS_ACK_WAIT_S="3")


async def test_a_shard_worker_killed_mid_shard_still_gives_exact_counts(
    nats_server, nc, slow_ingest, tmp_path
):
    make_folder(tmp_path / "train", classes=10, per_class=150, size=32)
    first = await asyncio.to_thread(slow_ingest)
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 20}
    form.update(resize_width=32, resize_height=32, resize_channels=3, resize_mode="fill")
    await create_dataset(nats_server.url, "killed", form)
    await wait_shards(nc, "killed", 2)
    encoders = psutil.Process(first.proc.pid).children(recursive=True)
    first.proc.kill()  # SIGKILL, mid-shard: its message was never acked
    await asyncio.to_thread(first.proc.wait, 10)
    # Its encoding processes notice and exit: a killed service leaves no orphans behind.
    gone, alive = await asyncio.to_thread(psutil.wait_procs, encoders, 10)
    assert encoders and not alive, f"orphaned: {alive}"
    await asyncio.to_thread(slow_ingest)
    job = await finished_job(nc, "killed", timeout=180)
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert (data.count("train_db"), data.count("val_db")) == (1200, 300)
    paths = set()
    for stage in ("train_db", "val_db"):
        assert data.manifest.stages[stage].skipped == 0
        paths.update(data.shard_paths(stage))
    assert len(paths) == 15  # 12 + 3 shards of 100, none twice


async def test_abort_stops_the_remaining_shards(nats_server, nc, slow_ingest, tmp_path):
    make_folder(tmp_path / "train", classes=10, per_class=300, size=32)
    await asyncio.to_thread(slow_ingest)
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 0}
    form.update(resize_width=64, resize_height=64, resize_channels=3)
    await create_dataset(nats_server.url, "aborted", form)
    job = await wait_shards(nc, "aborted", 1)
    await nc.jetstream().publish(
        subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": job.id})
    )
    store = await job_store(nc)

    async def aborted() -> bool:
        return (await store.get(job.id)).status == jobs.ABORTED

    await wait_for(aborted, timeout=30)

    async def queue_drained() -> bool:
        info = await nc.jetstream().stream_info(subjects.STREAM_WORK)
        return info.state.messages == 0

    await wait_for(queue_drained, timeout=60)
    final = await store.get(job.id)
    assert shards_done(final) < 30, "the remaining shards were dropped, not encoded"
    assert "manifest_url" not in final.extra


async def test_delete_is_refused_while_a_model_uses_the_dataset_then_removes_files(
    nats_server, nc, ingest, tmp_path
):
    make_folder(tmp_path / "train", classes=2, per_class=5)
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 0}
    form.update(resize_width=8, resize_height=8, resize_channels=1)
    await create_dataset(nats_server.url, "in-use", form)
    dataset_job = await finished_job(nc, "in-use")
    store = await job_store(nc)
    model = await store.create(
        jobs.Job(id=jobs.new_job_id(), type="model", name="lenet", depends_on=[dataset_job.id])
    )
    sub = await nc.subscribe(subjects.evt_job(dataset_job.id, "rejected"))
    delete = msgpack.packb({"type": "job.delete", "job_id": dataset_job.id})
    await nc.jetstream().publish(subjects.CMD_JOB_DELETE, delete)
    rejected = msgpack.unpackb((await sub.next_msg(timeout=20)).data)
    assert "used by lenet" in rejected["reason"]
    files = tmp_path / "store" / "datasets" / dataset_job.id
    assert (files / "manifest.json").is_file()
    await store.delete(model.id)
    await nc.jetstream().publish(subjects.CMD_JOB_DELETE, delete)

    async def gone() -> bool:
        return not files.exists()

    await wait_for(gone, timeout=20)
    with pytest.raises(jobs.JobNotFound):
        await store.get(dataset_job.id)


async def test_an_encoding_process_that_dies_is_replaced_and_counts_stay_exact(
    nats_server, nc, slow_ingest, tmp_path
):
    make_folder(tmp_path / "train", classes=10, per_class=150, size=32)
    service = await asyncio.to_thread(slow_ingest)
    form = {"method": "folder", "folder_train": str(tmp_path / "train"), "folder_pct_val": 0}
    form.update(resize_width=48, resize_height=48, resize_channels=3, resize_mode="fill")
    await create_dataset(nats_server.url, "pool-crash", form)
    await wait_shards(nc, "pool-crash", 1)
    children = psutil.Process(service.proc.pid).children(recursive=True)
    encoders = [p for p in children if "multiprocessing" in " ".join(p.cmdline())]
    assert encoders, "the service encodes in child processes"
    for proc in encoders:
        proc.kill()
    job = await finished_job(nc, "pool-crash", timeout=180)
    assert job.status == jobs.DONE, job.error
    data = dataset.open(job.extra["manifest_url"])
    assert data.count("train_db") == 1500 and data.manifest.stages["train_db"].skipped == 0
    assert service.healthy()
