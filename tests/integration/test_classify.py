"""Inference end to end: a LeNet trained here, job records in a real KV bucket, a file store."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import msgspec
import numpy as np
import pytest
from PIL import Image

from digits import jobs, subjects
from digits.dataset import Manifest, ShardInfo, ShardWriter, StageInfo, mean_npy_bytes, shard_key
from digits.download_data.synthetic import make_images
from digits.jobs import Job
from digits.store import FileStore
from tests.integration.test_jobs import job_store
from view_service import classify
from view_service.classify import ClassifyMany, ClassifyOne, TopN
from view_service.models import Batcher, Deps, InferenceError, LoadedModel, ModelCache

LABELS = ["ant", "bee", "cat", "dog"]
DS, MODEL = "20260101-000000-da7a", "20260101-000001-m0de"
PER_CLASS = 500  # 2,000 images to classify
MEMORY_CEILING = 64 << 20
SCALE = 1.0 / 255.0


@dataclass
class World:
    """What the module builds once: the store, the trained snapshots, the image folder."""

    root: Path
    store: Path
    images: Path
    files: list[Path]  # in folder-walk order
    truth: list[int]
    one_by_one: np.ndarray | None = None  # probabilities, image by image, in files order


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_dataset(root: Path, rng: np.random.Generator) -> None:
    stages, mean = {}, None
    for stage, per in (("train_db", 120), ("val_db", 25)):
        labels = rng.permutation(np.repeat(np.arange(4), per))
        images = make_images(labels, 4, 28, 1, rng)
        with ShardWriter(root / shard_key(stage, 0)) as writer:
            for image, label in zip(images, labels, strict=True):
                writer.put(image, int(label))
        stages[stage] = StageInfo([ShardInfo(shard_key(stage, 0), len(labels))], len(labels))
        if mean is None:
            mean = images.astype(np.float64).mean(axis=0)[:, :, None]
    (root / "mean.npy").write_bytes(mean_npy_bytes(mean))
    manifest = Manifest(job_id=DS, labels=LABELS, feature_shape=[28, 28, 1], stages=stages)
    manifest.mean = {"npy": "mean.npy"}
    (root / "manifest.json").write_bytes(manifest.to_json())


def _train(store: Path) -> None:
    """LeNet, one snapshot per epoch, as train_service stores them."""
    import keras

    from digits import dataset
    from train_service import networks
    from train_service.data import ShardedDataset

    ds = dataset.open(str(store / "datasets" / DS))
    keras.utils.set_random_seed(1)
    model = networks.lenet((28, 28, 1), 4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss=loss)
    folder = store / "models" / MODEL
    (folder / "snapshots").mkdir(parents=True)
    with ShardedDataset(ds, "train_db", 32, mean="image", scale=SCALE, seed=1) as train:
        for epoch in (1, 2):
            model.fit(train, initial_epoch=epoch - 1, epochs=epoch, shuffle=False, verbose=0)
            model.save(folder / "snapshots" / f"epoch-{epoch}.keras")
    info = {"job_id": MODEL, "dataset_id": DS, "labels": LABELS, "mean": "image"}
    info |= {"scale": SCALE, "crop_size": None, "snapshots": [1.0, 2.0], "epochs": 2}
    info |= {"input_shape": [28, 28, 1], "network": "lenet", "metrics": {}}
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "labels.txt").write_text("\n".join(LABELS))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A 4-class shapes dataset, LeNet trained on it for 2 epochs, 2,000 held-out PNG files."""
    root = tmp_path_factory.mktemp("classify")
    rng = np.random.default_rng(3)
    _write_dataset(root / "store" / "datasets" / DS, rng)
    _train(root / "store")
    truth = np.repeat(np.arange(4), PER_CLASS)
    files = []
    for i, (image, label) in enumerate(zip(make_images(truth, 4, 28, 1, rng), truth, strict=True)):
        path = root / "images" / LABELS[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(image))
        files.append(path)
    return World(root, root / "store", root / "images", files, [int(t) for t in truth])


@pytest.fixture
async def deps(nc, world: World, tmp_path: Path) -> Deps:
    """The dataset and model job records in KV, and the handlers' dependencies."""
    store = await job_store(nc)
    form = {"resize_height": 28, "resize_width": 28, "resize_channels": 1, "resize_mode": "squash"}
    await store.create(Job(id=DS, type="dataset", name="shapes", form=form, status=jobs.DONE))
    extra = {"snapshots": [1.0, 2.0]}
    model = Job(id=MODEL, type="model", name="lenet", depends_on=[DS], extra=extra)
    await store.create(msgspec.structs.replace(model, form={"use_mean": "image"}))
    files = FileStore(world.store)
    cache = ModelCache(files, store, tmp_path / "cache")
    return Deps(cache, Batcher(max_batch=16, max_delay=0.01), files, [str(world.images)], tmp_path)


async def _one_by_one(deps: Deps, world: World) -> np.ndarray:
    """Every image's probabilities, one preprocess and one predict call each (computed once)."""
    if world.one_by_one is None:
        model = await deps.cache.get(MODEL)
        rows = [model.predict(model.preprocess(f.read_bytes())[None])[0] for f in world.files]
        world.one_by_one = np.stack(rows)
    return world.one_by_one


def _lines(url: str) -> list[dict]:
    text = Path(unquote(urlparse(url).path)).read_text()
    return [json.loads(line) for line in text.splitlines()]


async def test_classify_one_names_the_class_in_top_k_order(deps, world):
    for i in (0, 1, 600, 1100, 1999):
        req = ClassifyOne(job_id=MODEL, image=world.files[i].read_bytes(), top_k=3)
        reply = await classify.classify_one(deps, req)
        assert reply.ok and reply.job_id == MODEL and reply.epoch == 2.0
        assert reply.predictions[0].label == LABELS[world.truth[i]]
        confidences = [p.confidence for p in reply.predictions]
        assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True)
        assert reply.predictions[0].index == LABELS.index(reply.predictions[0].label)
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(reply))
    assert set(wire) == {"ok", "job_id", "epoch", "predictions", "ref", "version"}
    assert wire["ref"] is None and wire["version"] is None  # asked by job id, not by a ref
    assert set(wire["predictions"][0]) == {"label", "index", "confidence"}


async def test_epoch_minus_one_follows_the_latest_snapshot(deps, world, nc):
    image = world.files[5].read_bytes()
    latest = await classify.classify_one(deps, ClassifyOne(job_id=MODEL, image=image, top_k=4))
    first = await classify.classify_one(deps, ClassifyOne(job_id=MODEL, epoch=1, image=image))
    second = await classify.classify_one(deps, ClassifyOne(job_id=MODEL, epoch=2, image=image))
    assert (latest.epoch, first.epoch) == (2.0, 1.0) and latest.predictions == second.predictions
    assert [p.confidence for p in first.predictions] != [p.confidence for p in latest.predictions]
    # A snapshot recorded while training goes on is picked up by the next request.
    snapshots = world.store / "models" / MODEL / "snapshots"
    shutil.copy(snapshots / "epoch-1.keras", snapshots / "epoch-2.5.keras")
    store = await job_store(nc)
    await store.update(
        MODEL, lambda j: msgspec.structs.replace(j, extra={"snapshots": [1.0, 2.0, 2.5]})
    )
    try:
        newest = await classify.classify_one(deps, ClassifyOne(job_id=MODEL, image=image))
        assert newest.epoch == 2.5 and newest.predictions[0] == first.predictions[0]
    finally:
        (snapshots / "epoch-2.5.keras").unlink()


async def test_bad_requests_get_errors_that_name_the_problem(deps, world, nc):
    image = world.files[0].read_bytes()

    async def error(**kw) -> str:
        with pytest.raises(InferenceError) as err:
            await classify.classify_one(
                deps, ClassifyOne(**{"job_id": MODEL, "image": image, **kw})
            )
        return str(err.value)

    assert await error(job_id="20260101-000000-0000") == "no job with id '20260101-000000-0000'"
    assert await error(job_id=DS) == f"job {DS} is a dataset, not a model"
    assert await error(epoch=7) == f"model {MODEL} has no snapshot at epoch 7; snapshots: 1, 2"
    assert "is not an image" in await error(image=b"GIF? no, just text")
    assert "exceeds 8388608 bytes" in await error(image=b"\x89PNG" + bytes(8 << 20))
    store = await job_store(nc)
    await store.create(Job(id="20260101-000002-aaaa", type="model", name="new", depends_on=[DS]))
    assert await error(job_id="20260101-000002-aaaa") == (
        "model 20260101-000002-aaaa has no snapshot yet"
    )
    with pytest.raises(msgspec.ValidationError, match="top_k"):
        msgspec.msgpack.decode(
            msgspec.msgpack.encode({"job_id": MODEL, "top_k": 0}), type=ClassifyOne
        )
    with pytest.raises(InferenceError, match="exactly one image source"):
        await classify.classify_many(deps, ClassifyMany(job_id=MODEL))
    with pytest.raises(InferenceError, match="outside the data roots"):
        await classify.classify_many(deps, ClassifyMany(job_id=MODEL, folder=str(world.store)))


async def test_classify_many_over_a_folder_matches_one_by_one_in_bounded_memory(deps, world):
    expected = await _one_by_one(deps, world)
    req = ClassifyMany(job_id=MODEL, folder=str(world.images), request_id="folder-run")
    reply = await classify.classify_many(deps, req)
    lean = msgspec.structs.replace(req, max_results=0, request_id="lean-run")
    tracemalloc.start()
    try:
        lean_reply = await classify.classify_many(deps, lean)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Holding the 2,000 inputs alone would take 6 MiB (28x28 float32); one batch takes 200 KiB.
    print(f"classify many: 2000 images, tracemalloc peak {peak / 2**20:.2f} MiB")
    assert peak < min(MEMORY_CEILING, 3 << 20), f"peak {peak / 2**20:.1f} MiB"
    assert lean_reply.results == [] and lean_reply.count == 2000
    assert _lines(lean_reply.results_url) == _lines(reply.results_url)
    assert reply.count == 2000 and reply.skipped == 0 and len(reply.results) == 1000
    assert reply.results_url.endswith(f"models/{MODEL}/inference/folder-run.jsonl")
    lines = _lines(reply.results_url)
    assert [line["path"] for line in lines] == [str(f) for f in world.files]
    predicted = [line["predictions"][0]["index"] for line in lines]
    assert predicted == list(np.argmax(expected, axis=1))
    top = np.array([line["predictions"][0]["confidence"] for line in lines])
    np.testing.assert_allclose(top, expected.max(axis=1), atol=1e-5)
    assert [r.label for r in reply.results] == [LABELS[t] for t in world.truth[:1000]]
    confusion = np.zeros((4, 4), int)
    np.add.at(confusion, (world.truth, predicted), 1)
    assert reply.confusion_matrix == confusion.tolist() and reply.labels == LABELS
    assert reply.labelled == 2000 and reply.top5_accuracy == 1.0
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(reply))
    assert wire["ok"] is True and wire["results"][0] == {
        "index": 0,
        "path": str(world.files[0]),
        "label": "ant",
        "predictions": wire["results"][0]["predictions"],
    }
    assert (
        reply.top1_accuracy == pytest.approx(np.trace(confusion) / 2000)
        and reply.top1_accuracy > 0.9
    )
    recall = {LABELS[i]: confusion[i, i] / confusion[i].sum() for i in range(4)}
    assert reply.per_class_accuracy == pytest.approx(recall)


async def test_classify_many_over_an_image_list_skips_bad_lines(deps, world, tmp_path):
    expected = await _one_by_one(deps, world)
    outside = tmp_path / "outside.png"
    outside.write_bytes(world.files[0].read_bytes())
    lines = [
        f"{f.relative_to(world.images)} {t}" for f, t in zip(world.files, world.truth, strict=True)
    ]
    lines[10] = f"{world.files[10].relative_to(world.images)} {LABELS[world.truth[10]]}"
    bad = [f"{outside} 1", "ant/missing.png 0", f"{world.files[3]} 9", "# a comment", ""]
    text = "\n".join(lines[:1000] + bad + lines[1000:])
    req = ClassifyMany(job_id=MODEL, image_list=text, image_folder=str(world.images), batch_size=50)
    reply = await classify.classify_many(deps, msgspec.structs.replace(req, max_results=5, top_k=2))
    assert (reply.count, reply.skipped, len(reply.results)) == (2000, 3, 5)
    assert "outside the data roots" in reply.skip_reasons[0]
    assert "No such file" in reply.skip_reasons[1] and "label 9" in reply.skip_reasons[2]
    good = [line for line in _lines(reply.results_url) if "error" not in line]
    assert [g["predictions"][0]["index"] for g in good] == list(np.argmax(expected, axis=1))
    assert len(good[0]["predictions"]) == 2 and good[10]["label"] == LABELS[world.truth[10]]
    assert reply.labelled == 2000


async def test_classify_many_images_in_the_request(deps, world):
    images = [f.read_bytes() for f in world.files[:3]] + [b"junk"]
    reply = await classify.classify_many(deps, ClassifyMany(job_id=MODEL, images=images))
    assert (reply.count, reply.skipped) == (3, 1) and reply.skip_reasons[0].startswith("image 3:")
    assert reply.labelled == 0 and reply.top1_accuracy is None and reply.confusion_matrix is None
    assert [r.index for r in reply.results] == [0, 1, 2] and reply.results[0].path is None


async def test_classify_many_over_the_models_val_db(deps, world):
    from digits import dataset
    from train_service.data import ShardedDataset

    req = ClassifyMany(job_id=MODEL, dataset_stage="val_db", batch_size=32)
    reply = await classify.classify_many(deps, req)
    assert reply.count == 100 and reply.labelled == 100 and reply.top1_accuracy > 0.9
    ds = dataset.open(str(world.store / "datasets" / DS))
    val = ShardedDataset(
        ds, "val_db", 100, shuffle=False, mean="image", scale=SCALE, training=False
    )
    with val:
        x, y = val[0]
    model = await deps.cache.get(MODEL)
    expected = model.predict(x)
    assert [r.label for r in reply.results] == [LABELS[i] for i in y]
    got = np.array([r.predictions[0].confidence for r in reply.results])
    np.testing.assert_allclose(got, expected.max(axis=1), atol=1e-5)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"job_id": MODEL, "dataset_stage": "train"}, ClassifyMany)


async def test_top_n_finds_each_class_most_confident_images(deps, world):
    expected = await _one_by_one(deps, world)
    reply = await classify.top_n(deps, TopN(job_id=MODEL, folder=str(world.images), n=4))
    assert reply.count == 2000 and reply.n == 4 and list(reply.top) == LABELS
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(reply))
    assert set(wire["top"]["ant"][0]) == {"index", "path", "confidence"}
    for j, label in enumerate(LABELS):
        top = reply.top[label]
        assert [t.confidence for t in top] == sorted((t.confidence for t in top), reverse=True)
        best = np.sort(expected[:, j])[::-1][:4]
        np.testing.assert_allclose([t.confidence for t in top], best, atol=1e-5)
        assert all(Path(t.path).parent.name == label for t in top)


async def test_concurrent_single_requests_are_batched_and_agree(deps, world):
    images = [world.files[i].read_bytes() for i in range(0, 2000, 50)]  # 40 images
    model: LoadedModel = await deps.cache.get(MODEL)
    alone = []
    for image in images:
        alone.append(await classify.classify_one(deps, ClassifyOne(job_id=MODEL, image=image)))
    calls, deps.batcher = model.calls, Batcher(max_batch=16, max_delay=0.05)
    together = await asyncio.gather(
        *(classify.classify_one(deps, ClassifyOne(job_id=MODEL, image=i)) for i in images)
    )
    assert model.calls - calls <= 6, "40 concurrent requests should run in a few batches"
    assert all(size <= 16 for size in deps.batcher.batches)
    for a, b in zip(alone, together, strict=True):
        assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
        np.testing.assert_allclose(
            [p.confidence for p in a.predictions], [p.confidence for p in b.predictions], atol=1e-5
        )


async def test_a_flood_beyond_capacity_gets_quick_busy_replies_and_the_service_lives(
    deps, world, nc, stack
):
    # One view process that runs 64 single-image requests at once and lets 8 more wait.
    view = await asyncio.to_thread(
        stack,
        "view_service",
        DIGITS_STORE_URL=world.store.as_uri(),
        DIGITS_VIEW_PROCS="1",
        DIGITS_VIEW_QUEUE="8",
    )
    image = world.files[1100].read_bytes()
    payload = msgspec.msgpack.encode({"job_id": MODEL, "image": image, "top_k": 2})
    replies: list[dict] = []  # in the order they came

    async def ask() -> None:
        msg = await nc.request(subjects.RPC_INFER_CLASSIFY, payload, timeout=60)
        replies.append(msgspec.msgpack.decode(msg.data))

    await asyncio.gather(*(ask() for _ in range(400)))  # the model is not even loaded yet
    assert len(replies) == 400, "every request gets a reply"
    busy = [r for r in replies if not r["ok"]]
    ok = [r for r in replies if r["ok"]]
    assert len(ok) >= 64 + 8 and len(busy) >= 1, (len(ok), len(busy))
    for r in busy:
        assert r["busy"] is True and r["error"].startswith("busy: ")
        assert "(DIGITS_VIEW_QUEUE=8)" in r["error"], r["error"]
    # Refused at once: every busy reply came before the first answer (which waits for the load).
    assert all(not r["ok"] for r in replies[: len(busy)])
    assert {r["predictions"][0]["label"] for r in ok} == {LABELS[world.truth[1100]]}
    assert view.proc.poll() is None and view.healthy()
    msg = await nc.request(subjects.RPC_INFER_CLASSIFY, payload, timeout=30)
    after = msgspec.msgpack.decode(msg.data)
    assert after["ok"] and after["predictions"][0]["label"] == LABELS[world.truth[1100]]
    status, body = view.get("/metrics")
    assert status == 200 and b'outcome="busy"' in body
