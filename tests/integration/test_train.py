"""Training end to end: real ingest and train services, real Keras on a small synthetic set."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import uuid
from pathlib import Path

import msgpack
import nats
import nats.errors
import pytest

from digits import events, jobs, subjects
from digits.download_data import synthetic
from tests.integration.test_ingest import create_dataset, finished_job
from tests.integration.test_jobs import job_store
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def digits_folder(tmp_path):
    """The offline synthetic 10-class 28x28 set (100 images a class)."""
    synthetic.generate(tmp_path / "synthetic", classes=10, per_class=100, size=28, seed=1)
    return tmp_path / "synthetic" / "train"


DATASET_FORM = {
    "method": "folder",
    "folder_pct_val": 25,
    "resize_width": 28,
    "resize_height": 28,
    "resize_channels": 1,
}


async def create_model(nats_url: str, name: str, dataset_id: str, form: dict) -> str:
    """Publish model.create with plain msgpack; the command id."""
    nc = await nats.connect(nats_url)
    try:
        command_id = uuid.uuid4().hex
        payload = {
            "type": "model.create",
            "event_id": command_id,
            "name": name,
            "dataset_id": dataset_id,
            "form": form,
        }
        await nc.jetstream().publish(
            subjects.CMD_MODEL_CREATE,
            msgpack.packb(payload),
            headers={"Nats-Msg-Id": f"create:{command_id}"},
        )
        return command_id
    finally:
        await nc.close()


async def dataset_job_id(nc, name: str) -> str:
    """The id of the dataset job called ``name``, once it exists."""
    store = await job_store(nc)

    async def found() -> str | None:
        return next((j.id for j in await store.list() if j.name == name), None)

    return await wait_for(found, timeout=30)


async def job_events(nc, job_id: str) -> list[events.Event]:
    """Every stored event of a job, in order."""
    sub = await nc.jetstream().subscribe(subjects.evt_job_all(job_id), ordered_consumer=True)
    found = []
    try:
        while True:
            found.append(events.decode((await sub.next_msg(timeout=1)).data))
    except nats.errors.TimeoutError:
        return found
    finally:
        await sub.unsubscribe()


LENET = {
    "standard_networks": "lenet",
    "train_epochs": 4,
    "batch_size": 32,
    "solver_type": "ADAM",
    "learning_rate": 0.002,
    "lr_policy": "fixed",
    "use_mean": "image",
    "random_seed": 7,
    "snapshot_interval": 2,
}


def check_saved_model(folder: Path, epoch: float) -> None:
    """The stored SavedModel loads without Keras and predicts as the epoch's .keras snapshot."""
    import keras
    import numpy as np
    import tensorflow as tf

    info = json.loads((folder / "info.json").read_text())
    assert info["saved_model"] == {
        "path": "saved_model/",
        "files": len([p for p in (folder / "saved_model").rglob("*") if p.is_file()]),
        "endpoint": "serve",
        "input_shape": [28, 28, 1],
        "epoch": epoch,
    }
    assert (folder / "saved_model" / "saved_model.pb").is_file()
    x = np.random.default_rng(0).normal(size=(5, 28, 28, 1)).astype(np.float32)
    want = keras.models.load_model(folder / "snapshots" / f"epoch-{epoch:g}.keras", compile=False)(
        x
    )
    loaded = tf.saved_model.load(str(folder / "saved_model"))  # held: its variables live on it
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(np.asarray(served), np.asarray(want), rtol=1e-4, atol=1e-5)
    layer = keras.layers.TFSMLayer(str(folder / "saved_model"), call_endpoint="serve")
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(want), rtol=1e-4, atol=1e-5)


async def test_lenet_learns_the_synthetic_set_and_reports_in_order(
    nats_server, nc, stack, digits_folder, tmp_path
):
    ingest, _ = await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service"), asyncio.to_thread(stack, "train_service")
    )
    await create_dataset(
        nats_server.url, "synthetic", {**DATASET_FORM, "folder_train": str(digits_folder)}
    )
    dataset_id = await dataset_job_id(nc, "synthetic")
    # Created while the dataset is still being written: it waits, then trains. The ingest
    # service is paused meanwhile, so the dataset cannot finish before the model is created.
    store = await job_store(nc)
    ingest.proc.send_signal(signal.SIGSTOP)
    try:
        assert (await store.get(dataset_id)).status not in jobs.TERMINAL
        await create_model(nats_server.url, "lenet", dataset_id, LENET)

        async def waiting() -> bool:
            found = [j for j in await store.list() if j.name == "lenet"]
            return bool(found) and found[0].status == jobs.WAITING

        await wait_for(waiting, timeout=60, interval=0.1)
    finally:
        ingest.proc.send_signal(signal.SIGCONT)
    model = await finished_job(nc, "lenet", timeout=300)
    assert model.status == jobs.DONE, model.error
    statuses = [h.status for h in model.history]
    assert statuses[:2] == ["I", "W"] and statuses[-2:] == ["R", "D"]
    found = await job_events(nc, model.id)
    train = [e for e in found if isinstance(e, events.TrainProgress) and e.phase == "train"]
    val = [e for e in found if isinstance(e, events.TrainProgress) and e.phase == "val"]
    assert len(train) >= 4 * 4, "several progress events per epoch"
    epochs = [e.epoch for e in train]
    assert epochs == sorted(epochs) and epochs[-1] == 4
    for e in train:
        assert 0 < e.metrics["loss"] < 10 and math.isfinite(e.metrics["loss"])
        assert 0 <= e.metrics["accuracy"] <= 1
        assert e.learning_rate == pytest.approx(0.002) and e.images_per_s > 0
    assert [e.epoch for e in val] == [1, 2, 3, 4]
    assert val[-1].metrics["val_accuracy"] >= 0.95
    snapshots = [e.epoch for e in found if isinstance(e, events.SnapshotSaved)]
    assert snapshots == [2, 4]
    hardware = [e for e in found if isinstance(e, events.HardwareUsage)]
    assert hardware, "hardware use every DIGITS_HARDWARE_S (1 s here) while training"
    assert all(e.memory_bytes > 100 << 20 and e.cpu_pct >= 0 for e in hardware)
    ready = [e for e in found if isinstance(e, events.ModelReady)]
    assert len(ready) == 1 and ready[0].snapshots == [2, 4]
    assert ready[0].metrics["val_accuracy"] >= 0.95
    await asyncio.to_thread(check_saved_model, tmp_path / "store" / "models" / model.id, 4.0)

    # "Previous network": fine-tuning starts from the trained weights, not from scratch.
    previous = {**LENET, "method": "previous", "previous_networks": model.id, "train_epochs": 1}
    await create_model(nats_server.url, "fine-tuned", dataset_id, previous)
    tuned = await finished_job(nc, "fine-tuned", timeout=120)
    assert tuned.status == jobs.DONE, tuned.error
    first = next(e for e in await job_events(nc, tuned.id) if isinstance(e, events.TrainProgress))
    assert first.epoch <= 0.25 and first.metrics["accuracy"] >= 0.9

    # A custom network as Keras model JSON.
    import keras

    custom = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    ).to_json()
    form = {**LENET, "method": "custom", "custom_network": custom, "train_epochs": 2}
    await create_model(nats_server.url, "custom", dataset_id, form)
    done = await finished_job(nc, "custom", timeout=120)
    assert done.status == jobs.DONE, done.error
    assert done.extra["final_metrics"]["val_accuracy"] >= 0.8
    lambda_json = custom.replace('"Flatten"', '"Lambda"')
    form = {**LENET, "method": "custom", "custom_network": lambda_json, "train_epochs": 1}
    await create_model(nats_server.url, "unsafe", dataset_id, form)
    unsafe = await finished_job(nc, "unsafe", timeout=120)
    assert unsafe.status == jobs.ERROR and "Lambda" in unsafe.error


async def test_half_epoch_snapshots_abort_and_resume_after_sigkill(
    nats_server, nc, stack, digits_folder
):
    ingest = await asyncio.to_thread(stack, "ingest_service")
    await create_dataset(
        nats_server.url, "synthetic", {**DATASET_FORM, "folder_train": str(digits_folder)}
    )
    dataset = await finished_job(nc, "synthetic")
    assert dataset.status == jobs.DONE, dataset.error
    assert ingest.healthy()
    trainer = await asyncio.to_thread(stack, "train_service")
    # 1. Snapshot interval 0.5 over 2 epochs gives 4 snapshots.
    form = {**LENET, "train_epochs": 2, "snapshot_interval": 0.5, "batch_size": 16}
    await create_model(nats_server.url, "halves", dataset.id, form)
    halves = await finished_job(nc, "halves", timeout=300)
    assert halves.status == jobs.DONE, halves.error
    assert halves.extra["snapshots"] == [0.5, 1, 1.5, 2]
    store = await job_store(nc)

    # 2. SIGKILL mid-training: redelivered, resumed from the last epoch, same epoch count.
    form = {**LENET, "train_epochs": 6, "snapshot_interval": 1, "batch_size": 8}
    await create_model(nats_server.url, "killed", dataset.id, form)

    async def snapshot_of(name: str, at_least: int) -> jobs.Job | None:
        for job in await store.list():
            if job.name == name and len(job.extra.get("snapshots", [])) >= at_least:
                return job
        return None

    await wait_for(lambda: snapshot_of("killed", 2), timeout=300, interval=0.2)
    trainer.proc.kill()
    await asyncio.to_thread(trainer.proc.wait, 10)
    await asyncio.to_thread(stack, "train_service")
    killed = await finished_job(nc, "killed", timeout=400)
    assert killed.status == jobs.DONE, killed.error
    assert killed.extra["snapshots"] == [1, 2, 3, 4, 5, 6]
    progress = [e for e in await job_events(nc, killed.id) if isinstance(e, events.TrainProgress)]
    seq = [e.epoch for e in progress if e.phase == "train"]
    assert max(seq) == 6
    after_two = seq[seq.index(next(x for x in seq if x >= 2)) :]
    assert min(after_two) >= 1.25, f"restarted from scratch, not from a checkpoint: {seq}"

    # 3. Abort mid-training: Aborted, with the snapshots so far.
    form = {**LENET, "train_epochs": 30, "snapshot_interval": 1, "batch_size": 8}
    await create_model(nats_server.url, "aborted", dataset.id, form)
    job = await wait_for(lambda: snapshot_of("aborted", 1), timeout=300, interval=0.2)
    await nc.jetstream().publish(
        subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": job.id})
    )
    aborted = await finished_job(nc, "aborted", timeout=60)
    assert aborted.status == jobs.ABORTED
    await asyncio.sleep(3)  # the worker stops at the next batch; nothing is added after
    final = await store.get(job.id)
    assert 1 <= len(final.extra["snapshots"]) < 30
    ready = [e for e in await job_events(nc, job.id) if isinstance(e, events.ModelReady)]
    assert not ready


async def test_a_model_on_a_failed_dataset_fails(nats_server, nc, stack, tmp_path):
    await asyncio.gather(
        asyncio.to_thread(stack, "ingest_service"), asyncio.to_thread(stack, "train_service")
    )
    await create_dataset(nats_server.url, "broken", {**DATASET_FORM, "folder_train": "/etc"})
    dataset_id = await dataset_job_id(nc, "broken")
    await create_model(nats_server.url, "orphan", dataset_id, LENET)
    model = await finished_job(nc, "orphan", timeout=60)
    assert model.status == jobs.ERROR
    assert "broken" in model.error and "Error" in model.error


async def test_a_learning_rate_and_batch_size_sweep_makes_one_job_each(
    nats_server, nc, stack, tmp_path
):
    await asyncio.to_thread(stack, "train_service")
    store = await job_store(nc)
    dataset = await store.create(jobs.Job(id=jobs.new_job_id(), type="dataset", name="pending"))
    form = {**LENET, "learning_rate": "0.01, 0.001", "batch_size": "16,32"}
    await create_model(nats_server.url, "sweep", dataset.id, form)

    async def four() -> list[jobs.Job] | None:
        found = [j for j in await store.list() if j.name.startswith("sweep")]
        return found if len(found) == 4 and all(j.status == "W" for j in found) else None

    models = await wait_for(four, timeout=30)
    assert sorted(j.name for j in models) == [
        "sweep (lr=0.001, bs=16)",
        "sweep (lr=0.001, bs=32)",
        "sweep (lr=0.01, bs=16)",
        "sweep (lr=0.01, bs=32)",
    ]
    assert {(j.form["learning_rate"], j.form["batch_size"]) for j in models} == {
        (0.01, 16),
        (0.01, 32),
        (0.001, 16),
        (0.001, 32),
    }


async def test_inference_over_nats_while_another_model_trains(
    nats_server, nc, stack, digits_folder
):
    for module in ("ingest_service", "train_service", "view_service"):
        await asyncio.to_thread(stack, module)
    await create_dataset(
        nats_server.url, "synthetic", {**DATASET_FORM, "folder_train": str(digits_folder)}
    )
    dataset_id = await dataset_job_id(nc, "synthetic")
    await create_model(nats_server.url, "lenet", dataset_id, LENET)
    model = await finished_job(nc, "lenet", timeout=300)
    assert model.status == jobs.DONE, model.error
    # A long training job runs meanwhile.
    await create_model(nats_server.url, "busy", dataset_id, {**LENET, "train_epochs": 50})
    store = await job_store(nc)

    async def busy_running() -> bool:
        return any(j.name == "busy" and j.status == "R" for j in await store.list())

    await wait_for(busy_running, timeout=120)
    test_folder = digits_folder.parent / "test"
    labels = sorted(p.name for p in test_folder.iterdir())
    plain = await nats.connect(nats_server.url)  # a client that knows only msgpack
    try:
        right = total = 0
        for label in labels:
            for image in sorted((test_folder / label).iterdir())[:5]:
                request = {"job_id": model.id, "image": image.read_bytes(), "top_k": 3}
                reply = msgpack.unpackb(
                    (
                        await plain.request(
                            "digits.v1.rpc.infer.classify", msgpack.packb(request), timeout=30
                        )
                    ).data
                )
                assert reply["ok"], reply
                assert len(reply["predictions"]) == 3
                right += reply["predictions"][0]["label"] == label
                total += 1
        assert right / total >= 0.95, f"{right}/{total} right"
        many = {"job_id": model.id, "folder": str(test_folder), "max_results": 5}
        reply = msgpack.unpackb(
            (await plain.request("digits.v1.rpc.infer.many", msgpack.packb(many), timeout=120)).data
        )
        assert reply["ok"] and reply["count"] == 200 and reply["skipped"] == 0
        assert reply["top1_accuracy"] >= 0.95 and len(reply["results"]) == 5
        assert len(reply["confusion_matrix"]) == 10
    finally:
        await plain.close()
    busy = await dataset_job_id(nc, "busy")
    assert (await store.get(busy)).status == "R", "it trained all along"
    await nc.jetstream().publish(
        subjects.CMD_JOB_ABORT, msgpack.packb({"type": "job.abort", "job_id": busy})
    )
